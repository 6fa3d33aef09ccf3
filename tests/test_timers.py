"""The central timer service, on asyncio and trio."""

from __future__ import annotations

import anyio
import pytest

from ssesup.timers import TimerService

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


def test_many_cancelled_timers_are_swept_out_of_the_heap():
    async def main():
        service = TimerService()
        far = anyio.current_time() + 3600
        timers = [service.schedule(far + i, lambda at: None) for i in range(10_000)]
        soon = service.schedule(anyio.current_time() + 0.01, lambda at: None)
        for timer in timers[:9_000]:
            timer.cancel()
        await anyio.sleep(0.05)  # the driver wakes for ``soon`` and sweeps
        assert service.pending == 1_000
        assert len(service._heap) <= 2 * service.pending
        for timer in timers[9_000:]:
            timer.cancel()
        soon.cancel()
        await anyio.sleep(0.01)
        assert not service.running

    anyio.run(main)
