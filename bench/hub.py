"""The hub scenario: publish to 1k and 10k subscribers through ``Hub()``, against a bare
``asyncio.Queue`` per subscriber (the floor: what a hand-written broadcast costs).

Owns: measuring, in one process and event loop (uvloop when installed), the latency from ``publish`` to
each subscriber having the encoded event in hand (p50, p99, max) and the CPU seconds per published
event. No HTTP: this is the hub's fan-out alone (the cost a stream adds is measured by the other
scenarios). Does not own the bench's report (``bench/report.py``) or its server runs (``bench/run.py``).

``python -m bench.hub [--subscribers 1000 10000] [--events 200] [--json PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time

from ssesup import Event, Hub


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _summary(latencies: list[float], cpu: float, events: int) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
        "max_ms": ordered[-1] * 1000,
        "cpu_us_per_event": cpu / events * 1e6,
    }


async def run_hub(subscribers: int, events: int) -> dict[str, float]:
    hub = Hub(metrics=False, history_size=events + 1)
    latencies: list[float] = []
    sent_at: dict[int, float] = {}
    ready = asyncio.Event()
    joined = 0

    async def subscriber() -> None:
        nonlocal joined
        subscription = hub.subscribe("bench")
        items = subscription.encoded()
        await anext(items)  # the first id: subscribed
        joined += 1
        if joined == subscribers:
            ready.set()
        try:
            for _ in range(events):
                chunk = await anext(items)
                latencies.append(time.perf_counter() - sent_at[int(chunk.rsplit(b"data: ", 1)[1])])
        finally:
            await items.aclose()

    tasks = [asyncio.create_task(subscriber()) for _ in range(subscribers)]
    await ready.wait()
    cpu = _cpu()
    for n in range(events):
        sent_at[n] = time.perf_counter()
        await hub.publish("bench", Event(str(n)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    return _summary(latencies, _cpu() - cpu, events)


async def run_floor(subscribers: int, events: int) -> dict[str, float]:
    latencies: list[float] = []
    sent_at: dict[int, float] = {}
    queues: list[asyncio.Queue[bytes]] = [asyncio.Queue() for _ in range(subscribers)]

    async def subscriber(queue: asyncio.Queue[bytes]) -> None:
        for _ in range(events):
            chunk = await queue.get()
            latencies.append(time.perf_counter() - sent_at[int(chunk.rsplit(b"data: ", 1)[1])])

    tasks = [asyncio.create_task(subscriber(queue)) for queue in queues]
    await asyncio.sleep(0)
    cpu = _cpu()
    for n in range(events):
        sent_at[n] = time.perf_counter()
        chunk = Event(str(n), id=str(n)).encode()
        for queue in queues:
            queue.put_nowait(chunk)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    return _summary(latencies, _cpu() - cpu, events)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.hub", description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    results: dict = {}
    for count in args.subscribers:
        for name, scenario in (("floor", run_floor), ("hub", run_hub)):
            results[f"{name}/{count}"] = summary = runner(scenario(count, args.events))
            shown = ", ".join(f"{key} {value:.3f}" for key, value in summary.items())
            print(f"{name:5} {count:>6} subscribers: {shown}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return results


if __name__ == "__main__":
    main()
