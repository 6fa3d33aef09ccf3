"""The central timer service: the deadlines of one event loop in steps of :data:`RESOLUTION`, driven by
one task.

Owns: deadlines and the single task that waits for the earliest of them. Does not own: what a
deadline means. A callback is synchronous, must not do I/O, and returns the next deadline it wants
(or ``None``); ping ticks and send deadlines are written that way by the actor, so a stream costs one
entry, not one sleeping task per concern.

A timer fires at its deadline or up to one step after it, never before: the deadlines of one step
(``RESOLUTION`` seconds of the loop's clock) are kept in one list and fired together, in the order of
their deadlines, when the step has passed. So ten thousand streams pinged every 15 s cost the loop one
wake-up per step, not one per deadline; putting a timer in its step and taking it out are a list's
append and removal (a step holds a few dozen), where a heap of every deadline cost a dozen tuple
comparisons each way; and a timer never fires early (a stream checked before its ping was due was
looked at twice per ping, its socket read both times).

The driver task exists only while there are deadlines: it starts with the first one and ends when none
is left, so a loop with no live streams has no task of ours.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import operator
from collections.abc import Callable

import anyio
import structlog

from ssesup import logs
from ssesup._loop import spawn_owned

log = structlog.get_logger("ssesup.timers")

TimerCallback = Callable[[float], "float | None"]

# The step: deadlines within one fire in one wake-up of the driver, at most this late.
RESOLUTION = 0.05
_deadline = operator.attrgetter("deadline")


class Timer:
    """A handle on one scheduled callback."""

    __slots__ = ("callback", "cancelled", "deadline", "service", "step")

    def __init__(self, service: TimerService, deadline: float, callback: TimerCallback) -> None:
        self.service = service
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        self.step: int | None = None  # the step whose list holds it (None: none, its deadline infinite)

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.service._forget(self)


class TimerService:
    """The steps of :class:`Timer` and the one task that fires them. One per event loop."""

    def __init__(self) -> None:
        self._steps: dict[int, list[Timer]] = {}  # step -> its timers, in the order they were put there
        self._order: list[int] = []  # a heap of the steps that have (or had) timers
        self._live = 0
        self._sleep_scope: anyio.CancelScope | None = None
        self._driver: object | None = None

    @property
    def pending(self) -> int:
        """Timers scheduled and not yet fired or cancelled."""
        return self._live

    @property
    def held(self) -> int:
        """Timers in the steps (cancelled ones leave them at once)."""
        return sum(len(timers) for timers in self._steps.values())

    @property
    def running(self) -> bool:
        return self._driver is not None

    def schedule(self, deadline: float, callback: TimerCallback) -> Timer:
        timer = Timer(self, deadline, callback)
        self._live += 1
        self._put(timer)
        if self._driver is None:
            self._driver = spawn_owned(self._drive)
        return timer

    def _forget(self, timer: Timer) -> None:
        """One timer fewer: out of its step now (its callback, and what it holds, are not kept); with
        none left, wake the driver so that it ends now."""
        self._live -= 1
        step = timer.step
        if step is not None:
            timer.step = None
            timers = self._steps.get(step)
            if timers is not None:
                # Not there when its step is being fired (a callback cancelled it): skipped there.
                with contextlib.suppress(ValueError):
                    timers.remove(timer)
        if self._live == 0 and self._sleep_scope is not None:
            self._sleep_scope.cancel()

    def _put(self, timer: Timer) -> None:
        deadline = timer.deadline
        if deadline == math.inf:
            return  # never fires; counted until cancelled
        step = timer.step = int(deadline // RESOLUTION)
        timers = self._steps.get(step)
        if timers is None:
            self._steps[step] = [timer]
            heapq.heappush(self._order, step)
            scope = self._sleep_scope
            wake_at = (step + 1) * RESOLUTION
            if scope is not None and wake_at < scope.deadline:
                scope.deadline = wake_at
        else:
            timers.append(timer)

    def _next_wake(self) -> float:
        """When the earliest step with timers has passed (``math.inf``: no step holds any)."""
        order, steps = self._order, self._steps
        while order:
            step = order[0]
            if steps.get(step):
                return (step + 1) * RESOLUTION
            heapq.heappop(order)  # emptied by cancellations
            steps.pop(step, None)
        return math.inf

    async def _drive(self) -> None:
        try:
            while self._live:
                with anyio.CancelScope(deadline=self._next_wake()) as scope:
                    self._sleep_scope = scope
                    await anyio.sleep_forever()
                self._sleep_scope = None
                self._fire_due(anyio.current_time())
        finally:
            self._sleep_scope = None
            self._driver = None
            if not self._live:
                self._steps.clear()
                self._order.clear()

    def _fire_due(self, now: float) -> None:
        """Fire the timers of every step that has passed by ``now``, each at most once a pass: a callback
        that asks for a deadline already past is fired again at the next pass (the step after now's),
        so it costs a wake-up a step, it cannot spin the loop."""
        order, steps = self._order, self._steps
        due = now // RESOLUTION  # the steps before this one have passed
        again: list[Timer] = []
        while order and order[0] < due:
            timers = steps.pop(heapq.heappop(order), None)
            if not timers:
                continue
            if len(timers) > 1:
                timers.sort(key=_deadline)  # stable: equal deadlines in the order they were scheduled
            for timer in timers:
                if timer.cancelled:
                    continue
                timer.step = None
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
                    timer.deadline = max(next_deadline, now)
                    again.append(timer)
        for timer in again:
            self._put(timer)
