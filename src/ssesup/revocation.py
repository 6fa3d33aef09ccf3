"""Revocation within this process: which event loops have streams with a user, and reaching them.

Owns: the registry of the loops' supervisions (of every supervisor) that have supervised streams with a
user now, telling the hub's watchers when a loop's identified streams change, and closing a user's
streams on every such loop of the process, each in its own loop's thread. Does not own the user index
of one loop (``LoopSupervision.users``, the supervisor's) or revocations from other processes (the
hub's ``!control`` channel, ``ssesup.hub.control``).

A supervision is registered only while it has streams with a user: a loop that ended (its streams with
it) is not, however many loops the process has run, so a revocation walks live loops only.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from ssesup import logs
from ssesup._loop import LoopPrimitives, loop_token
from ssesup.identity import check_user

if TYPE_CHECKING:
    from ssesup.supervisor import LoopSupervision

# The loops' supervisions (of every supervisor) that have streams with a user now: a revocation in this
# process reaches these. A supervision is here only while it has such streams, so a loop that ended (its
# streams with it) is not, however many loops the process has run.
with_users: set[LoopSupervision] = set()
registry_lock = threading.Lock()
# Told, on the loop, each time a stream with a user registers or leaves there: the hub follows
# revocations from other processes while the loop has such streams (identified_here()).
_identity_watchers: list[weakref.WeakMethod[Callable[[], None]]] = []
# How long a revocation waits for another loop (thread) of the process to answer.
OTHER_LOOP_TIMEOUT = 1.0


def watch_identified(callback: Callable[[], None]) -> None:
    """Call ``callback()`` (a bound method, held weakly) on a loop each time a stream with a user
    registers or leaves there; the callback reads :func:`identified_here` (a state, not an edge: a
    watcher that came late is right at the next stream)."""
    with registry_lock:
        _identity_watchers[:] = [ref for ref in _identity_watchers if ref() is not None]
        _identity_watchers.append(weakref.WeakMethod(callback))


def identified_here() -> bool:
    """Whether this event loop has supervised streams with a user now (any supervisor's)."""
    here = loop_token()
    with registry_lock:
        return any(live.token is here for live in with_users)


def identified_changed() -> None:
    for ref in tuple(_identity_watchers):
        callback = ref()
        if callback is not None:
            try:
                callback()
            except Exception:
                logs.exception("observer.failed", observer=type(callback).__qualname__, method="identified")


async def disconnect_everywhere(user: str) -> int:
    """End every supervised stream of ``user`` in this process, of every supervisor and event loop, with
    ``revoked``; how many were open."""
    check_user(user)
    with registry_lock:
        loops = list(with_users)
    return await close_user_on(loops, user)


def close_user_here(user: str) -> int:
    """End every supervised stream of ``user`` on this event loop (every supervisor's) with ``revoked``."""
    here = loop_token()
    with registry_lock:
        loops = [live for live in with_users if live.token is here]
    return sum(live.close_user(user) for live in loops)


async def close_user_on(loops: list[LoopSupervision], user: str) -> int:
    """``close_user(user)`` on each of ``loops``: this loop's at once, the others' through their own
    loop's thread-safe call (answered within OTHER_LOOP_TIMEOUT, or not counted)."""
    here = loop_token()
    closed = 0
    others = []
    for live in loops:
        if live.token is here:
            closed += live.close_user(user)
        elif live.users:  # read from another thread: at worst a loop asked for nothing
            others.append(live)
    if not others:
        return closed
    answers: list[int] = []
    answered = anyio.Event()
    back = LoopPrimitives().call_soon_threadsafe
    asked = 0

    def answer(count: int) -> None:
        answers.append(count)
        if len(answers) == asked:
            answered.set()

    for live in others:

        def there(live: LoopSupervision = live) -> None:
            count = live.close_user(user)
            with contextlib.suppress(RuntimeError):  # the asking loop has closed meanwhile
                back(answer, count)

        try:
            live.loop.call_soon_threadsafe(there)
        except RuntimeError:  # that loop has closed
            continue
        asked += 1
    if asked:
        with anyio.move_on_after(OTHER_LOOP_TIMEOUT):
            await answered.wait()
    return closed + sum(answers)
