"""The central timer service, on asyncio and trio."""

from __future__ import annotations

import math

import anyio
import pytest

from ssesup.timers import RESOLUTION, TimerService

backends = pytest.mark.parametrize("backend", ["asyncio", "trio"])


@backends
def test_timers_fire_in_deadline_order_and_reschedule_themselves(backend):
    async def main():
        service = TimerService()
        fired: list[str] = []
        now = anyio.current_time()
        ticks = iter(range(3))

        def repeating(at: float) -> float | None:
            fired.append(f"tick{next(ticks)}")
            return at + 0.02 if len(fired) < 4 else None

        service.schedule(now + 0.05, lambda at: fired.append("late"))
        service.schedule(now + 0.01, repeating)
        with anyio.fail_after(5):
            while len(fired) < 4:  # tick0, tick1, late and tick2, whose timer then ends
                await anyio.sleep(0.01)
        assert fired[:1] == ["tick0"] and "late" in fired
        assert fired.index("late") > fired.index("tick0")
        assert service.pending == 0
        await anyio.sleep(0)
        assert not service.running

    anyio.run(main, backend=backend)


@backends
def test_the_driver_ends_as_soon_as_the_last_timer_is_cancelled(backend):
    async def main():
        service = TimerService()
        timer = service.schedule(anyio.current_time() + 3600, lambda at: None)
        await anyio.sleep(0.01)
        assert service.running
        timer.cancel()
        await anyio.sleep(0.01)
        assert not service.running and service.pending == 0

    anyio.run(main, backend=backend)


def test_a_cancelled_timer_leaves_its_step_at_once():
    async def main():
        service = TimerService()
        far = anyio.current_time() + 3600
        timers = [service.schedule(far + i / 100, lambda at: None) for i in range(10_000)]
        service.schedule(anyio.current_time() + 0.01, lambda at: None)  # wakes the driver
        for timer in timers[:9_000]:
            timer.cancel()
        assert service.pending == 1_001 and service.held == 1_001  # nothing of the cancelled ones is kept
        await anyio.sleep(0.1)  # the driver wakes for ``soon``
        assert service.pending == 1_000
        for timer in timers[9_000:]:
            timer.cancel()
        await anyio.sleep(0.01)
        assert not service.running and service.held == 0

    anyio.run(main)


@backends
def test_a_timer_never_fires_before_its_deadline_and_a_step_fires_in_one_wake_up(backend):
    """Deadlines are kept in steps of RESOLUTION: each fires at its deadline or up to a step later,
    never earlier, and the deadlines of one step fire together, in the order of their deadlines."""

    async def main():
        service = TimerService()
        start = anyio.current_time()
        fired: list[tuple[int, float, float]] = []
        deadlines = [start + 0.1 + i * RESOLUTION / 7 for i in range(20)]
        for index, deadline in reversed(list(enumerate(deadlines))):
            service.schedule(deadline, lambda at, index=index, deadline=deadline: fired.append((index, deadline, at)))
        with anyio.fail_after(5):
            while len(fired) < len(deadlines):
                await anyio.sleep(0.01)
        for _, deadline, at in fired:
            assert deadline <= at
        passes = {at for _, _, at in fired}
        assert len(passes) <= math.ceil((deadlines[-1] - deadlines[0]) / RESOLUTION) + 1
        assert [index for index, _, _ in fired] == sorted(index for index, _, _ in fired)

    anyio.run(main, backend=backend)
