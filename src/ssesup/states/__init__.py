"""The stream state machine: every rule that decides a state change lives in this package.

Rules of this package (after h11's ``_state.py``):

* It is pure. It never touches a socket, a timer, a logger or a clock. It is told what happened
  (a :class:`Trigger`) and answers with the new state, or raises :class:`IllegalTransition`.
* Nothing outside it decides a state change. The actor (``SupervisedStream``) feeds it triggers and
  acts on the answer; the supervisor observes the answers.
* Every stream ends in ``CLOSED`` with exactly one :class:`CloseReason` and one :class:`Ending`, set
  by the row of the table that closed it: what an ending does to the response is decided here too.
"""

from ssesup.states.machine import (
    TRANSITIONS,
    CloseReason,
    Ending,
    IllegalTransition,
    Row,
    State,
    StreamMachine,
    Transition,
    Trigger,
)

__all__ = [
    "TRANSITIONS",
    "CloseReason",
    "Ending",
    "IllegalTransition",
    "Row",
    "State",
    "StreamMachine",
    "Transition",
    "Trigger",
]
