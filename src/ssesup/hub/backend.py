"""The small interface a hub engine implements: append, read after a position, wait for what follows.

Owns: :class:`Backend` (seven methods, and one optional), :class:`Entry` (one published event and its position),
:class:`History` (what a read found) and :class:`HubUnavailable`. Does not own ids on the wire, fan-out
or mailboxes (``ssesup.hub``): an engine stores and reads, the hub does the rest, so a second engine
(NATS JetStream, say) is one module of these seven methods.

The contract, for every engine:

* ``append`` gives each channel's events increasing positions (``(int, int)``, ordered as tuples) and
  returns the new event's; it raises :class:`HubUnavailable` when the engine cannot be reached.
* ``read(channel, after, limit)`` returns up to ``limit`` events after ``after``, oldest first, with
  ``lost`` (events after ``after`` may be gone from history: trimmed, expired), ``last`` (the channel's
  last position ever given, also when its events are gone; a position after it was never given) and
  ``floor`` (every position up to it is no longer in history: the last event dropped, when known).
* ``wait(cursors, timeout)`` returns the events after each channel's cursor, waiting up to ``timeout``
  seconds for the first (an empty list on timeout or after ``wake``). The hub calls it from one task
  per event loop, for all the channels that loop's subscribers follow.
* ``wake()`` makes this loop's ``wait`` return now (its channels changed).
* ``epoch()`` is a token of the engine's history: it changes when history is lost. It is also the
  health check (it reaches the engine).
* ``close()`` releases this event loop's connections; the next call connects again.
* ``appended(channel, after)`` (optional, not async) returns what ``wait`` would, for one channel, when
  the engine has it in this process already: the publisher's loop then fans it out in the same step.
* ``presence_write``, ``presence_leave``, ``presence`` (optional): each event loop's presence records
  ((channel, user) -> open streams, written by the pairs that changed) with a time to live, and one
  channel's records of every member (``ssesup.hub.presence`` sums them).
* ``followed(channel)`` (optional, not async): this loop's reader now follows ``channel`` (its cursor is
  set). An engine whose ``wait`` reads only the channels that changed since its last call reads this
  one at its next call too, so that what was appended while the cursor was being read is not missed.

Runs (optional: an engine without them raises ``NotImplementedError`` from ``start_run``; see
``ssesup.hub.runs``). A run's channel has a record in the engine, which keeps its history whole (by
its own bounds, :class:`RunBounds`, not the hub's age and count) while the run is active and for its
``ttl`` after it ended:

* ``start_run(channel, token, bounds)`` marks ``channel`` as a run's, atomically (one winner across
  processes), and returns the position every event of the run follows; ``None`` when a run is active
  on it. From then on ``append`` to the channel keeps the run's bounds: past ``max_events`` or
  ``max_bytes`` the oldest events are dropped (the newest is always kept).
* ``end_run(channel, token, status, event)`` appends the run's last event as a :class:`RunEnd` and
  records the end: the channel's history is kept for ``ttl`` more, then forgotten whole.
* ``runs(channels)`` reads each channel's :class:`RunRecord` (``None``: no run, or forgotten).
* ``last_run(channel)``: ``last`` and ``runs`` of one channel read in one step (a join reads the
  channel's run with its cursor: no run it missed started in between).
* ``renew_runs(tokens)`` (engines whose records outlive a process): the runs of this process are
  alive; returns the channels whose record was lost. ``run_lease`` is how long a record lives unless
  renewed (``None``: as long as the engine, memory).
* ``read`` returns the channel's newest entry as ``History.ended`` when it is a run's end.

``wait`` costs per event found, not per channel followed: a loop may follow tens of thousands of
channels (1,000 streams of 16 channels each), and its reader calls ``wait`` after every delivery.

Engines are used from any number of event loops (each uvicorn worker thread, a test's own loop): what
belongs to a loop (connections) is the engine's to keep per loop.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from ssesup.events import Event
from ssesup.hub.ids import START, Position, format_id


class HubUnavailable(ConnectionError):
    """The hub's engine cannot be reached (Redis down, say: nothing was published), or did not answer
    within its deadline (what was being published may have been stored)."""


class Entry:
    """One published event (without an id: ids are the hub's) at its position in its channel, and the
    position of the entry before it in that channel when the engine knows it (``previous``): a reader
    whose cursor is before ``previous`` missed what history dropped in between."""

    __slots__ = ("encoded", "event", "last_framed", "position", "previous")

    def __init__(self, position: Position, event: Event, previous: Position | None = None) -> None:
        self.position = position
        self.event = event
        self.previous = previous
        self.encoded: dict[object, bytes] = {}
        # (key, bytes) of the last framed(), one attribute (loops in other threads read it whole): a
        # fan-out asks for the same key for every subscriber, who compare theirs to it (equal tuples:
        # no hash, no call) before they call framed().
        self.last_framed: tuple[tuple[str, str, str] | None, bytes] = (None, b"")

    def body(self, sep: str) -> bytes:
        """The event encoded with ``sep``, made once per separator however many subscribers get it."""
        body = self.encoded.get(sep)
        if body is None:
            body = self.encoded[sep] = self.event.encode(sep)
        return body

    def framed(self, key: tuple[str, str, str]) -> bytes:
        """The event encoded with separator ``sep`` after the ``id:`` line of a subscription of its
        channel alone, ``key`` being ``(sep, epoch, digest)`` (``digest`` names that channel; the
        subscription keeps its key, so a delivery makes nothing): made once per separator and epoch."""
        framed = self.encoded.get(key)
        if framed is None:
            sep, epoch, digest = key
            event_id = format_id(epoch, digest, (self.position,))
            framed = self.encoded[key] = b"id: " + event_id.encode() + sep.encode() + self.body(sep)
        self.last_framed = (key, framed)
        return framed


@dataclass(frozen=True, slots=True)
class History:
    """What :meth:`Backend.read` found: the entries, whether some after ``after`` are gone, the
    channel's last position, and the last position history no longer holds (``floor``: a resume that
    lost events lost those up to it). ``ended``: the channel's newest entry when it is a run's end
    (:class:`RunEnd`), so that a viewer that resumes after the end hears it again."""

    entries: Sequence[Entry]
    lost: bool
    last: Position
    floor: Position = START
    ended: Entry | None = None


class RunEnd(Entry):
    """The last event of a run (``Hub.start_run``): a subscription of its channel alone ends after it."""

    __slots__ = ()


ACTIVE = "active"
"""The status of a run's record while the run goes on (else its end's: ``completed``, ...)."""


@dataclass(frozen=True, slots=True)
class RunBounds:
    """What a run's channel keeps: at most ``max_events`` events and ``max_bytes`` bytes of them (the
    oldest dropped past either), for ``ttl`` seconds after the run ended."""

    max_events: int
    max_bytes: int
    ttl: float


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run's record in the engine: its ``status`` (:data:`ACTIVE` or how it ended), the position
    every event of the run follows (``start``), and its end's position once it ended."""

    status: str
    start: Position
    end: Position | None = None


