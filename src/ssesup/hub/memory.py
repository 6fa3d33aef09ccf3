"""The hub's embedded engine: each channel's history in this process's memory.

Owns: per channel, a ring of its recent :class:`~ssesup.hub.backend.Entry` (bounded by count and age),
and waking the waiting reader of every event loop when something is appended. Does not own fan-out or
mailboxes (``ssesup.hub``).

Positions come from one counter per engine (``(n, 0)``), so they increase in every channel and are
never given twice. A channel is known from its first append or read on; from then on it keeps a small
record (its last position, and the highest position no longer in history) even when its events have
aged out. The epoch is random per engine: another process's ids (another worker, a restart) are from
another epoch, so they are refused with a gap, never misread.

Thread-safe: loops in several threads may append, read and wait at once (one lock, held briefly).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.lowlevel import RunVar

from ssesup._loop import LoopPrimitives
from ssesup.events import Event
from ssesup.hub.backend import Backend, Entry, History
from ssesup.hub.ids import Position


class _Channel:
    __slots__ = ("entries", "floor", "last")

    def __init__(self, position: Position) -> None:
        self.entries: deque[tuple[float, Entry]] = deque()
        self.floor = position  # every position up to this one is not (or no longer) in history
        self.last = position


class _Waiter:
    """The reader of one event loop, waiting for an append."""

    __slots__ = ("call_soon_threadsafe", "event", "thread")

    def __init__(self) -> None:
        self.call_soon_threadsafe: Callable[..., Any] = LoopPrimitives().call_soon_threadsafe
        self.thread = threading.get_ident()
        self.event = anyio.Event()

    def wake(self) -> None:
        if threading.get_ident() == self.thread:
            self.event.set()
        else:
            with contextlib.suppress(RuntimeError):  # its loop has closed: no one waits there any more
                self.call_soon_threadsafe(self.event.set)


class MemoryBackend(Backend):
    """History in memory: at most ``history_size`` events per channel, none older than ``history_ttl``
    seconds."""

    name = "memory"

    def __init__(self, history_size: int, history_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self._clock = clock
        self._epoch = secrets.token_hex(5)
        self._lock = threading.Lock()
        self._channels: dict[str, _Channel] = {}
        self._counter = 0
        self._waiting: set[_Waiter] = set()
        self._waiter: RunVar[_Waiter] = RunVar(f"ssesup.hub.memory.{id(self)}")

    async def epoch(self) -> str:
        return self._epoch

    async def append(self, channel: str, event: Event) -> Position:
        now = self._clock()
        with self._lock:
            self._counter += 1
            position = (self._counter, 0)
            record = self._channel(channel)
            record.entries.append((now, Entry(position, event, record.last)))
            record.last = position
            self._trim(record, now)
            waiting, self._waiting = self._waiting, set()
        for waiter in waiting:
            waiter.wake()
        return position

    async def read(self, channel: str, after: Position, limit: int) -> History:
        with self._lock:
            record = self._channel(channel)
            self._trim(record, self._clock())
            entries = self._after(record, after)
            return History(entries[:limit], after < record.floor, record.last)

    async def last(self, channel: str) -> Position:
        with self._lock:
            return self._channel(channel).last

    async def wait(self, cursors: Mapping[str, Position], timeout: float) -> list[tuple[str, Entry]]:
        waiter = self._loop_waiter()
        with self._lock:
            found = self._collect(cursors)
            if found:
                return found
            waiter.event = anyio.Event()
            self._waiting.add(waiter)
        try:
            with anyio.move_on_after(timeout):
                await waiter.event.wait()
        finally:
            with self._lock:
                self._waiting.discard(waiter)
        with self._lock:
            return self._collect(cursors)

    def appended(self, channel: str, after: Position) -> list[Entry]:
        with self._lock:
            record = self._channels.get(channel)
            return [] if record is None else self._after(record, after)

    async def wake(self) -> None:
        self._loop_waiter().event.set()

    async def close(self) -> None:
        """Nothing to release: history stays for as long as the engine (and so its hub) lives."""

    # -- under the lock ------------------------------------------------------------------------------

    def _channel(self, channel: str) -> _Channel:
        record = self._channels.get(channel)
        if record is None:
            record = self._channels[channel] = _Channel((self._counter, 0))
        return record

    def _trim(self, record: _Channel, now: float) -> None:
        entries = record.entries
        oldest = now - self.history_ttl
        while entries and (len(entries) > self.history_size or entries[0][0] < oldest):
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

    def _collect(self, cursors: Mapping[str, Position]) -> list[tuple[str, Entry]]:
        found: list[tuple[str, Entry]] = []
        for channel, cursor in cursors.items():
            record = self._channels.get(channel)
            if record is not None and record.last > cursor:
                found.extend((channel, entry) for entry in self._after(record, cursor))
        return found

    def _loop_waiter(self) -> _Waiter:
        try:
            return self._waiter.get()
        except LookupError:
            waiter = _Waiter()
            self._waiter.set(waiter)
            return waiter
