"""The hub's part on one event loop: one reader for every channel the loop's subscribers follow.

Owns: which subscriptions of this loop follow which channel, the reader's cursor per channel (the last
position fanned out), the one task that waits on the engine for all of them and hands each new entry to
every subscriber's mailbox, reconnecting with jittered back-off when the engine is down, and noticing a
new epoch. Does not own mailboxes or ids (``ssesup.hub.subscription``) or storage (the engine).

The task is started by the first subscription of the loop and ends with the last one, like the
supervisor's timers: it lives in an anyio ``RunVar`` per hub and loop, so it needs no lifespan, and a
drain, which ends the loop's streams, ends it too. A publish on the loop to an engine that holds its
entries in this process (memory) fans out at once (:meth:`LoopHub.published`), not a step of the loop
later; the reader, woken too, finds those entries at or before its cursor and skips them. Subscribers
are woken in the order they joined.

The seam between history and live events rests on one invariant: every entry after the cursor
:meth:`LoopHub.join` returns reaches the subscriber's mailbox (the cursor is read, and entries are
fanned out, in one step of the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, TypeVar

import anyio
import structlog

from ssesup import logs
from ssesup._loop import LoopPrimitives, running_trio, spawn_owned, wake
from ssesup.hub.backend import Entry, HubUnavailable, Missed, RunRecord
from ssesup.hub.ids import Position
from ssesup.hub.mailbox import Mailbox
from ssesup.hub.waiter import Waiter, ring_soon

if TYPE_CHECKING:
    from ssesup.hub import Hub

log = structlog.get_logger("ssesup")

T = TypeVar("T")

# The reader's longest wait on the engine: how often an idle reader checks the epoch (a flushed Redis
# is noticed within this) and how soon an engine that went away silently is found.
HEALTH_EVERY = 5.0
# Reconnect back-off: the first retry after about BACKOFF_FIRST, doubling up to BACKOFF_CAP, each wait
# drawn between half and all of it (jitter: processes that lost the engine together do not return in step).
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0
# A reader behind its engine (after an outage, or a burst published on another loop) fans out what it
# read in pieces of at most a quarter of a mailbox (LoopHub._deliver): before each piece after the first,
# while the followers that hold more than a piece take some of it (looked at every PIECE_POLL), it waits
# up to PIECE_WAIT, and BATCH_WAIT in all per batch. A subscriber that keeps up takes a backlog at its own
# pace; one that takes nothing is not waited for, and fills its mailbox.
PIECE_WAIT = 0.05
BATCH_WAIT = 0.5
PIECE_POLL = 0.002
SIZE_SEP = "\r\n"  # the separator a piece's bytes are counted with (the default; others differ little)


def backoff(attempt: int, rng: random.Random) -> float:
    delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** min(attempt, 16))
    return rng.uniform(delay / 2, delay)


class _Flight:
    """One engine call that every caller asking for the same thing meanwhile waits for (single flight)."""

    __slots__ = ("done", "ok", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.ok = False
        self.result: object = None


class LoopHub:
    """One hub's subscriptions, cursors and reader on one event loop."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.loop = LoopPrimitives()
        # asyncio: each subscription's one Waiter (ssesup.hub.waiter); trio: the loop's own wake-up.
        self.asyncio_loop = None if running_trio() else asyncio.get_running_loop()
        # Per channel, the mailboxes of its subscribers in the order they joined (a dict: fan-out wakes
        # them in that order).
        self.subscribers: dict[str, dict[Mailbox, None]] = {}
        self.cursors: dict[str, Position] = {}
        self.mailboxes: set[Mailbox] = set()
        self.epoch: str | None = None
        self.healthy = True
        self.rng = random.Random()
        self._reader: anyio.CancelScope | None = None
        self._task: object = None
        # The engine calls in flight that joins and replays share: (operation, channel, ...) -> _Flight.
        self._flights: dict[tuple[object, ...], _Flight] = {}
        # Per followed channel, the cursor at which the engine said it has no run: while the cursor is
        # still there, a subscription that joins needs not ask again (a run that started since starts
        # after that cursor, so every event of it reaches the subscription live).
        self.no_run: dict[str, Position] = {}
        hub.counters.watch_depth(self)

    def mailbox_depth(self) -> int:
        return sum(mailbox.held for mailbox in tuple(self.mailboxes))

    async def current_epoch(self) -> str:
        if self.epoch is None:
            self.epoch = await self.hub.call("epoch", self.hub.backend.epoch)
        return self.epoch

    async def retrying(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` until the engine answers, backing off between tries (a subscriber waits, open)."""
        attempt = 0
        while True:
            try:
                return await self.hub.call(operation, fn)
            except HubUnavailable:
                self.healthy = False
                await anyio.sleep(backoff(attempt, self.rng))
                attempt += 1

    async def shared(self, key: tuple[object, ...], operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` until the engine answers (:meth:`retrying`), called once for all the callers that ask
        for the same ``key`` while it is in flight: after a drain, thousands of clients join the same
        channels and resume after the same ids at once, and each would otherwise take a connection.
        When the caller that calls is cancelled (its subscriber left), the next one calls again."""
        flights = self._flights
        while True:
            flight = flights.get(key)
            if flight is None:
                flight = flights[key] = _Flight()
                try:
                    result = await self.retrying(operation, fn)
                    flight.result, flight.ok = result, True
                    return result
                finally:
                    del flights[key]
                    flight.done.set()
            await flight.done.wait()
            if flight.ok:
                return flight.result  # type: ignore[return-value]

    async def join(self, mailbox: Mailbox, channel: str) -> tuple[Position, RunRecord | Literal[False] | None]:
        """Follow ``channel`` for the subscriber of ``mailbox``; return the cursor after which every entry
        will reach the mailbox, and the channel's run record when the engine was asked for the cursor
        now (read with it, in one step), else ``False`` (the caller reads it after, if it needs it)."""
        self.mailboxes.add(mailbox)
        self.subscribers.setdefault(channel, {})[mailbox] = None
        cursor = self.cursors.get(channel)
        if cursor is not None:
            self._ensure_reader()
            return cursor, False
        backend = self.hub.backend
        looks = backend.looks()
        last, run = await self.shared(("last", channel), "last", lambda: backend.last_run(channel))
        cursor = self.cursors.get(channel)
        if cursor is not None:  # another subscription set it meanwhile: from there on, all reach us
            return cursor, False
        if mailbox not in self.subscribers.get(channel, ()):
            return last, run  # left while waiting
        self.cursors[channel] = last
        if run is None:
            self.no_run[channel] = last
        if looks is not None and backend.looks() == looks:
            # The reader did not look meanwhile: what follows ``last`` it finds at its next look.
            self._ensure_reader()
            return last, run
        backend.followed(channel)
        if not self._ensure_reader():
            with contextlib.suppress(HubUnavailable):  # the reader, reconnecting, reads every channel it has
                await backend.wake()
        return last, run

    def leave(self, mailbox: Mailbox) -> None:
        self.mailboxes.discard(mailbox)
        for channel in mailbox.channels:
            followers = self.subscribers.get(channel)
            if followers is None:
                continue
            followers.pop(mailbox, None)
            if not followers:
                del self.subscribers[channel]
                self.cursors.pop(channel, None)
                self.no_run.pop(channel, None)
        if not self.cursors and self._reader is not None:
            self._reader.cancel()  # nothing left to read: the reader ends now, not at its next wake-up
            self._reader = None

    async def reader_stopped(self) -> None:
        """Wait (a second at most) for a reader whose last subscription left to end, so that the
        engine's connections are not closed under its cancelled read."""
        task = self._task
        if self._reader is None and isinstance(task, asyncio.Task) and not task.done():
            await asyncio.wait((task,), timeout=1.0)

    def published(self, channel: str) -> None:
        """This loop published to ``channel``: fan out what the engine holds already, in this step of the
        loop rather than the reader's next one (the reader, woken too, then finds nothing new)."""
        cursor = self.cursors.get(channel)
        if cursor is None:
            return
        entries = self.hub.backend.appended(channel, cursor)
        if entries:
            self._fan_out([(channel, entry) for entry in entries])

    def _ensure_reader(self) -> bool:
        """Start the reader unless it runs; ``True`` when it was started now."""
        if self._reader is not None:
            return False
        scope = self._reader = anyio.CancelScope()
        self._task = spawn_owned(lambda: self._read(scope))
        return True

    async def _read(self, scope: anyio.CancelScope) -> None:
        backend = self.hub.backend
        clock = self.loop.clock
        checked = clock()
        attempt = 0
        try:
            with scope:
                while self.cursors:
                    try:
                        if attempt or clock() - checked >= HEALTH_EVERY:
                            self._check_epoch(await self.hub.call("epoch", backend.epoch))
                            checked = clock()
                        # The cursors themselves, not a copy: the engine reads those that changed.
                        batch = await backend.wait(self.cursors, HEALTH_EVERY)
                    except Exception as exc:
                        if not isinstance(exc, HubUnavailable):
                            logs.exception("hub.reader_failed", backend=backend.name)
                        elif attempt == 0:
                            log.warning("hub.backend_unavailable", backend=backend.name, error=str(exc))
                        self.healthy = False
                        self.hub.counters.error("wait")
                        await anyio.sleep(backoff(attempt, self.rng))
                        attempt += 1
                        continue
                    if attempt:
                        log.info("hub.backend_back", backend=backend.name, attempts=attempt)
                    attempt = 0
                    self.healthy = True
                    if batch:
                        await self._deliver(batch)
        finally:
            if self._reader is scope:
                self._reader = None

    def _check_epoch(self, epoch: str) -> None:
        if self.epoch is not None and epoch != self.epoch:
            log.warning("hub.epoch_changed", backend=self.hub.backend.name, subscribers=len(self.mailboxes))
            for mailbox in tuple(self.mailboxes):
                mailbox.epoch_changed(epoch)
        self.epoch = epoch

    async def _deliver(self, batch: list[tuple[str, Entry]]) -> None:
        """Fan ``batch`` out in pieces that fit the mailboxes: at most a quarter of one, in events and in
        encoded bytes (a batch that fits goes out in this step). Before each further piece, the
        followers of its channels that hold more than a piece get time to take it down: while they take
        something, up to PIECE_WAIT per piece and BATCH_WAIT per batch; followers that take nothing are
        not waited for. (A publish of this loop meanwhile still fans out at once: what it fans out, the
        rest of the batch then skips.)"""
        if len(batch) == 1:
            self._fan_out(batch)
            return
        hub = self.hub
        most_events, most_bytes = max(1, hub.mailbox_events // 4), max(1, hub.mailbox_bytes // 4)
        clock = self.loop.clock
        last_wait = clock() + BATCH_WAIT
        start = 0
        while start < len(batch):
            end, size = start, 0
            while end < len(batch) and end - start < most_events:
                size += len(batch[end][1].body(SIZE_SEP))
                if size > most_bytes and end > start:
                    break
                end += 1
            piece = batch if start == 0 and end == len(batch) else batch[start:end]
            if start and clock() < last_wait:
                channels = {channel for channel, _ in piece}
                await self._settled(channels, most_events, most_bytes, min(clock() + PIECE_WAIT, last_wait))
            self._fan_out(piece)
            start = end

    async def _settled(self, channels: set[str], most_events: int, most_bytes: int, deadline: float) -> None:
        """Until every follower of ``channels`` holds at most ``most_events`` and ``most_bytes``, the
        loop's clock reaches ``deadline``, or those that hold more took nothing since the last look."""
        held = None
        while True:
            behind = [
                mailbox
                for channel in channels
                for mailbox in self.subscribers.get(channel, ())
                if mailbox.held > most_events or mailbox.size > most_bytes
            ]
            if not behind:
                return
            now_held = sum(mailbox.held for mailbox in behind)
            if (held is not None and now_held >= held) or self.loop.clock() >= deadline:
                return
            held = now_held
            await anyio.sleep(PIECE_POLL)

    @staticmethod
    def _offer(followers: dict[Mailbox, None], item: tuple[str, Entry], ringing: list[Waiter]) -> None:
        """``item`` to every follower's mailbox; the waiters to wake go to ``ringing`` (rung together)."""
        for mailbox in tuple(followers):
            wakeup = mailbox.offer(item)
            if wakeup is not None:
                if type(wakeup) is Waiter:
                    ringing.append(wakeup)
                else:
                    wake(wakeup)

    def _fan_out(self, batch: list[tuple[str, Entry]]) -> None:
        delivered: dict[str, int] = {}
        ringing: list[Waiter] = []
        cursors = self.cursors
        subscribers = self.subscribers
        offer = self._offer
        for channel, entry in batch:
            cursor = cursors.get(channel)
            if cursor is None or entry.position <= cursor:
                continue
            cursors[channel] = entry.position
            followers = subscribers.get(channel)
            if not followers:
                continue
            previous = entry.previous
            if previous is not None and previous > cursor:  # history dropped what came between
                offer(followers, (channel, Missed(previous)), ringing)
            offer(followers, (channel, entry), ringing)
            delivered[channel] = delivered.get(channel, 0) + len(followers)
        self.hub.counters.delivered(delivered)
        if ringing:
            ring_soon(ringing)  # one callback wakes them all, in the order they joined
