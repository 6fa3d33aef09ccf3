"""The central timer service: one heap of deadlines per event loop, driven by one task.

Owns: deadlines and the single task that waits for the earliest of them. Does not own: what a
deadline means. A callback is synchronous, must not do I/O, and returns the next deadline it wants
(or ``None``); ping ticks and send deadlines are written that way by the actor, so a stream costs one
heap entry, not one sleeping task per concern.

The driver task exists only while there are deadlines: it starts with the first one and ends when the
heap is empty, so a loop with no live streams has no task of ours.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import anyio
import structlog

from ssesup import logs
from ssesup._loop import spawn_owned

log = structlog.get_logger("ssesup.timers")

TimerCallback = Callable[[float], "float | None"]

# Deadlines this close together fire in one wake-up of the driver.
RESOLUTION = 0.05


class Timer:
    """A handle on one scheduled callback."""

    __slots__ = ("callback", "cancelled", "deadline", "in_heap", "service")

    def __init__(self, service: TimerService, deadline: float, callback: TimerCallback) -> None:
        self.service = service
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        self.in_heap = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.service._forget(self)


class TimerService:
    """A heap of :class:`Timer` and the one task that fires them. One per event loop."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._live = 0
        self._cancelled_in_heap = 0
        self._sleep_scope: anyio.CancelScope | None = None
        self._driver: object | None = None

    @property
    def pending(self) -> int:
        """Timers scheduled and not yet fired or cancelled."""
        return self._live

    @property
    def running(self) -> bool:
        return self._driver is not None

    def schedule(self, deadline: float, callback: TimerCallback) -> Timer:
        timer = Timer(self, deadline, callback)
        self._live += 1
        self._push(timer)
        return timer

    def _forget(self, timer: Timer) -> None:
        """One timer fewer; with none left, wake the driver so that it ends now."""
        self._live -= 1
        if timer.in_heap:
            self._cancelled_in_heap += 1
        if self._live == 0 and self._sleep_scope is not None:
            self._sleep_scope.cancel()

    def _push(self, timer: Timer) -> None:
        timer.in_heap = True
        heapq.heappush(self._heap, (timer.deadline, next(self._seq), timer))
        if self._driver is None:
            self._driver = spawn_owned(self._drive)
        elif self._sleep_scope is not None and timer.deadline < self._sleep_scope.deadline:
            self._sleep_scope.deadline = timer.deadline

    async def _drive(self) -> None:
        try:
            while self._drop_cancelled():
                with anyio.CancelScope(deadline=self._heap[0][0]) as scope:
                    self._sleep_scope = scope
                    await anyio.sleep_forever()
                self._sleep_scope = None
                self._fire_due(anyio.current_time() + RESOLUTION)
        finally:
            self._sleep_scope = None
            self._driver = None

    def _drop_cancelled(self) -> bool:
        """Drop cancelled timers from the top of the heap, and rebuild it when they are most of it."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            self._pop()
        if self._cancelled_in_heap > 64 and self._cancelled_in_heap > len(heap) // 2:
            for _, _, timer in heap:
                if timer.cancelled:
                    timer.in_heap = False
            self._heap = heap = [entry for entry in heap if not entry[2].cancelled]
            heapq.heapify(heap)
            self._cancelled_in_heap = 0
        return bool(heap)

    def _pop(self) -> Timer:
        _, _, timer = heapq.heappop(self._heap)
        timer.in_heap = False
        if timer.cancelled:
            self._cancelled_in_heap -= 1
        return timer

    def _fire_due(self, horizon: float) -> None:
        """Fire every timer due by ``horizon``. A timer fires at most once a pass, and is never put
        back closer than one resolution step from now: a callback that keeps asking for a past
        deadline costs a wake-up a step, it cannot spin the loop."""
        heap = self._heap
        now = anyio.current_time()
        again: list[Timer] = []
        while heap and heap[0][0] <= horizon:
            timer = self._pop()
            if timer.cancelled:
                continue
            try:
                next_deadline = timer.callback(now)
            except Exception:
                logs.exception("timer.callback_failed", logger=log)
                next_deadline = None
            if timer.cancelled:
                continue
            if next_deadline is None:
                timer.cancel()
            else:
                timer.deadline = max(next_deadline, now + RESOLUTION)
                again.append(timer)
        for timer in again:
            self._push(timer)
