"""Presence: who has streams open on a channel, across every process of the hub's engine.

Owns: one event loop's records (:class:`LoopPresence`: channel -> user -> open streams of this loop),
the task that writes what changed to the engine in batches and refreshes the loop's records with one
heartbeat, and summing the engine's answer. Does not own storage (the engines' ``presence_*`` methods)
or who is a stream's user (``ssesup.identity``).

Each event loop is one member of the engine's presence (a worker process has one loop): its records
live in the engine with a time to live (TTL), refreshed by one heartbeat per member every BEAT_EVERY
seconds, whatever the number of its streams or channels. A stream's join and leave cost O(1) per channel
here (counts in two dicts, the (channel, user) pair marked as changed); what changed goes to the engine
at most FLUSH_DELAY later, many changes in one call, and a write carries only the pairs that changed
(their counts, 0 for a pair that is gone): 10 joins and 10 leaves on a channel that 10,000 users watch
write 20 pairs, not the channel's 10,000. So a member that dies without cleaning up (SIGKILL, the OOM
killer) drops out of every answer within TTL seconds of its last heartbeat (at most TTL after it died),
and one that ends in order removes its records when its last identified stream leaves.

A member whose records the engine no longer holds whole (its first write, a heartbeat that came after
its TTL ran out: an engine outage, a loop stalled that long) writes its whole state instead, replacing
whatever is left of it; so does one that noted more than DIRTY_KEPT changes while the engine was away
(and more than the pairs it holds): the changes it keeps stay bounded by its live state.

Bounded: a loop keeps a record per (channel, user) of its live streams only, and the changed pairs up to
that bound; the engine keeps the records of members whose TTL has not run out (Redis: a hash per member
and channel, removed by whoever next finds the member's TTL run out, a bounded number per call).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

import anyio
import structlog

from ssesup._loop import spawn_owned
from ssesup.hub.backend import HubUnavailable
from ssesup.hub.control import process_token

if TYPE_CHECKING:
    from ssesup.hub import Hub

log = structlog.get_logger("ssesup")

# A member's records live this long after its last heartbeat: the bound on how long a member that died
# without cleaning up is still counted.
TTL = 15.0
BEAT_EVERY = 5.0
# Changes wait this long for more before they are written (on an engine elsewhere; memory: at once).
FLUSH_DELAY = 0.05
RETRY_EVERY = 1.0
# Changed (channel, user) pairs a loop notes before its next write; past that, and past the pairs it
# holds (writing them all then costs no more), it forgets them and writes its whole state instead.
DIRTY_KEPT = 10_000


class LoopPresence:
    """One hub's presence records of one event loop, and the task that writes them to the engine."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.member = f"{process_token()}.{secrets.token_hex(4)}"
        self.counts: dict[str, dict[str, int]] = {}
        self.pairs = 0  # (channel, user) pairs in ``counts``
        self.dirty: set[tuple[str, str]] = set()
        # The next write is the member's whole state, replacing what the engine holds of it: at first,
        # after it left, when its TTL ran out, or past DIRTY_KEPT changes. ``dirty`` stays empty meanwhile.
        self.rewrite = True
        self.written = False  # the engine may hold records of this member
        self.delay = FLUSH_DELAY if hub.backend.shared else 0.0
        self._wakeup = anyio.Event()
        self._task: object = None
        self._scope: anyio.CancelScope | None = None
        # One write at a time: two in flight (the task's and a read's flush) could land out of order and
        # leave an older count of a pair in the engine.
        self._writing = anyio.Lock()

    def join(self, channels: tuple[str, ...], user: str) -> None:
        """A subscription of ``user`` to ``channels`` opened."""
        counts = self.counts
        added = 0
        for channel in channels:
            users = counts.get(channel)
            if users is None:
                users = counts[channel] = {}
            count = users.get(user, 0)
            added += count == 0
            users[user] = count + 1
        self.pairs += added
        if not self.rewrite:
            self._mark((channel, user) for channel in channels)
        self.hub.counters.presence(added, 1)
        self._changed()

    def leave(self, channels: tuple[str, ...], user: str) -> None:
        """A subscription of ``user`` to ``channels`` ended."""
        counts = self.counts
        removed = 0
        left = []
        for channel in channels:
            users = counts.get(channel)
            if users is None or user not in users:
                continue
            if users[user] > 1:
                users[user] -= 1
            else:
                del users[user]
                removed += 1
                if not users:
                    del counts[channel]
            left.append((channel, user))
        self.pairs -= removed
        if not self.rewrite:
            self._mark(left)
        self.hub.counters.presence(-removed, -1)
        self._changed()

    def _mark(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Note ``pairs`` as changed (when ``rewrite`` is not set); past DIRTY_KEPT, rewrite instead."""
        dirty = self.dirty
        dirty.update(pairs)
        if len(dirty) > DIRTY_KEPT and len(dirty) > self.pairs:
            dirty.clear()
            self.rewrite = True

    def _changed(self) -> None:
        if self._task is None:
            self._wakeup = anyio.Event()
            scope = self._scope = anyio.CancelScope()
            self._task = spawn_owned(lambda: self._run(scope))
        else:
            self._wakeup.set()

    def _pending(self) -> bool:
        """Whether the engine is behind: pairs changed, or a whole state to write (none when the member
        holds nothing and has written nothing)."""
        return bool(self.dirty) or (self.rewrite and bool(self.counts or self.written))

    async def flush(self) -> None:
        """Write what changed now (a presence read on this loop sees this loop's own changes)."""
        if not self._pending():
            return
        async with self._writing:
            for _ in range(2):  # a member whose TTL ran out writes its whole state, at once
                if not self._pending():
                    return
                await self._write()

    async def _write(self) -> None:
        """Write the changed pairs' counts, or the whole state when ``rewrite`` is set, and refresh the
        member's TTL (with nothing changed: a heartbeat). Under ``_writing``."""
        counts = self.counts
        replace = self.rewrite
        changed: dict[str, dict[str, int]] = {}
        dirty: set[tuple[str, str]] = set()
        if replace:
            for channel, users in counts.items():
                changed[channel] = dict(users)
            self.rewrite = False  # what changes from now on is marked, and written next
        else:
            dirty, self.dirty = self.dirty, set()
            for channel, user in dirty:
                held = counts.get(channel)
                changed.setdefault(channel, {})[user] = held.get(user, 0) if held is not None else 0
        backend, member = self.hub.backend, self.member
        self.written = True
        try:
            live = await self.hub.call(
                "presence_write", lambda: backend.presence_write(member, changed, TTL, replace=replace)
            )
        except BaseException:
            if replace:
                self.rewrite = True
                self.dirty.clear()
            elif not self.rewrite:
                self._mark(dirty)  # written at the next flush
            raise
        if not live:  # its TTL ran out (what is left of its records may be partly gone): its whole state
            self.rewrite = True
            self.dirty.clear()

    async def _leave(self) -> None:
        """Remove every record of the member (under ``_writing``): what it holds later is written whole."""
        self.rewrite = True
        self.dirty.clear()
        await self.hub.call("presence_leave", lambda: self.hub.backend.presence_leave(self.member))
        self.written = False

    async def aclose(self) -> None:
        """Stop the loop's task and remove the member's records from the engine (``hub.aclose``); an
        engine away leaves them to expire with their TTL. A stream that joins or leaves later starts the
        task again, writing the whole state."""
        scope = self._scope
        if scope is not None:
            scope.cancel()
            self._scope = None
            self._task = None
        if self.written:
            try:
                async with self._writing:  # a write the task had in flight ends first
                    await self._leave()
            except HubUnavailable:
                pass

    async def _run(self, scope: anyio.CancelScope) -> None:
        """Write changes in batches, beat every BEAT_EVERY; with no record left, remove the member and end."""
        clock = anyio.current_time
        beat_due = clock()
        try:
            with scope:
                while True:
                    if not self.counts:
                        if self.written:
                            try:
                                async with self._writing:
                                    await self._leave()
                            except HubUnavailable:
                                if not self.counts:
                                    return  # its records expire with their TTL
                                await anyio.sleep(RETRY_EVERY)
                                continue
                        if not self.counts:  # no stream joined meanwhile
                            return
                        continue
                    if not self._pending() and clock() < beat_due:
                        self._wakeup = anyio.Event()
                        with anyio.move_on_after(beat_due - clock()):
                            await self._wakeup.wait()
                        continue
                    if self.delay and self._pending():
                        await anyio.sleep(self.delay)  # more changes come in the same call
                        if not self.counts or (not self._pending() and clock() < beat_due):
                            continue  # every stream left, or a read's flush wrote it all meanwhile
                    try:
                        async with self._writing:
                            await self._write()
                    except HubUnavailable:
                        await anyio.sleep(RETRY_EVERY)
                        continue
                    beat_due = clock() + BEAT_EVERY
        finally:
            if self._scope is scope:
                self._scope = None
                self._task = None


def summed(records: list[dict[str, int]]) -> dict[str, int]:
    """Every member's records of one channel, summed per user."""
    total: dict[str, int] = {}
    for record in records:
        for user, count in record.items():
            total[user] = total.get(user, 0) + count
    return total