class Backend(abc.ABC):
    """An engine of the hub. See the module's docstring for the contract."""

    name: ClassVar[str]
    shared: ClassVar[bool] = True
    """Whether other processes share this engine (memory: no). A hub follows control messages between
    processes (revocations) only on a shared engine."""

    @abc.abstractmethod
    async def epoch(self) -> str: ...

    @abc.abstractmethod
    async def append(self, channel: str, event: Event) -> Position: ...

    @abc.abstractmethod
    async def read(self, channel: str, after: Position, limit: int) -> History: ...

    @abc.abstractmethod
    async def last(self, channel: str) -> Position: ...

    @abc.abstractmethod
    async def wait(self, cursors: Mapping[str, Position], timeout: float) -> list[tuple[str, Entry]]: ...

    @abc.abstractmethod
    async def wake(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    def followed(self, channel: str) -> None:  # noqa: B027 (optional, not abstract)
        """This loop's reader now follows ``channel`` (optional: see the module's docstring)."""

    def looks(self) -> int | None:
        """How many times this loop's reader has looked at what changed (``None``: not counted, the
        default). A join whose reader did not look between asking for a channel's cursor and following
        it needs neither :meth:`followed` nor :meth:`wake`: whatever is appended after that cursor, the
        reader's next look finds, with the channel followed by then."""
        return None

    # -- presence (optional: an engine without it answers no one present) -----------------------------

    async def presence_write(
        self, member: str, changed: Mapping[str, Mapping[str, int]], ttl: float, *, replace: bool = False
    ) -> bool:
        """Set ``member``'s open streams of the (channel, user) pairs in ``changed`` (channel -> user ->
        open streams; 0: the pair is gone) and keep every record of ``member`` for ``ttl`` seconds from
        now (a heartbeat: ``changed`` empty). A write costs the pairs it names, not the channels' users.
        With ``replace``, ``changed`` is the member's whole state: every other record of it goes. Without
        it, a member whose TTL ran out (or that never wrote, or left) is not written: ``False`` says so,
        and the member writes its whole state (its records may be partly gone). A member is one event
        loop of one process."""
        return True

    async def presence_leave(self, member: str) -> None:  # noqa: B027 (optional, not abstract)
        """Remove every record of ``member``."""

    async def presence(self, channel: str) -> list[dict[str, int]]:
        """The records of ``channel`` of every member whose TTL has not run out (one per member), at a
        cost of the members and the users on ``channel``, not of every record."""
        return []

    # -- runs (optional: see the module's docstring) ----------------------------------------------------

    run_lease: float | None = None

    async def start_run(self, channel: str, token: str, bounds: RunBounds) -> Position | None:
        raise NotImplementedError(f"the hub's engine {self.name!r} keeps no runs")

    async def end_run(self, channel: str, token: str, status: str, event: Event) -> Position:
        raise NotImplementedError(f"the hub's engine {self.name!r} keeps no runs")

    async def runs(self, channels: Sequence[str]) -> list[RunRecord | None]:
        return [None] * len(channels)

    async def last_run(self, channel: str) -> tuple[Position, RunRecord | None]:
        """``last(channel)`` and its run's record, read in one step where the engine can (else the
        record after the position: a run that started in between starts after the position too)."""
        last = await self.last(channel)
        (record,) = await self.runs((channel,))
        return last, record

    async def renew_runs(self, tokens: Mapping[str, str]) -> list[str]:
        return []

    def appended(self, channel: str, after: Position) -> Sequence[Entry]:
        """The entries of ``channel`` after ``after`` that this process holds already, without waiting
        (optional: an engine elsewhere, Redis, returns none and the loop's reader fetches them)."""
        return ()


class Missed(Entry):
    """Not an event: the mark, in a subscriber's mailbox, that its channel's events up to ``position``
    were dropped from history before the reader read them (the subscriber sends an ``expired`` gap)."""

    __slots__ = ()

    def __init__(self, position: Position) -> None:
        super().__init__(position, _NO_EVENT)

    def body(self, sep: str) -> bytes:
        return b""


_NO_EVENT = Event(comment="")
