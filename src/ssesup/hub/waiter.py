"""A subscriber's wake-up on asyncio: one object for the subscription's life, and a fan-out that wakes
many subscribers with one callback of the loop.

Owns: :class:`Waiter`, a Future-compatible object (the protocol asyncio's tasks accept for third-party
futures: ``_asyncio_future_blocking``, ``add_done_callback``, ``result``, ``cancel``, ``_loop``) that
one task at a time awaits and that is armed again for the next wait, and :func:`ring`, which wakes a list
of them in order within one callback of the loop (:func:`ring_soon` schedules it). Does not own what a
subscriber waits for (its mailbox, ``ssesup.hub.subscription``) or who is woken (``ssesup.hub.fanout``).

Why not a future per wait: a publish to N subscribers made N futures (each alive until the next
publish) and scheduled N callbacks of the loop at once. Both are objects the garbage collector tracks,
so every publish to 20,000 subscribers set off about 50 collections of the youngest generation, which
promoted the waiting futures until the oldest generation filled and was collected whole: at 20,000
subscribers, more than half of the hub's CPU was the collector. A waiter is made once per
subscription, and :func:`ring` runs the tasks' own wake-ups one after the other (as the loop runs
ready callbacks), so a delivery allocates nothing that outlives it.

Cancellation is the task's own: ``Task.cancel`` cancels the waiter it waits on, which wakes that task
alone with ``CancelledError`` (one waiter is never shared by two tasks).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from typing import Any

# A waiter's states. IDLE: nobody waits. ARMED: a task waits (or is about to). SET: woken, the task has
# not run yet. CANCELLED: the waiting task was cancelled, it has not run yet.
IDLE, ARMED, SET, CANCELLED = range(4)


class Waiter:
    """A reusable one-shot wake-up: ``await waiter`` suspends until :meth:`set` (or :func:`ring`).

    Awaited by one task at a time; once that task has resumed, the waiter can be awaited again.
    """

    __slots__ = ("_asyncio_future_blocking", "_callback", "_context", "_loop", "_message", "_state", "result")

    result: Callable[[], None]
    """What the woken task calls (asyncio's ``Future.result``): ``None`` once woken, ``CancelledError``
    once cancelled, ``InvalidStateError`` before. Kept per state rather than a method that reads the
    state: a woken waiter's is ``NoneType`` itself, which returns ``None`` with no Python call."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._state = IDLE
        self.result = _not_woken
        self._callback: Callable[[Any], object] | None = None
        self._context: contextvars.Context | None = None
        self._message: Any = None
        self._asyncio_future_blocking = False

    # -- awaiting (the waiting task's side) ----------------------------------------------------------

    def __await__(self) -> Waiter:
        if self._state != IDLE:
            raise RuntimeError("a subscriber's waiter is awaited by one task at a time")
        self._state = ARMED
        return self

    def __iter__(self) -> Waiter:
        return self

    def __next__(self) -> Waiter:
        state = self._state
        if state == ARMED:
            self._asyncio_future_blocking = True
            return self  # to the task, which waits for its callback
        # Resumed: ready for the next wait (whoever woke it took its callback; the task reset the flag).
        self._state = IDLE
        self.result = _not_woken
        if state == CANCELLED:
            raise self._cancelled_error()
        raise StopIteration

    def send(self, value: object) -> Waiter:
        return self.__next__()

    def throw(self, error: Any, *args: Any) -> Waiter:
        self._rearm()
        if isinstance(error, BaseException):
            raise error
        raise error(*args[:1])

    def close(self) -> None:
        self._rearm()

    def _raise_cancelled(self) -> None:
        raise self._cancelled_error()

    def _cancelled_error(self) -> asyncio.CancelledError:
        return asyncio.CancelledError(*(() if self._message is None else (self._message,)))

    def _rearm(self) -> None:
        self._state = IDLE
        self.result = _not_woken
        self._callback = self._context = self._message = None
        self._asyncio_future_blocking = False

    # -- the Future protocol (what the task calls) ---------------------------------------------------

    # No get_loop(): a task takes the loop of a future without one from its ``_loop`` (asyncio's
    # ``futures._get_loop``, and the C task alike), with no call per wait.

    def add_done_callback(self, fn: Callable[[Any], object], *, context: contextvars.Context | None = None) -> None:
        self._callback = fn
        self._context = context if context is not None else contextvars.copy_context()
        if self._state == SET or self._state == CANCELLED:  # woken before the task looked
            self._schedule()

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        if self._callback != fn:  # a task's wake-up is a new bound method each time: equal, not identical
            return 0
        self._callback = self._context = None
        return 1

    def done(self) -> bool:
        return self._state == SET or self._state == CANCELLED

    def cancelled(self) -> bool:
        return self._state == CANCELLED

    def exception(self) -> BaseException | None:
        self.result()
        return None

    def cancel(self, msg: Any = None) -> bool:
        """The waiting task is cancelled: wake it (alone) with ``CancelledError``."""
        if self._state != ARMED:
            return False
        self._state = CANCELLED
        self._message = msg
        self.result = self._raise_cancelled
        if self._callback is not None:
            self._schedule()
        return True

    # -- waking (the hub's side) ---------------------------------------------------------------------

    def set(self) -> None:
        """Wake the waiting task at the loop's next step (nothing when no task waits)."""
        if self._state == ARMED:
            self._state = SET
            self.result = _WOKEN
            if self._callback is not None:
                self._schedule()

    def _schedule(self) -> None:
        callback, context = self._callback, self._context
        self._callback = self._context = None
        assert callback is not None
        self._loop.call_soon(callback, self, context=context)


_WOKEN = type(None)  # calling it returns None, in C: the result of a woken waiter


def _not_woken() -> None:
    raise asyncio.InvalidStateError("the waiter has not been woken")


def ring_soon(waiters: Sequence[Waiter]) -> None:
    """Wake ``waiters`` (of one loop) at the loop's next step, with one callback: :func:`ring`."""
    waiters[0]._loop.call_soon(ring, waiters)


def ring(waiters: Sequence[Waiter], start: int = 0) -> None:
    """Wake ``waiters`` in order within this callback of the loop (scheduled by :func:`ring_soon`).

    One callback for all of them instead of one per waiter. Should a task's step raise past the loop
    (``SystemExit``, ``KeyboardInterrupt``), the waiters after it are woken at the next step.
    """
    index = start
    try:
        for index in range(start, len(waiters)):
            waiter = waiters[index]  # its task's step runs here, as the loop would run it
            if waiter._state != ARMED:
                continue
            waiter._state = SET
            waiter.result = _WOKEN
            callback = waiter._callback
            if callback is None:  # the task has not looked yet: it will find the waiter done
                continue
            context = waiter._context
            waiter._callback = waiter._context = None
            context.run(callback, waiter)  # type: ignore[union-attr]  # set with the callback
    except BaseException:
        if index + 1 < len(waiters):
            waiters[index]._loop.call_soon(ring, waiters, index + 1)
        raise
