"""Sync generators and iterators, pulled in threads of ssesup's own.

Owns: running ``next()`` and ``close()`` of a stream's sync iterator in a daemon thread, under a
limiter of the supervisor's (``sync_threads`` pulls at once per event loop), and abandoning a pull
that blocks past its stream's end. Does not own: when the stream ends (the actor's machine) or what
the items mean (the encoder).

Why not the app's thread pool (``anyio.to_thread``, what Starlette uses): a generator that blocks
(``queue.get()`` with nothing to get) keeps its worker thread and its token of the app's shared
limiter; forty of them and every sync endpoint of the app waits, and anyio's worker threads are not
daemon threads, so the interpreter waits for them at exit and the process never ends. Here a pull that
is still blocked when its stream ends is abandoned: its token goes back at once, the stream
unregisters, and the thread (a daemon thread) closes the iterator itself when ``next()`` returns, if it
ever does. Abandoned threads are counted (:func:`abandoned_threads`) and logged.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import structlog

from ssesup import logs
from ssesup._loop import LoopPrimitives, wait, wake

log = structlog.get_logger("ssesup")

# A worker thread with nothing to do for this long ends.
IDLE_SECONDS = 10.0

_lock = threading.Lock()
_idle: collections.deque[_Worker] = collections.deque()
_abandoned = 0


_listeners: list[Callable[[int], None]] = []


def abandoned_threads() -> int:
    """Threads of this process still blocked in a sync generator whose stream has ended."""
    return _abandoned


def watch_abandoned(listener: Callable[[int], None]) -> None:
    """Call ``listener(delta)`` (from any thread) whenever :func:`abandoned_threads` changes: metrics."""
    _listeners.append(listener)


def _count_abandoned(delta: int) -> None:
    global _abandoned
    with _lock:
        _abandoned += delta
    for listener in _listeners:
        listener(delta)


class _Worker(threading.Thread):
    """One daemon thread that runs jobs handed to it, then waits (a while) for the next."""

    def __init__(self) -> None:
        super().__init__(name="ssesup sync generator", daemon=True)
        self._job: Callable[[], None] | None = None
        self._ready = threading.Condition(_lock)

    def hand(self, job: Callable[[], None]) -> None:
        """Run ``job`` in this (idle) thread. Called with ``_lock`` held."""
        self._job = job
        self._ready.notify()

    def run(self) -> None:
        with _lock:
            while True:
                job, self._job = self._job, None
                if job is None:
                    if not self._ready.wait(IDLE_SECONDS) and self._job is None:
                        _idle.remove(self)
                        return
                    continue
                _lock.release()
                try:
                    job()
                finally:
                    _lock.acquire()
                _idle.append(self)


def _run_in_thread(job: Callable[[], None]) -> None:
    with _lock:
        if _idle:
            _idle.pop().hand(job)
            return
    worker = _Worker()
    worker._job = job
    worker.start()


class SyncSource:
    """An async iterator over a sync iterator, each ``next()`` in a daemon thread of ssesup's own."""

    __slots__ = ("_abandoned", "_in_flight", "_iterator", "_limiter", "_loop", "_notify")

    def __init__(self, iterator: Iterator[Any], limiter: anyio.CapacityLimiter, loop: LoopPrimitives) -> None:
        self._iterator = iterator
        self._limiter = limiter
        self._loop = loop
        self._notify = loop.call_soon_threadsafe
        self._in_flight = False
        self._abandoned = False

    def __aiter__(self) -> SyncSource:
        return self

    async def __anext__(self) -> Any:
        async with self._limiter:
            done, outcome = await self._call(self._next)
        if done:
            raise StopAsyncIteration
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        """Close the iterator (its ``finally`` runs) in a thread; a pull still blocked is abandoned,
        and that thread closes the iterator when the pull returns."""
        if self._in_flight:
            self._abandon()
            return
        close = getattr(self._iterator, "close", None)
        if close is not None:
            _, outcome = await self._call(close)
            if isinstance(outcome, BaseException):
                raise outcome

    def _next(self) -> Any:
        return next(self._iterator)

    async def _call(self, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """Run ``fn`` in a thread; ``(exhausted, value or exception)``. Cancelled: the call is abandoned."""
        wakeup = self._loop.wakeup()
        result: list[tuple[bool, Any]] = []

        def job() -> None:
            try:
                result.append((False, fn()))
            except StopIteration:
                result.append((True, None))
            except BaseException as exc:  # handed to the loop, raised there
                result.append((False, exc))
            if self._abandoned:
                self._finish_abandoned()
            else:
                self._in_flight = False
                self._notify(wake, wakeup)

        self._in_flight = True
        _run_in_thread(job)
        try:
            await wait(wakeup)
        except BaseException:
            if self._in_flight:
                self._abandon()
            raise
        return result[0]

    def _abandon(self) -> None:
        if self._abandoned:
            return
        self._abandoned = True
        _count_abandoned(1)
        log.warning(
            "stream.sync_generator_abandoned",
            hint="a sync generator was still blocked when its stream ended; its thread closes it when it returns",
            abandoned_threads=_abandoned,
        )

    def _finish_abandoned(self) -> None:
        """In the abandoned thread, once the blocked call returned: close the iterator there."""
        close = getattr(self._iterator, "close", None)
        try:
            if close is not None:
                close()
        except Exception:
            logs.exception("stream.generator_close_failed")
        finally:
            _count_abandoned(-1)
