"""Presence: who has streams open on a channel, across every process of the hub's engine.

Owns: one event loop's records (:class:`LoopPresence`: channel -> user -> open streams of this loop),
the task that writes what changed to the engine in batches and refreshes the loop's records with one
heartbeat, and summing the engine's answer. Does not own storage (the engines' ``presence_*`` methods)
or who is a stream's user (``ssesup.identity``).

Each event loop is one member of the engine's presence (a worker process has one loop): its records
live in the engine with a time to live (TTL), refreshed by one heartbeat per member every BEAT_EVERY
seconds, whatever the number of its streams. A stream's join and leave cost O(1) here (counts in two
dicts, the channel marked as changed); what changed goes to the engine at most FLUSH_DELAY later, many
changes in one call. So a member that dies without cleaning up (SIGKILL, the OOM killer) drops out of
every answer within TTL seconds of its last heartbeat (at most TTL after it died), and one that ends in
order removes its records when its last identified stream leaves.

Bounded: a loop keeps a record per (channel, user) of its live streams only; the engine keeps one
record per member and channel with streams (Redis: one hash per member, expiring with its TTL, and one
sorted set of members by the time they expire).
"""

from __future__ import annotations

import secrets
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


class LoopPresence:
    """One hub's presence records of one event loop, and the task that writes them to the engine."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.member = f"{process_token()}.{secrets.token_hex(4)}"
        self.counts: dict[str, dict[str, int]] = {}
        self.dirty: set[str] = set()
        self.streams = 0  # identified subscriptions of the loop counted here
        self.written = False  # the engine holds records of this member
        self.delay = FLUSH_DELAY if hub.backend.shared else 0.0
        self._wakeup = anyio.Event()
        self._task: object = None
        # One write at a time: two in flight (the task's and a read's flush) could land out of order and
        # leave an older snapshot of a channel in the engine.
        self._writing = anyio.Lock()

    def join(self, channels: tuple[str, ...], user: str) -> None:
        """A subscription of ``user`` to ``channels`` opened."""
        counts, dirty = self.counts, self.dirty
        added = 0
        for channel in channels:
            users = counts.get(channel)
            if users is None:
                users = counts[channel] = {}
            count = users.get(user, 0)
            added += count == 0
            users[user] = count + 1
            dirty.add(channel)
        self.streams += 1
        self.hub.counters.presence(added, 1)
        self._changed()

    def leave(self, channels: tuple[str, ...], user: str) -> None:
        """A subscription of ``user`` to ``channels`` ended."""
        counts, dirty = self.counts, self.dirty
        removed = 0
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
            dirty.add(channel)
        self.streams -= 1
        self.hub.counters.presence(-removed, -1)
        self._changed()

    def _changed(self) -> None:
        if self._task is None:
            self._wakeup = anyio.Event()
            self._task = spawn_owned(self._run)
        else:
            self._wakeup.set()

    async def flush(self) -> None:
        """Write what changed now (a presence read on this loop sees this loop's own changes)."""
        if not self.dirty:
            return
        async with self._writing:
            await self._write()

    async def _write(self, heartbeat: bool = False) -> None:
        """Write the changed channels' records (under ``_writing``); with none, a heartbeat if asked."""
        if not self.dirty and not heartbeat:
            return
        changed = {channel: dict(self.counts.get(channel, {})) for channel in self.dirty}
        self.dirty.clear()
        try:
            await self.hub.call("presence_write", lambda: self.hub.backend.presence_write(self.member, changed, TTL))
        except BaseException:
            self.dirty.update(changed)  # written at the next flush
            raise
        self.written = True

    async def _run(self) -> None:
        """Write changes in batches, beat every BEAT_EVERY; with no record left, remove the member and end."""
        clock = anyio.current_time
        beat_due = clock()
        try:
            while True:
                if not self.counts and not self.dirty:
                    if self.written:
                        async with self._writing:
                            await self.hub.call("presence_leave", lambda: self.hub.backend.presence_leave(self.member))
                        self.written = False
                    if not self.counts:  # no stream joined meanwhile
                        return
                    self.dirty.update(self.counts)
                    continue
                if not self.dirty:
                    self._wakeup = anyio.Event()
                    with anyio.move_on_after(max(0.0, beat_due - clock())):
                        await self._wakeup.wait()
                if self.dirty and self.delay:
                    await anyio.sleep(self.delay)  # more changes come in the same call
                try:
                    if self.dirty or clock() >= beat_due:
                        async with self._writing:
                            await self._write(heartbeat=True)
                    else:
                        continue
                except HubUnavailable:
                    await anyio.sleep(RETRY_EVERY)
                    continue
                beat_due = clock() + BEAT_EVERY
        except HubUnavailable:
            pass  # removing the member failed: its records expire with their TTL
        finally:
            self._task = None


def summed(records: list[dict[str, int]]) -> dict[str, int]:
    """Every member's records of one channel, summed per user."""
    total: dict[str, int] = {}
    for record in records:
        for user, count in record.items():
            total[user] = total.get(user, 0) + count
    return total
