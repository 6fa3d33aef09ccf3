"""A drain and a process's end, seen by runs: the supervisor lets a run go on for the drain's grace, then
interrupts it (its source closed, ``end`` ``interrupted`` published); the drain is finished once the run
has ended; a run that completes within the grace completes; no run starts while the process drains; a
run whose event loop closes under it (no lifespan to hold the server) still publishes its end.
SIGTERM to a uvicorn process: tests/test_runs_processes.py."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from apps.runs_app import make_app
from servers import UvicornThread, wait_until
from ssesup import Hub, Supervisor
from ssesup.hub import RunRefused, RunStatus


def ends(events: list) -> list[str]:
    return [json.loads(event.data)["status"] for event in events if event.event == "end"]


async def ticks(cleaned: list[float] | None = None, count: int | None = None):
    try:
        i = 0
        while count is None or i < count:
            yield str(i)
            i += 1
            await anyio.sleep(0.02)
    finally:
        if cleaned is not None:
            cleaned.append(anyio.current_time())


def test_a_drain_lets_a_run_go_on_for_its_grace_then_interrupts_it_and_finishes_with_it():
    async def main() -> None:
        hub = Hub(metrics=False)
        supervisor = Supervisor(drain_on_signals=False, metrics=False)
        cleaned: list[float] = []
        run = await hub.start_run("long", ticks(cleaned), supervisor=supervisor)
        short = await hub.start_run("short", ticks(count=10), supervisor=supervisor)
        began = anyio.current_time()
        supervisor.begin_drain(grace=1.0)
        with pytest.raises(RunRefused):
            await hub.start_run("late", ticks(), supervisor=supervisor)
        assert await short.wait() is RunStatus.COMPLETED  # within the grace: it completes
        await anyio.sleep(0.4)
        assert run.status is None and not supervisor.loop_supervision.drained.is_set()
        events_before = run.events
        assert await run.wait() is RunStatus.INTERRUPTED
        interrupted = anyio.current_time() - began
        assert 0.95 <= interrupted < 1.0 + 0.5, interrupted
        assert run.events > events_before  # it went on publishing through the grace
        assert cleaned and cleaned[0] - began >= 0.95  # its finally ran, when it was interrupted
        await supervisor.loop_supervision.drained.wait()  # the drain finished with its last run
        status = supervisor.drain_status()
        assert status["done"] and status["duration"] < 1.0 + 0.5
        async with hub.subscribe("long") as viewer:
            got = [event async for event in viewer]
        assert ends(got) == ["interrupted"]
        assert [event.data for event in got[1:-1]] == [str(i) for i in range(run.events)]

    anyio.run(main)


def test_a_run_whose_event_loop_closes_under_it_publishes_end_interrupted():
    """No lifespan holds the server here (``lifespan="off"``): the server returns, ``asyncio.run`` cancels
    every task, and the run, cancelled, still closes its source and publishes its end."""
    hub = Hub(metrics=False)
    supervisor = Supervisor(drain_on_signals=False, metrics=False)
    with UvicornThread(make_app(hub, supervisor)) as server:
        assert httpx.post(f"{server.url}/runs/cut", params={"tokens": 100_000}).status_code == 201
        wait_until(lambda: httpx.get(f"{server.url}/runs/cut/status").json()["status"] == "active")

    async def read() -> list:
        async with hub.subscribe("cut") as viewer:
            return [event async for event in viewer]

    got = anyio.run(read)
    assert ends(got) == ["interrupted"]
    assert [event.data for event in got[1:-1]] == [str(i) for i in range(len(got) - 2)]


def test_on_trio_a_run_completes_is_cancelled_and_a_drain_interrupts_it():
    async def main() -> None:
        hub = Hub(metrics=False)
        supervisor = Supervisor(drain_on_signals=False, metrics=False)
        done = await hub.start_run("done", ticks(count=20), supervisor=supervisor)
        assert await done.wait() is RunStatus.COMPLETED and done.events == 20
        cleaned: list[float] = []
        cancelled = await hub.start_run("cancelled", ticks(cleaned), supervisor=supervisor)
        await anyio.sleep(0.1)
        assert await hub.cancel_run("cancelled")
        assert await cancelled.wait() is RunStatus.CANCELLED and cleaned
        async with hub.subscribe("cancelled") as viewer:
            assert ends([event async for event in viewer]) == ["cancelled"]
        drained = await hub.start_run("drained", ticks(), supervisor=supervisor)
        supervisor.begin_drain(grace=0.3)
        assert await drained.wait() is RunStatus.INTERRUPTED
        await supervisor.loop_supervision.drained.wait()

    anyio.run(main, backend="trio")
