"""The hub's embedded engine: each channel's history in this process's memory.

Owns: per channel, a ring of its recent :class:`~ssesup.hub.backend.Entry` (bounded by count and age),
and waking the waiting reader of every event loop when something is appended. Does not own fan-out or
mailboxes (``ssesup.hub``).

Positions come from one counter per engine (``(n, 0)``), so they increase in every channel and are
never given twice. A channel has a record only while it has history: from its first append until its
newest event is older than ``history_ttl``; then it is forgotten whole (by the next call, or by a
sweeper task that runs while some channel has history), so channels that come and go (per user, per
request) cost nothing once their history has aged out. Subscribing or reading keeps nothing. What a
forgotten channel leaves is its last position in one of :data:`HORIZON_BUCKETS` buckets: a resume after
an id on a channel with no history is ``expired`` when a channel of the same bucket was forgotten after
that id (it may have had events), never ``unknown``; an id older than the age bound may so answer
``expired`` for a channel that had nothing. The epoch is random per engine: another process's ids
(another worker, a restart) are from another epoch, so they are refused with a gap, never misread.

A run's channel (``start_run``) is kept apart from that sweep: its record holds the run's status and
history by the run's own bounds (events and bytes, the oldest dropped past them; no age bound) while
the run is active, and is forgotten whole its ``ttl`` after its newest event once the run ended (a heap
of those times, looked at by the same sweep).

Thread-safe: loops in several threads may append, read and wait at once (one lock, held briefly).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import secrets
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
from anyio.lowlevel import RunVar

from ssesup._loop import LoopPrimitives, loop_local, running_trio, spawn_owned
from ssesup.events import Event
from ssesup.hub.backend import ACTIVE, Backend, Entry, History, RunBounds, RunEnd, RunRecord
from ssesup.hub.ids import START, Position

# Buckets of channel names, each keeping the highest last position of a channel forgotten in it: a
# resume on a channel with no history is ``expired`` only when a channel of its bucket was forgotten
# after the id asked for (bounded memory: a few KiB, however many channels came and went).
HORIZON_BUCKETS = 4096
# The sweep runs this long after the next channel ages out (a few channels forgotten at once, not one
# wake-up each).
SWEEP_SLACK = 0.5
# Channels a loop's reader notes as changed before it looks; past that its next look reads every channel.
CHANGED_KEPT = 10_000
# The separator a run's events are measured with (its bound in bytes).
SIZE_SEP = "\r\n"


class _Run:
    """A run's record: who runs it (``token``), its bounds, where it starts, how it ended and when its
    channel is forgotten (``expires``: never while it is active), and the bytes its channel holds."""

    __slots__ = ("bounds", "bytes", "end", "expires", "start", "status", "token")

    def __init__(self, token: str, bounds: RunBounds, start: Position, size: int) -> None:
        self.token = token
        self.bounds = bounds
        self.start = start
        self.status = ACTIVE
        self.end: Position | None = None
        self.expires = math.inf
        self.bytes = size


class _Channel:
    __slots__ = ("entries", "floor", "last", "run")

    def __init__(self, floor: Position) -> None:
        self.entries: deque[tuple[float, Entry]] = deque()
        self.floor = floor  # every position up to this one is not (or no longer) in history
        # Set by the append that makes the record (a record holds one entry at least, but a run's, which
        # exists from the run's start).
        self.last = START
        self.run: _Run | None = None


class _LoopReader:
    """The reader of one event loop: waiting for an append, and the channels appended to since it last
    looked (``changed``; ``None`` until its first look, which reads every channel it follows)."""

    __slots__ = ("__weakref__", "call_soon_threadsafe", "changed", "closed", "event", "thread")

    def __init__(self) -> None:
        self.call_soon_threadsafe: Callable[..., Any] = LoopPrimitives().call_soon_threadsafe
        # Whether its loop has ended (asyncio's; a trio run's reader is dropped with its last reference).
        self.closed: Callable[[], bool] = _never if running_trio() else asyncio.get_running_loop().is_closed
        self.thread = threading.get_ident()
        self.event = anyio.Event()
        self.changed: set[str] | None = None

    def note(self, channel: str) -> None:
        """``channel`` changed (under the engine's lock). Past CHANGED_KEPT channels noted, the next look
        reads every channel instead: the set stays bounded while a reader does not look (a loop busy
        elsewhere, joins and leaves that start and cancel it)."""
        changed = self.changed
        if changed is not None:
            if len(changed) < CHANGED_KEPT:
                changed.add(channel)
            else:
                self.changed = None

    def wake(self) -> None:
        if threading.get_ident() == self.thread:
            self.event.set()
        else:
            with contextlib.suppress(RuntimeError):  # its loop has closed: no one waits there any more
                self.call_soon_threadsafe(self.event.set)


class MemoryBackend(Backend):
    """History in memory: at most ``history_size`` events per channel, none older than ``history_ttl``
    seconds. A channel with nothing in history is forgotten (see the module's docstring)."""

    name = "memory"
    shared = False

    def __init__(self, history_size: int, history_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self._clock = clock
        self._epoch = secrets.token_hex(5)
        self._lock = threading.Lock()
        # Channels with history, the one appended to least recently first (the sweep's order).
        self._channels: OrderedDict[str, _Channel] = OrderedDict()
        # The channels of runs, active or ended (not in the sweep's order: see the module's docstring), and
        # when ended ones are forgotten: (time, sequence, channel), stale entries skipped.
        self._runs: dict[str, _Channel] = {}
        self._expiring: list[tuple[float, int, str]] = []
        self._expiring_order = itertools.count()
        # Per bucket of channel names, the highest last position of a channel forgotten in it.
        self._horizons = [START] * HORIZON_BUCKETS
        self._counter = 0
        self._waiting: set[_LoopReader] = set()
        # Every loop's reader (while its loop lives): each append notes its channel in theirs.
        self._readers: weakref.WeakSet[_LoopReader] = weakref.WeakSet()
        self._reader: RunVar[_LoopReader] = RunVar(f"ssesup.hub.memory.{id(self)}")
        self._sweeping = False
        # Presence: member -> [the time its records expire, channel -> user -> open streams].
        self._members: dict[str, tuple[float, dict[str, dict[str, int]]]] = {}

    async def epoch(self) -> str:
        return self._epoch

    async def append(self, channel: str, event: Event) -> Position:
        return self._append(channel, event, None)

    def _append(self, channel: str, event: Event, end: tuple[str, str] | None) -> Position:
        """Append ``event`` (a run's end, ``end``: its token and status)."""
        now = self._clock()
        with self._lock:
            self._sweep(now)
            self._counter += 1
            position = (self._counter, 0)
            channels = self._channels
            record = channels.get(channel)
            if record is not None:
                channels.move_to_end(channel)
            else:
                record = self._runs.get(channel)
                if record is None:
                    record = channels[channel] = _Channel(self._horizons[hash(channel) % HORIZON_BUCKETS])
            entry = Entry(position, event, record.last) if end is None else RunEnd(position, event, record.last)
            record.entries.append((now, entry))
            record.last = position
            run = record.run
            if run is None:
                self._trim(record, now)
            else:
                self._append_to_run(channel, record, run, entry, end, now)
            ended = None
            for reader in self._readers:
                if reader.closed():
                    ended = [*(ended or ()), reader]
                else:
                    reader.note(channel)
            for reader in ended or ():  # a loop that ended (its reader kept by the loop's own variables)
                self._readers.discard(reader)
            sweeper = not self._sweeping
            self._sweeping = True
            waiting, self._waiting = self._waiting, set()
        if sweeper:
            spawn_owned(self._sweeper)
        for reader in waiting:
            reader.wake()
        return position

    async def read(self, channel: str, after: Position, limit: int) -> History:
        with self._lock:
            now = self._clock()
            self._sweep(now)
            record = self._channels.get(channel) or self._runs.get(channel)
            if record is None:  # nothing in history: what it had is gone, if it had anything after ``after``
                floor = self._horizons[hash(channel) % HORIZON_BUCKETS]
                return History((), after < floor, (self._counter, 0), floor)
            if record.run is None:
                self._trim(record, now)
            held = record.entries
            if not held:  # a run's channel before its first event
                return History((), after < record.floor, (self._counter, 0), record.floor)
            entries = self._after(record, after)
            newest = held[-1][1]
            ended = newest if type(newest) is RunEnd else None
            kept_after = held[0][1].previous
            return History(entries[:limit], after < record.floor, record.last, kept_after or START, ended)

    async def last(self, channel: str) -> Position:
        with self._lock:
            record = self._channels.get(channel) or self._runs.get(channel)
            # A channel with no history: every position it will give follows the counter's.
            return (self._counter, 0) if record is None or not record.entries else record.last

    async def wait(self, cursors: Mapping[str, Position], timeout: float) -> list[tuple[str, Entry]]:
        reader = self._loop_reader()
        with self._lock:
            found = self._collect(cursors, reader)
            if found:
                return found
            reader.event = anyio.Event()
            self._waiting.add(reader)
        try:
            with anyio.move_on_after(timeout):
                await reader.event.wait()
        finally:
            with self._lock:
                self._waiting.discard(reader)
        with self._lock:
            return self._collect(cursors, reader)

    def followed(self, channel: str) -> None:
        reader = self._loop_reader()
        with self._lock:
            reader.note(channel)

    def appended(self, channel: str, after: Position) -> list[Entry]:
        with self._lock:
            record = self._channels.get(channel) or self._runs.get(channel)
            return [] if record is None else self._after(record, after)

    async def wake(self) -> None:
        self._loop_reader().event.set()

    async def presence_write(
        self, member: str, changed: Mapping[str, Mapping[str, int]], ttl: float, *, replace: bool = False
    ) -> bool:
        with self._lock:
            now = self._clock()
            held = self._members.get(member)
            if replace:
                records: dict[str, dict[str, int]] = {}
            elif held is None or held[0] <= now:
                self._members.pop(member, None)  # its TTL ran out: forgotten whole, as a read does
                return False
            else:
                records = held[1]
            for channel, users in changed.items():
                record = records.get(channel)
                for user, count in users.items():
                    if count > 0:
                        if record is None:
                            record = records[channel] = {}
                        record[user] = count
                    elif record is not None:
                        record.pop(user, None)
                if record is not None and not record:
                    del records[channel]
            self._members[member] = (now + ttl, records)
            return True

    async def presence_leave(self, member: str) -> None:
        with self._lock:
            self._members.pop(member, None)

    async def presence(self, channel: str) -> list[dict[str, int]]:
        with self._lock:
            now = self._clock()
            for member in [member for member, (until, _) in self._members.items() if until <= now]:
                del self._members[member]  # its loop ended without removing them (a thread that died)
            return [dict(records[channel]) for _, records in self._members.values() if channel in records]

    async def close(self) -> None:
        """Nothing to release: history stays for as long as the engine (and so its hub) lives."""

    def channels(self) -> int:
        """The channels that have history now (each costs a record until its history ages out), runs'
        channels among them."""
        with self._lock:
            return len(self._channels) + len(self._runs)

    # -- runs ----------------------------------------------------------------------------------------

    async def start_run(self, channel: str, token: str, bounds: RunBounds) -> Position | None:
        with self._lock:
            self._sweep(self._clock())
            record = self._runs.get(channel)
            if record is None:
                record = self._channels.pop(channel, None)
                if record is None:
                    record = _Channel(self._horizons[hash(channel) % HORIZON_BUCKETS])
                self._runs[channel] = record
            elif record.run is not None and record.run.status == ACTIVE:
                return None
            start = record.last if record.entries else (self._counter, 0)
            size = sum(len(entry.body(SIZE_SEP)) for _, entry in record.entries)
            record.run = _Run(token, bounds, start, size)
            self._trim_run(record, record.run)
            return start

    async def last_run(self, channel: str) -> tuple[Position, RunRecord | None]:
        with self._lock:
            self._sweep(self._clock())
            record = self._channels.get(channel) or self._runs.get(channel)
            last = (self._counter, 0) if record is None or not record.entries else record.last
            run = None if record is None else record.run
            return last, None if run is None else RunRecord(run.status, run.start, run.end)

    async def end_run(self, channel: str, token: str, status: str, event: Event) -> Position:
        return self._append(channel, event, (token, status))

    async def runs(self, channels: Sequence[str]) -> list[RunRecord | None]:
        with self._lock:
            self._sweep(self._clock())
            records: list[RunRecord | None] = []
            for channel in channels:
                record = self._runs.get(channel)
                run = None if record is None else record.run
                records.append(None if run is None else RunRecord(run.status, run.start, run.end))
            return records

    async def _sweeper(self) -> None:
        """Forget the channels whose history aged out, for as long as some channel has history (one
        task, on the loop of the append that found none running)."""
        try:
            while True:
                with self._lock:
                    delay = self._sweep(self._clock())
                    if delay is None:
                        self._sweeping = False
                        return
                await anyio.sleep(delay)
        except BaseException:
            with self._lock:
                self._sweeping = False  # cancelled with its loop: the next append starts another
            raise

    # -- under the lock ------------------------------------------------------------------------------

    def _sweep(self, now: float) -> float | None:
        """Forget every channel whose newest event is older than ``history_ttl`` (least recently
        appended first: this stops at the first one still within it), and every ended run's channel
        past its time. Seconds until the next one ages out, or ``None`` when none is left to age."""
        channels = self._channels
        oldest = now - self.history_ttl
        delay = None
        while channels:
            channel, record = next(iter(channels.items()))
            newest = record.entries[-1][0]
            if newest >= oldest:
                delay = newest - oldest + SWEEP_SLACK
                break
            del channels[channel]
            self._forget(channel, record)
        expiring = self._expiring
        while expiring and expiring[0][0] <= now:
            expires, _, channel = heapq.heappop(expiring)
            ended = self._runs.get(channel)
            if ended is not None and ended.run is not None and ended.run.expires == expires:
                del self._runs[channel]
                self._forget(channel, ended)
        if expiring:
            later = expiring[0][0] - now + SWEEP_SLACK
            delay = later if delay is None else min(delay, later)
        return delay

    def _forget(self, channel: str, record: _Channel) -> None:
        """``channel``'s record is gone: its bucket keeps its last position."""
        bucket = hash(channel) % HORIZON_BUCKETS
        if record.last > self._horizons[bucket]:
            self._horizons[bucket] = record.last

    def _append_to_run(
        self, channel: str, record: _Channel, run: _Run, entry: Entry, end: tuple[str, str] | None, now: float
    ) -> None:
        """``entry`` was appended to a run's channel: the run's bounds, its end, when it is forgotten."""
        run.bytes += len(entry.body(SIZE_SEP))
        if end is not None and end[0] == run.token and run.status == ACTIVE:
            run.status, run.end = end[1], entry.position
        if run.status != ACTIVE:  # ended: forgotten ``ttl`` after its newest event
            run.expires = now + run.bounds.ttl
            heapq.heappush(self._expiring, (run.expires, next(self._expiring_order), channel))
        self._trim_run(record, run)

    @staticmethod
    def _trim_run(record: _Channel, run: _Run) -> None:
        """A run's bounds: past its events or bytes, the oldest are dropped (the newest stays)."""
        entries = record.entries
        bounds = run.bounds
        while len(entries) > 1 and (len(entries) > bounds.max_events or run.bytes > bounds.max_bytes):
            dropped = entries.popleft()[1]
            run.bytes -= len(dropped.body(SIZE_SEP))
            record.floor = dropped.position

    def _trim(self, record: _Channel, now: float) -> None:
        entries = record.entries
        oldest = now - self.history_ttl
        # The newest entry stays: the channel is forgotten whole (by the sweep) when it ages out.
        while len(entries) > 1 and (len(entries) > self.history_size or entries[0][0] < oldest):
            record.floor = entries.popleft()[1].position

    @staticmethod
    def _after(record: _Channel, after: Position) -> list[Entry]:
        if record.last <= after:
            return []
        entries = record.entries
        newer = []
        for index in range(len(entries) - 1, -1, -1):
            entry = entries[index][1]
            if entry.position <= after:
                break
            newer.append(entry)
        newer.reverse()
        return newer

    def _collect(self, cursors: Mapping[str, Position], reader: _LoopReader) -> list[tuple[str, Entry]]:
        """What follows the cursors of the channels appended to since ``reader`` last looked (every
        channel on its first look): the cost is per channel that changed, not per channel followed."""
        changed, reader.changed = reader.changed, set()
        found: list[tuple[str, Entry]] = []
        for channel in cursors if changed is None else changed:
            cursor = cursors.get(channel)
            record = self._channels.get(channel) or self._runs.get(channel)
            if cursor is not None and record is not None and record.last > cursor:
                found.extend((channel, entry) for entry in self._after(record, cursor))
        return found

    def _loop_reader(self) -> _LoopReader:
        return loop_local(self._reader, self._new_reader)

    def _new_reader(self) -> _LoopReader:
        reader = _LoopReader()
        with self._lock:
            self._readers.add(reader)
        return reader


def _never() -> bool:
    return False
