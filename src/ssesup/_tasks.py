"""Starting the few loop-wide tasks the supervisor owns, without a lifespan to host them.

anyio has no way to start a task that outlives the caller's task group, and ssesup must work with zero
configuration (no lifespan). So the loop-wide tasks (the timer driver) are started here with the
backend's own primitive: ``loop.create_task`` on asyncio, a system task on trio. Their owner keeps the
handle, and each such task ends by itself when its work is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import sniffio


def spawn_owned(fn: Callable[[], Awaitable[None]]) -> object:
    """Start ``fn()`` as a loop-wide task; return its handle (keep it: the owner owns the task)."""
    if sniffio.current_async_library() == "trio":
        import trio

        trio.lowlevel.spawn_system_task(fn)
        return fn
    return asyncio.get_running_loop().create_task(fn())  # type: ignore[arg-type]
