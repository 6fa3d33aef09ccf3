"""States, triggers, close reasons and the one table of legal transitions.

Theory of operation
-------------------
A stream is OPEN from the moment its actor registers with the supervisor until the response start
(status and headers) has been sent: ``first_send`` makes it STREAMING. While STREAMING the actor pulls
events from the generator and sends them. A drain request moves a STREAMING (or still OPEN) stream to
DRAINING: the generator can see it and say goodbye. Every ending is a trigger that leads to CLOSED, and
the row of the table that leads there names the close reason and the ending: what is written before
the end (what is queued, a farewell, nothing) and whether the connection is released. CLOSED is
terminal: no trigger leaves it.

The table below is the whole machine. Read it top to bottom like a diagram.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


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
    EXPIRED = "expired"
    """The credential that opened the stream expired (its ``expires_at`` passed)."""
    REVOKED = "revoked"
    """The stream's user was disconnected (``supervisor.disconnect(user)``, ``hub.disconnect(user)``)."""


class CloseReason(enum.Enum):
    COMPLETED = "completed"
    CLIENT_DISCONNECT = "client_disconnect"
    SEND_TIMEOUT = "send_timeout"
    DEAD_PEER = "dead_peer"
    SLOW_CONSUMER = "slow_consumer"
    ERROR = "error"
    DRAINED = "drained"
    SHUTDOWN = "shutdown"
    EXPIRED = "expired"
    REVOKED = "revoked"


class Ending(enum.Enum):
    """What an ending does to the response and its connection. Every row of the table that reaches
    CLOSED names one, so a new ending is a row and nothing else."""

    FLUSH = "flush"
    """What is queued goes out, then the end of the body, within the send deadline."""
    FAREWELL = "farewell"
    """The generator is stopped where it waits; the farewell (the supervisor's last words for the
    reason: a last event, a ``retry:`` hint) goes out, then the end of the body, within the farewell
    budget."""
    ABANDON = "abandon"
    """Nothing more is written: what is unsent is dropped and the connection released."""
    GONE = "gone"
    """The client closed the connection: nothing to write and nothing to release."""


class Row(NamedTuple):
    """Where a trigger leads: the next state, and when that is CLOSED, the close reason and the ending."""

    to_state: State
    close_reason: CloseReason | None = None
    ending: Ending | None = None


OPEN, STREAMING, DRAINING, CLOSED = State.OPEN, State.STREAMING, State.DRAINING, State.CLOSED
T = Trigger
R = CloseReason
E = Ending

