"""The few event-loop primitives ssesup takes from the backend itself rather than through anyio.

Owns: starting the loop-wide tasks the supervisor owns without a lifespan to host them, the clock, and
a cheap one-shot wake-up for the actor's hot path. Everything else goes through anyio.

* Loop-wide tasks: anyio cannot start a task that outlives the caller's task group, and ssesup works
  with zero configuration (no lifespan). So the timer driver is started with ``loop.create_task`` on
  asyncio and as a system task on trio; its owner keeps the handle and the task ends by itself.
* The clock: ``anyio.current_time()`` looks the backend up on every call; the actor reads the clock on
  every send, so each loop resolves it once.
* The wake-up: the sender and the producer hand work to each other once per chunk; a bare future costs
  a quarter of an ``anyio.Event`` on asyncio.
* One private name of asyncio, for want of a public one: ``asyncio.tasks._unregister_task``, so that a
  task whose generator swallows every cancellation does not hold ``asyncio.run``'s shutdown forever
  (:func:`abandon_task`). Looked up with ``getattr``: where a Python lacks it, the task stays counted.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from anyio.lowlevel import RunVar

T = TypeVar("T")


def loop_local(var: RunVar[T], make: Callable[[], T]) -> T:
    """The current event loop's value of ``var``, made with ``make()`` on first use (an anyio
    ``RunVar``: one per loop, gone with it)."""
    try:
        return var.get()
    except LookupError:
        value = make()
        var.set(value)
        return value


def running_trio() -> bool:
    """True when the current task runs under trio.

    Not through ``sniffio``: anyio no longer installs it, and ssesup does not need it on asyncio. Trio
    itself depends on sniffio, so where trio has been imported, sniffio is there to tell (it also
    answers right under trio-asyncio, where both loops run in one thread).
    """
    if "trio" not in sys.modules:
        return False
    import sniffio

    try:
        return sniffio.current_async_library() == "trio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


def loop_token() -> object:
    """The running event loop itself (asyncio's loop, trio's token): the same object for every call on
    one loop, compared with ``is``."""
    if running_trio():
        import trio

        return trio.lowlevel.current_trio_token()
    return asyncio.get_running_loop()


def spawn_owned(fn: Callable[[], Coroutine[Any, Any, None]]) -> object:
    """Start ``fn()`` as a loop-wide task; return its handle (keep it: the owner owns the task)."""
    if running_trio():
        import trio

        trio.lowlevel.spawn_system_task(fn)
        return fn
    return asyncio.get_running_loop().create_task(fn())


class LoopPrimitives:
    """The clock, the wake-up and the thread-safe call of one event loop, and (asyncio only) its own
    task factory.

    ``create_task`` is asyncio's: a task whose cancellation is delivered once (edge-triggered), so a
    generator cancelled in it can still await its cleanup. Trio has no such task (``None``): there,
    cancellation is level-triggered by design.
    """

    __slots__ = ("call_soon_threadsafe", "clock", "create_task", "wakeup")

    def __init__(self) -> None:
        if running_trio():
            import trio

            self.clock: Callable[[], float] = trio.current_time
            self.wakeup: Callable[[], Any] = trio.Event
            self.create_task: Callable[..., asyncio.Task[Any]] | None = None
            self.call_soon_threadsafe: Callable[..., Any] = trio.lowlevel.current_trio_token().run_sync_soon
        else:
            loop = asyncio.get_running_loop()
            self.clock = loop.time
            self.wakeup = loop.create_future
            self.create_task = loop.create_task
            self.call_soon_threadsafe = loop.call_soon_threadsafe


def abandon_task(task: asyncio.Task[Any]) -> None:
    """Stop counting ``task`` among the loop's tasks, so that the loop's shutdown does not wait for it.

    For a task that refuses to end (a generator whose cleanup swallows every cancellation): ``asyncio.run``
    cancels and awaits every task it knows before it closes the loop, and would wait forever.
    """
    unregister = getattr(asyncio.tasks, "_unregister_task", None)
    if unregister is not None:
        unregister(task)


async def wait(wakeup: Any) -> None:
    """Wait for a wake-up made by ``LoopPrimitives.wakeup``."""
    if isinstance(wakeup, asyncio.Future):
        await wakeup
    else:
        await wakeup.wait()


def wake(wakeup: Any) -> None:
    """Wake whoever waits on ``wakeup`` (at most once)."""
    if isinstance(wakeup, asyncio.Future):
        if not wakeup.done():
            wakeup.set_result(None)
    else:
        wakeup.set()
