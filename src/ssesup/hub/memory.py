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

Thread-safe: loops in several threads may append, read and wait at once (one lock, held briefly).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.lowlevel import RunVar

from ssesup._loop import LoopPrimitives, loop_local, running_trio, spawn_owned
from ssesup.events import Event
from ssesup.hub.backend import Backend, Entry, History
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


class _Channel:
    __slots__ = ("entries", "floor", "last")

    def __init__(self, floor: Position) -> None:
        self.entries: deque[tuple[float, Entry]] = deque()
        self.floor = floor  # every position up to this one is not (or no longer) in history
        self.last = START  # set by the append that makes the record (a record holds one entry at least)


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
        now = self._clock()
        with self._lock:
            self._sweep(now)
            self._counter += 1
            position = (self._counter, 0)
            channels = self._channels
            record = channels.get(channel)
            if record is None:
                record = channels[channel] = _Channel(self._horizons[hash(channel) % HORIZON_BUCKETS])
            else:
                channels.move_to_end(channel)
            record.entries.append((now, Entry(position, event, record.last)))
            record.last = position
            self._trim(record, now)
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
            record = self._channels.get(channel)
            if record is None:  # nothing in history: what it had is gone, if it had anything after ``after``
                floor = self._horizons[hash(channel) % HORIZON_BUCKETS]
                return History((), after < floor, (self._counter, 0), floor)
            self._trim(record, now)
            entries = self._after(record, after)
            held = record.entries
            kept_after = held[0][1].previous if held else record.last
            return History(entries[:limit], after < record.floor, record.last, kept_after or START)

    async def last(self, channel: str) -> Position:
        with self._lock:
            record = self._channels.get(channel)
            # A channel with no history: every position it will give follows the counter's.
            return (self._counter, 0) if record is None else record.last

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
            record = self._channels.get(channel)
            return [] if record is None else self._after(record, after)

    async def wake(self) -> None:
        self._loop_reader().event.set()

    async def presence_write(self, member: str, changed: Mapping[str, Mapping[str, int]], ttl: float) -> None:
        with self._lock:
            _, records = self._members.get(member) or (0.0, {})
            for channel, users in changed.items():
                if users:
                    records[channel] = dict(users)
                else:
                    records.pop(channel, None)
            self._members[member] = (self._clock() + ttl, records)

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
        """The channels that have history now (each costs a record until its history ages out)."""
        with self._lock:
            return len(self._channels)

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
        appended first: this stops at the first one still within it). Seconds until the next one
        ages out, or ``None`` when no channel is left."""
        channels = self._channels
        oldest = now - self.history_ttl
        while channels:
            channel, record = next(iter(channels.items()))
            newest = record.entries[-1][0]
            if newest >= oldest:
                return newest - oldest + SWEEP_SLACK
            del channels[channel]
            bucket = hash(channel) % HORIZON_BUCKETS
            if record.last > self._horizons[bucket]:
                self._horizons[bucket] = record.last
        return None

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
            record = self._channels.get(channel)
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
