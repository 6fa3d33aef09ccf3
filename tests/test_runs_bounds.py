"""What a run's channel keeps, in memory and on Redis: the whole run while it goes on (the hub's age bound
does not apply) and ``run_ttl`` after its end, then nothing; within ``run_events`` and ``run_bytes``
per run, past which the oldest events are dropped and a viewer from the start gets an ``expired`` gap
first; bounded by runs x bound with many runs at once."""

from __future__ import annotations

import json

import anyio
import pytest
import redis

from ssesup import Event, Hub
from ssesup.hub import RunStatus
from ssesup.hub.memory import MemoryBackend


@pytest.fixture(params=["memory", "redis"])
def hub_url(request):
    return None if request.param == "memory" else request.getfixturevalue("redis_url")


async def numbered(count: int, every: float = 0.0, size: int = 0):
    for i in range(count):
        yield Event(f"{i}".ljust(size, "."), event="token") if size else Event(str(i), event="token")
        if every:
            await anyio.sleep(every)


async def view(hub: Hub, channel: str) -> list[Event]:
    async with hub.subscribe(channel) as viewer:
        return [event async for event in viewer]


def tokens(events: list[Event]) -> list[int]:
    return [int(event.data.rstrip(".")) for event in events if event.event == "token"]


def test_past_its_events_bound_a_run_drops_its_oldest_and_a_viewer_from_the_start_hears_of_it(hub_url):
    async def main() -> None:
        hub = Hub(hub_url, metrics=False, run_events=50)
        run = await hub.start_run("long", numbered(120))
        assert await run.wait() is RunStatus.COMPLETED
        got = await view(hub, "long")
        gap = got[0]
        assert gap.event == "gap" and json.loads(gap.data)["reason"] == "expired"
        assert json.loads(gap.data)["requested"] is None  # it asked for no id: from the run's start
        assert tokens(got) == list(range(71, 120))  # the newest 50 events: 49 tokens and the end
        assert got[-1].event == "end" and json.loads(got[-1].data) == {"status": "completed"}
        small = await hub.start_run("small", numbered(30), max_events=10)  # a run's own bound
        await small.wait()
        assert tokens(await view(hub, "small")) == list(range(21, 30))
        await hub.aclose()  # its connections closed on its loop, not at exit

    anyio.run(main)


def test_past_its_bytes_bound_a_run_drops_its_oldest(hub_url):
    async def main() -> None:
        hub = Hub(hub_url, metrics=False, run_bytes=2000)
        run = await hub.start_run("large", numbered(100, size=100))
        await run.wait()
        got = await view(hub, "large")
        kept = tokens(got)
        assert kept == list(range(kept[0], 100)) and 10 <= len(kept) < 20  # about 2000 bytes of 100-byte events
        assert got[0].event == "gap" and got[-1].event == "end"
        await hub.aclose()  # its connections closed on its loop, not at exit

    anyio.run(main)


def test_a_run_is_kept_whole_while_it_goes_on_past_the_hubs_age_bound_and_run_ttl_after_its_end(hub_url):
    async def main() -> None:
        hub = Hub(hub_url, metrics=False, history_ttl=0.5, run_ttl=1.5)
        run = await hub.start_run("slow", numbered(60, every=0.025))  # 1.5 s: three times the age bound
        assert await run.wait() is RunStatus.COMPLETED
        assert tokens(await view(hub, "slow")) == list(range(60))  # none aged out while it went on
        await anyio.sleep(0.5)
        assert await hub.run_status("slow") == "completed"
        assert tokens(await view(hub, "slow")) == list(range(60))  # kept after the end, within run_ttl
        await anyio.sleep(1.5)
        assert await hub.run_status("slow") is None  # forgotten
        if isinstance(hub.backend, MemoryBackend):
            assert hub.backend.channels() == 0
        else:
            client = redis.Redis.from_url(hub_url)
            deadline = anyio.current_time() + 5
            while client.exists("ssesup:ch:slow", "ssesup:run:slow") and anyio.current_time() < deadline:
                await anyio.sleep(0.1)  # Redis expires keys as it samples them
            assert client.exists("ssesup:ch:slow", "ssesup:run:slow") == 0
            client.close()
        await hub.aclose()  # its connections closed on its loop, not at exit

    anyio.run(main)


def test_many_runs_at_once_keep_at_most_runs_times_the_bound(hub_url):
    runs, events, bound = 200, 150, 100

    async def main() -> None:
        hub = Hub(hub_url, metrics=False, run_events=bound)
        started = [await hub.start_run(f"run:{n}", numbered(events)) for n in range(runs)]
        for run in started:
            assert await run.wait() is RunStatus.COMPLETED
        if isinstance(hub.backend, MemoryBackend):
            held = [len(record.entries) for record in hub.backend._runs.values()]
        else:
            client = redis.Redis.from_url(hub_url)
            held = [client.xlen(f"ssesup:ch:run:{n}") for n in range(runs)]
            assert sorted(key.decode() for key in client.keys("ssesup:run:*")) == sorted(
                f"ssesup:run:run:{n}" for n in range(runs)
            )
            client.close()
        assert held == [bound] * runs  # each: its newest 99 tokens and its end, exactly
        await hub.aclose()  # its connections closed on its loop, not at exit

    anyio.run(main)


def test_run_bounds_are_checked():
    with pytest.raises(ValueError, match="run_ttl"):
        Hub(metrics=False, run_ttl=0)
    with pytest.raises(ValueError, match="run_events"):
        Hub(metrics=False, run_events=0)
    with pytest.raises(ValueError, match="run_bytes"):
        Hub(metrics=False, run_bytes=True)

    async def main() -> None:
        hub = Hub(metrics=False)
        with pytest.raises(ValueError, match="max_events"):
            await hub.start_run("bad", numbered(1), max_events=-1)
        with pytest.raises(ValueError, match="ttl"):
            await hub.start_run("bad", numbered(1), ttl="long")  # type: ignore[arg-type]

    anyio.run(main)