# (state, trigger) -> (next state, close reason and ending when the next state is CLOSED)
TRANSITIONS: dict[tuple[State, Trigger], Row] = {
    (OPEN, T.FIRST_SEND): Row(STREAMING),
    (OPEN, T.CLIENT_DISCONNECT): Row(CLOSED, R.CLIENT_DISCONNECT, E.GONE),
    (OPEN, T.SEND_TIMEOUT): Row(CLOSED, R.SEND_TIMEOUT, E.ABANDON),
    (OPEN, T.DEAD_PEER): Row(CLOSED, R.DEAD_PEER, E.ABANDON),
    (OPEN, T.SLOW_CONSUMER): Row(CLOSED, R.SLOW_CONSUMER, E.FLUSH),
    (OPEN, T.ERROR): Row(CLOSED, R.ERROR, E.FLUSH),
    (OPEN, T.SEND_FAILED): Row(CLOSED, R.ERROR, E.ABANDON),
    (OPEN, T.DRAIN): Row(DRAINING),
    (OPEN, T.FORCE_CLOSE): Row(CLOSED, R.SHUTDOWN, E.FAREWELL),
    (OPEN, T.EXPIRED): Row(CLOSED, R.EXPIRED, E.FAREWELL),
    (OPEN, T.REVOKED): Row(CLOSED, R.REVOKED, E.FAREWELL),
    #
    (STREAMING, T.EXHAUSTED): Row(CLOSED, R.COMPLETED, E.FLUSH),
    (STREAMING, T.CLIENT_DISCONNECT): Row(CLOSED, R.CLIENT_DISCONNECT, E.GONE),
    (STREAMING, T.SEND_TIMEOUT): Row(CLOSED, R.SEND_TIMEOUT, E.ABANDON),
    (STREAMING, T.DEAD_PEER): Row(CLOSED, R.DEAD_PEER, E.ABANDON),
    (STREAMING, T.SLOW_CONSUMER): Row(CLOSED, R.SLOW_CONSUMER, E.FLUSH),
    (STREAMING, T.ERROR): Row(CLOSED, R.ERROR, E.FLUSH),
    (STREAMING, T.SEND_FAILED): Row(CLOSED, R.ERROR, E.ABANDON),
    (STREAMING, T.DRAIN): Row(DRAINING),
    (STREAMING, T.FORCE_CLOSE): Row(CLOSED, R.SHUTDOWN, E.FAREWELL),
    (STREAMING, T.EXPIRED): Row(CLOSED, R.EXPIRED, E.FAREWELL),
    (STREAMING, T.REVOKED): Row(CLOSED, R.REVOKED, E.FAREWELL),
    #
    # A draining stream whose generator finishes by itself, or whose turn in the drain comes,
    # has been drained in order; one still open when the grace runs out is cut by the shutdown.
    (DRAINING, T.FIRST_SEND): Row(DRAINING),
    (DRAINING, T.EXHAUSTED): Row(CLOSED, R.DRAINED, E.FAREWELL),
    (DRAINING, T.DRAIN_CLOSE): Row(CLOSED, R.DRAINED, E.FAREWELL),
    (DRAINING, T.GRACE_EXPIRED): Row(CLOSED, R.SHUTDOWN, E.FAREWELL),
    (DRAINING, T.CLIENT_DISCONNECT): Row(CLOSED, R.CLIENT_DISCONNECT, E.GONE),
    (DRAINING, T.SEND_TIMEOUT): Row(CLOSED, R.SEND_TIMEOUT, E.ABANDON),
    (DRAINING, T.DEAD_PEER): Row(CLOSED, R.DEAD_PEER, E.ABANDON),
    (DRAINING, T.SLOW_CONSUMER): Row(CLOSED, R.SLOW_CONSUMER, E.FLUSH),
    (DRAINING, T.ERROR): Row(CLOSED, R.ERROR, E.FLUSH),
    (DRAINING, T.SEND_FAILED): Row(CLOSED, R.ERROR, E.ABANDON),
    (DRAINING, T.FORCE_CLOSE): Row(CLOSED, R.SHUTDOWN, E.FAREWELL),
    # The credential's end and a revocation end a stream in any state, draining too, with a farewell
    # that names them (the supervisor's words for the reason): the client learns why it was closed.
    (DRAINING, T.EXPIRED): Row(CLOSED, R.EXPIRED, E.FAREWELL),
    (DRAINING, T.REVOKED): Row(CLOSED, R.REVOKED, E.FAREWELL),
}


class IllegalTransition(RuntimeError):
    """A trigger arrived that the table does not allow in the current state."""

    def __init__(self, state: State, trigger: Trigger) -> None:
        super().__init__(f"trigger {trigger.value!r} is not legal in state {state.value!r}")
        self.state = state
        self.trigger = trigger


@dataclass(frozen=True, slots=True)
class Transition:
    """One answer of the machine: what happened and where it led (and, into CLOSED, what the ending
    does)."""

    from_state: State
    to_state: State
    trigger: Trigger
    close_reason: CloseReason | None
    ending: Ending | None = None


class StreamMachine:
    """The state of one stream. Pure: feed it triggers, read its answers."""

    __slots__ = ("close_reason", "ending", "state")

    def __init__(self) -> None:
        self.state: State = OPEN
        self.close_reason: CloseReason | None = None
        self.ending: Ending | None = None

    def fire(self, trigger: Trigger) -> Transition:
        """Apply ``trigger``; return the transition, or raise :class:`IllegalTransition`."""
        try:
            to_state, reason, ending = TRANSITIONS[(self.state, trigger)]
        except KeyError:
            raise IllegalTransition(self.state, trigger) from None
        transition = Transition(self.state, to_state, trigger, reason, ending)
        self.state = to_state
        if reason is not None:
            self.close_reason = reason
            self.ending = ending
        return transition

    @property
    def closed(self) -> bool:
        return self.state is CLOSED


def table_markdown() -> str:
    """The table as Markdown, one line per state and outcome (the triggers that share it joined with
    ``/``), in the table's order: ARCHITECTURE.md's copy is this text (a test compares them)."""
    lines = ["| from | trigger | to | close reason | ending |", "|---|---|---|---|---|"]
    rows: dict[tuple[State, Row], list[Trigger]] = {}
    for (state, trigger), row in TRANSITIONS.items():
        rows.setdefault((state, row), []).append(trigger)
    for (state, (to_state, reason, ending)), triggers in rows.items():
        names = " / ".join(trigger.value for trigger in triggers)
        reason_text = reason.value if reason is not None else ""
        ending_text = ending.value if ending is not None else ""
        lines.append(f"| {state.name} | {names} | {to_state.name} | {reason_text} | {ending_text} |")
    return "\n".join(lines) + "\n"
