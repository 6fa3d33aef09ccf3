"""Control messages between the processes of one engine: revocations, through the hub's engine itself.

Owns: the internal channel ``!control`` and what travels on it (``revoke``: end a user's streams), the
process's token (so that a process skips what it published itself: it acted at once), and each event
loop's follower of the channel (:class:`LoopControl`). Does not own what a revocation does (the
supervisor's ``close_user``) or storage and fan-out (the engine, the loop's reader).

A loop follows ``!control`` only while it has supervised streams with a user (the supervisor tells the
hub when the first registers and the last leaves): a subscription of the loop like any other, so on
Redis it adds no connection (the loop's reader reads it with every other channel, woken by the same log
of changes) and a revocation reaches every worker and host in a round trip. The follower is a loop-wide
task, owned like the hub's reader: started with the first such stream, cancelled with the last (or by
``hub.aclose``), so a drain, which ends the streams, ends it too, and a loop with no identified stream
has no task for it. An engine that is not shared (memory: this process) needs no follower:
``hub.disconnect`` reaches every loop of the process directly.

A stream that opens while a revocation of its user is in flight may miss it (its loop's follower joins
after the message): the route's own check of the credential, which refuses a revoked one, is what
stops new streams.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import TYPE_CHECKING

import anyio
import structlog

from ssesup._loop import spawn_owned
from ssesup.events import Event
from ssesup.revocation import close_user_here, identified_here

if TYPE_CHECKING:
    from ssesup.hub import Hub

log = structlog.get_logger("ssesup")

CHANNEL = "control"
REVOKE = "revoke"
# A follower that lost its subscription (its mailbox overflowed, the engine failed) joins again after
# this long, resuming after the last message it took.
RETRY_AFTER = 0.2

_token = ("", 0)


def process_token() -> str:
    """A random token of this process (made again after a fork: each worker has its own)."""
    global _token
    token, pid = _token
    if pid != os.getpid():
        token, pid = secrets.token_hex(8), os.getpid()
        _token = (token, pid)
    return token


def revoke_message(user: str) -> Event:
    return Event.json({"user": user, "origin": process_token()}, event=REVOKE)


class LoopControl:
    """One hub's follower of ``!control`` on one event loop, while the loop has streams with a user."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.scope: anyio.CancelScope | None = None
        self.task: object = None
        self.last_id: str | None = None
        self._ended = anyio.Event()  # set when the follower started last has ended

    def sync(self) -> None:
        """A stream with a user registered or left on this loop: follow ``!control`` while the loop has
        any (whatever supervisor's), stop with the last."""
        follow = identified_here()
        if follow and self.scope is None:
            scope = self.scope = anyio.CancelScope()
            ended = self._ended = anyio.Event()
            self.task = spawn_owned(lambda: self._follow(scope, ended))
        elif not follow and self.scope is not None:
            self._stop()

    async def aclose(self) -> None:
        """Stop the follower and wait (a second at most) for it to leave its subscription
        (``hub.aclose``); the next stream with a user that registers starts it again."""
        if self.scope is not None:
            self._stop()
            with anyio.move_on_after(1.0):
                await self._ended.wait()

    def _stop(self) -> None:
        if self.scope is not None:
            self.scope.cancel()
        self.scope = None
        self.last_id = None  # a follower started later joins at the channel's end

    async def _follow(self, scope: anyio.CancelScope, ended: anyio.Event) -> None:
        try:
            with scope:
                while True:
                    try:
                        async with self.hub.subscribe_internal(CHANNEL, last_event_id=self.last_id) as messages:
                            async for message in messages:
                                self.last_id = message.id
                                if message.event == REVOKE and message.data is not None:
                                    self._revoke(message.data)
                    except Exception as exc:
                        # Its mailbox overflowed (StreamEnding), or something unforeseen: join again.
                        log.warning("hub.control_rejoined", error=f"{type(exc).__name__}: {exc}"[:200])
                    await anyio.sleep(RETRY_AFTER)
        finally:
            if self.scope is scope:
                self.scope = None
            ended.set()

    def _revoke(self, data: str) -> None:
        try:
            message = json.loads(data)
            user, origin = message["user"], message["origin"]
        except (ValueError, KeyError, TypeError):
            return
        if origin != process_token() and isinstance(user, str):
            close_user_here(user)
