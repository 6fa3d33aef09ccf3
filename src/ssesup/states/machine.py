"""States, triggers, close reasons and the one table of legal transitions.

Theory of operation
-------------------
A stream is OPEN from the moment its actor registers with the supervisor until the response start
(status and headers) has been sent: ``first_send`` makes it STREAMING. While STREAMING the actor pulls
events from the generator and sends them. A drain request moves a STREAMING (or still OPEN) stream to
DRAINING: the generator can see it and say goodbye. Every ending is a trigger that leads to CLOSED, and
the row of the table that leads there names the close reason. CLOSED is terminal: no trigger leaves it.

The table below is the whole machine. Read it top to bottom like a diagram.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    OPEN = "open"
    STREAMING = "streaming"
    DRAINING = "draining"
    CLOSED = "closed"


class Trigger(enum.Enum):
    FIRST_SEND = "first_send"
    """The response start (status and headers) was sent."""
    EXHAUSTED = "exhausted"
    """The generator finished."""
    CLIENT_DISCONNECT = "client_disconnect"
    """The client went away."""
    SEND_TIMEOUT = "send_timeout"
    """A send did not complete within the send deadline."""
    DEAD_PEER = "dead_peer"
    """What was sent stayed unacknowledged by the peer past the dead-peer timeout (it vanished)."""
    ERROR = "error"
    """The generator raised, or yielded something that cannot be sent."""
    SLOW_CONSUMER = "slow_consumer"
    """The stream's source gave up on a client too slow for it (a hub subscriber's mailbox overflowed)."""
    SEND_FAILED = "send_failed"
    """The server refused a send for a reason of its own (not a disconnect): nothing more is written."""
    DRAIN = "drain"
    """The supervisor started a drain."""
    DRAIN_CLOSE = "drain_close"
    """The stream's turn in the drain came: farewell sent, the stream ends in order."""
    GRACE_EXPIRED = "grace_expired"
    """The drain grace ran out before the stream ended."""
    FORCE_CLOSE = "force_close"
    """The supervisor closes the stream now (its event loop is shutting down)."""


class CloseReason(enum.Enum):
    COMPLETED = "completed"
    CLIENT_DISCONNECT = "client_disconnect"
    SEND_TIMEOUT = "send_timeout"
    DEAD_PEER = "dead_peer"
    SLOW_CONSUMER = "slow_consumer"
    ERROR = "error"
    DRAINED = "drained"
    SHUTDOWN = "shutdown"


OPEN, STREAMING, DRAINING, CLOSED = State.OPEN, State.STREAMING, State.DRAINING, State.CLOSED
T = Trigger
R = CloseReason

# (state, trigger) -> (next state, close reason when the next state is CLOSED)
TRANSITIONS: dict[tuple[State, Trigger], tuple[State, CloseReason | None]] = {
    (OPEN, T.FIRST_SEND): (STREAMING, None),
    (OPEN, T.CLIENT_DISCONNECT): (CLOSED, R.CLIENT_DISCONNECT),
    (OPEN, T.SEND_TIMEOUT): (CLOSED, R.SEND_TIMEOUT),
    (OPEN, T.DEAD_PEER): (CLOSED, R.DEAD_PEER),
    (OPEN, T.SLOW_CONSUMER): (CLOSED, R.SLOW_CONSUMER),
    (OPEN, T.ERROR): (CLOSED, R.ERROR),
    (OPEN, T.SEND_FAILED): (CLOSED, R.ERROR),
    (OPEN, T.DRAIN): (DRAINING, None),
    (OPEN, T.FORCE_CLOSE): (CLOSED, R.SHUTDOWN),
    #
    (STREAMING, T.EXHAUSTED): (CLOSED, R.COMPLETED),
    (STREAMING, T.CLIENT_DISCONNECT): (CLOSED, R.CLIENT_DISCONNECT),
    (STREAMING, T.SEND_TIMEOUT): (CLOSED, R.SEND_TIMEOUT),
    (STREAMING, T.DEAD_PEER): (CLOSED, R.DEAD_PEER),
    (STREAMING, T.SLOW_CONSUMER): (CLOSED, R.SLOW_CONSUMER),
    (STREAMING, T.ERROR): (CLOSED, R.ERROR),
    (STREAMING, T.SEND_FAILED): (CLOSED, R.ERROR),
    (STREAMING, T.DRAIN): (DRAINING, None),
    (STREAMING, T.FORCE_CLOSE): (CLOSED, R.SHUTDOWN),
    #
    # A draining stream whose generator finishes by itself, or whose turn in the drain comes,
    # has been drained in order; one still open when the grace runs out is cut by the shutdown.
    (DRAINING, T.FIRST_SEND): (DRAINING, None),
    (DRAINING, T.EXHAUSTED): (CLOSED, R.DRAINED),
    (DRAINING, T.DRAIN_CLOSE): (CLOSED, R.DRAINED),
    (DRAINING, T.GRACE_EXPIRED): (CLOSED, R.SHUTDOWN),
    (DRAINING, T.CLIENT_DISCONNECT): (CLOSED, R.CLIENT_DISCONNECT),
    (DRAINING, T.SEND_TIMEOUT): (CLOSED, R.SEND_TIMEOUT),
    (DRAINING, T.DEAD_PEER): (CLOSED, R.DEAD_PEER),
    (DRAINING, T.SLOW_CONSUMER): (CLOSED, R.SLOW_CONSUMER),
    (DRAINING, T.ERROR): (CLOSED, R.ERROR),
    (DRAINING, T.SEND_FAILED): (CLOSED, R.ERROR),
    (DRAINING, T.FORCE_CLOSE): (CLOSED, R.SHUTDOWN),
}


class IllegalTransition(RuntimeError):
    """A trigger arrived that the table does not allow in the current state."""

    def __init__(self, state: State, trigger: Trigger) -> None:
        super().__init__(f"trigger {trigger.value!r} is not legal in state {state.value!r}")
        self.state = state
        self.trigger = trigger


@dataclass(frozen=True, slots=True)
class Transition:
    """One answer of the machine: what happened and where it led."""

    from_state: State
    to_state: State
    trigger: Trigger
    close_reason: CloseReason | None


class StreamMachine:
    """The state of one stream. Pure: feed it triggers, read its answers."""

    __slots__ = ("close_reason", "state")

    def __init__(self) -> None:
        self.state: State = OPEN
        self.close_reason: CloseReason | None = None

    def fire(self, trigger: Trigger) -> Transition:
        """Apply ``trigger``; return the transition, or raise :class:`IllegalTransition`."""
        try:
            to_state, reason = TRANSITIONS[(self.state, trigger)]
        except KeyError:
            raise IllegalTransition(self.state, trigger) from None
        transition = Transition(self.state, to_state, trigger, reason)
        self.state = to_state
        if reason is not None:
            self.close_reason = reason
        return transition

    @property
    def closed(self) -> bool:
        return self.state is CLOSED
