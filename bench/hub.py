"""The hub scenario: publish to 1k to 20k subscribers through ``Hub()``, against a bare
``asyncio.Queue`` per subscriber (the floor: what a hand-written broadcast costs).

Owns: measuring, in one process and event loop (uvloop when installed), the latency from ``publish`` to
each subscriber having the encoded event in hand (p50, p99, max), the CPU seconds per published and per
delivered event, and the RSS each subscriber adds (all subscribed, before the first publish), over
the events published after ``WARMUP`` untimed ones (the first publishes run cold). Each
(system, subscribers) runs in a fresh process, so no run inherits another's memory. No HTTP: this is
the hub's fan-out alone (the cost a stream adds is measured by the other scenarios). Does not own the
bench's report (``bench/report.py``) or its server runs (``bench/run.py``, which runs this scenario as
``--scenarios hub``: the floor system gets the bare queues, ssesup the hub).

The many-channels case (ssesup only, in the same scenario): ``MANY_STREAMS`` idle streams that each
follow ``MANY_CHANNELS`` channels of their own (16,000 channels), then ``MANY_EVENTS`` publishes each to
one of them, in memory and on a Redis of its own: the wall and CPU seconds until every event is
delivered (``many_wall_s_memory``, ``many_cpu_s_redis``, ...). A publish must cost what it delivers,
not every channel the process follows.

``python -m bench.hub [--subscribers 1000 5000 10000 20000] [--events 100] [--json PATH]``;
``python -m bench.hub --many-channels 16 [--url redis://...]`` runs the many-channels case alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ssesup import Event, Hub

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1000, 5000, 10_000, 20_000)  # subscribers, each in a process of its own
EVENTS = 100  # events published per run, timed
WARMUP = 10  # events published first, not timed (the first publishes run cold: up to twice as slow)
SYSTEMS = {"floor": "floor", "ssesup": "hub"}  # bench system -> what it runs here


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _summary(latencies: list[float], cpu: float, events: int, subscribers: int, rss_kib: int) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
        "max_ms": ordered[-1] * 1000,
        "cpu_us_per_event": cpu / events * 1e6,
        "cpu_us_per_delivered": cpu / (events * subscribers) * 1e6,
        "kib_per_subscriber": rss_kib / subscribers,
        "delivered": len(latencies) / (events * subscribers),
    }


async def run_hub(subscribers: int, events: int) -> dict[str, float]:
    hub = Hub(metrics=False, history_size=WARMUP + events + 1)
    latencies: list[float] = []
    sent_at: dict[int, float] = {}
    ready, warm = asyncio.Event(), asyncio.Event()
    joined = warmed = 0

    async def subscriber() -> None:
        nonlocal joined, warmed
        subscription = hub.subscribe("bench")
        items = subscription.encoded()
        await anext(items)  # the first id: subscribed
        joined += 1
        if joined == subscribers:
            ready.set()
        try:
            for _ in range(WARMUP):
                await anext(items)
            warmed += 1
            if warmed == subscribers:
                warm.set()
            for _ in range(events):
                chunk = await anext(items)
                latencies.append(time.perf_counter() - sent_at[int(chunk.rsplit(b"data: ", 1)[1])])
        finally:
            await items.aclose()

    rss = _rss_kib()
    tasks = [asyncio.create_task(subscriber()) for _ in range(subscribers)]
    await ready.wait()
    rss = _rss_kib() - rss
    for n in range(-WARMUP, 0):
        await hub.publish("bench", Event(str(n)))
        await asyncio.sleep(0)
    await warm.wait()
    cpu = _cpu()
    for n in range(events):
        sent_at[n] = time.perf_counter()
        await hub.publish("bench", Event(str(n)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    return _summary(latencies, _cpu() - cpu, events, subscribers, rss)


async def run_floor(subscribers: int, events: int) -> dict[str, float]:
    latencies: list[float] = []
    sent_at: dict[int, float] = {}
    rss = _rss_kib()
    queues: list[asyncio.Queue[bytes]] = [asyncio.Queue() for _ in range(subscribers)]
    warm = asyncio.Event()
    warmed = 0

    async def subscriber(queue: asyncio.Queue[bytes]) -> None:
        nonlocal warmed
        for _ in range(WARMUP):
            await queue.get()
        warmed += 1
        if warmed == subscribers:
            warm.set()
        for _ in range(events):
            chunk = await queue.get()
            latencies.append(time.perf_counter() - sent_at[int(chunk.rsplit(b"data: ", 1)[1])])

    tasks = [asyncio.create_task(subscriber(queue)) for queue in queues]
    await asyncio.sleep(0)
    rss = _rss_kib() - rss

    def publish(n: int) -> None:
        chunk = Event(str(n), id=str(n)).encode()
        for queue in queues:
            queue.put_nowait(chunk)

    for n in range(-WARMUP, 0):
        publish(n)
        await asyncio.sleep(0)
    await warm.wait()
    cpu = _cpu()
    for n in range(events):
        sent_at[n] = time.perf_counter()
        publish(n)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    return _summary(latencies, _cpu() - cpu, events, subscribers, rss)


RUNS = {"floor": run_floor, "hub": run_hub}

# The many-channels case: idle streams that each follow the most channels a stream may (16), and
# publishes that each reach one of them. What a publish costs must not grow with every channel the
# process follows (it did: each read of the loop's reader covered all of them).
MANY_STREAMS = 1000
MANY_CHANNELS = 16
MANY_EVENTS = 500


async def run_many_channels(url: str | None, streams: int, channels: int, events: int) -> dict[str, float]:
    """``streams`` subscriptions of ``channels`` channels each (all distinct), then ``events`` publishes,
    each to one channel of one stream, one after the other; the wall and CPU seconds from the first
    publish until every event is delivered."""
    hub = Hub(url, metrics=False)
    subscriptions = []
    for stream in range(streams):
        items = hub.subscribe(*(f"s{stream}.c{channel}" for channel in range(channels))).encoded()
        await anext(items)  # joined
        subscriptions.append(items)
    received = 0
    done = asyncio.Event()

    async def take(items) -> None:
        nonlocal received
        async for _ in items:
            received += 1
            if received == events:
                done.set()

    tasks = [asyncio.create_task(take(items)) for items in subscriptions]
    await asyncio.sleep(0.5)  # every stream waiting, the loop's reader on the engine
    cpu, wall = _cpu(), time.perf_counter()
    for n in range(events):
        await hub.publish(f"s{n % streams}.c{n % channels}", Event(str(n)))
        await asyncio.sleep(0)  # the loop's other tasks run between publishes, as in an app
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 120)
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await hub.aclose()
    return {"wall_s": wall, "cpu_s": cpu, "delivered": received / events}


def many_channels(
    url: str | None, streams: int = MANY_STREAMS, channels: int = MANY_CHANNELS, events: int = MANY_EVENTS
) -> dict[str, float]:
    """The many-channels case in this process (``url``: the hub's; ``None`` in memory)."""
    return asyncio.run(run_many_channels(url, streams, channels, events))


def run_here(name: str, subscribers: int, events: int) -> dict[str, float]:
    """One run in this process, on uvloop when it is installed."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(RUNS[name](subscribers, events))


def child(name: str, subscribers: int, events: int, src: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """The command and environment of one run in a process of its own (``src``: the directory of the
    ssesup package it imports)."""
    path = os.pathsep.join(str(p) for p in (src, ROOT, os.environ.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "bench.hub", "--child", name, "--subscribers", str(subscribers)]
    return [*command, "--events", str(events)], {**os.environ, "PYTHONPATH": path}


def run_apart(name: str, subscribers: int, events: int, src: Path | None = None) -> dict[str, float]:
    """One run in a fresh process (``src``: the directory of the ssesup package it imports)."""
    command, env = child(name, subscribers, events, src)
    done = subprocess.run(
        command,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(done.stdout)


def scenario(system: str, src: Path | None = None, sizes: tuple[int, ...] = SIZES, events: int = EVENTS) -> dict:
    """The figures of one bench system (``floor`` or ``ssesup``) at every size, flat, as the report reads
    them (``p99_ms_10k``, ...), and how each grows from the smallest size to the largest."""
    out: dict = {"sizes": list(sizes), "events": events}
    delivered = []
    for count in sizes:
        figures = run_apart(SYSTEMS[system], count, events, src)
        delivered.append(figures.pop("delivered"))
        out |= {f"{key}_{count // 1000}k": value for key, value in figures.items()}
    first, last = f"{sizes[0] // 1000}k", f"{sizes[-1] // 1000}k"
    for key in ("p99_ms", "cpu_us_per_delivered", "kib_per_subscriber"):
        out[f"{key}_growth"] = out[f"{key}_{last}"] / out[f"{key}_{first}"]
    if system == "ssesup":
        figures = many_channels_apart(src)
        delivered += [figures.pop("delivered_memory"), figures.pop("delivered_redis")]
        out |= figures
    out["delivered"] = min(delivered)
    return out


def many_channels_apart(
    src: Path | None = None, streams: int = MANY_STREAMS, channels: int = MANY_CHANNELS, events: int = MANY_EVENTS
) -> dict:
    """The many-channels case in memory and on a Redis of its own, each in a fresh process: the wall and
    CPU seconds of the publishes (``many_wall_s_memory``, ...), and Redis's CPU seconds meanwhile."""
    import tempfile

    from bench.procstat import cpu_seconds
    from bench.redis_hub import RedisServer

    out: dict = {"many_streams": streams, "many_channels": channels, "many_events": events}
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis.log") as redis:
        for engine, url in (("memory", "memory://"), ("redis", redis.url)):
            before = cpu_seconds(redis.pid)
            command, env = child("many", streams, events, src)
            command += ["--many-channels", str(channels), "--url", url]
            done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
            figures = json.loads(done.stdout)
            out |= {f"many_{key}_{engine}": value for key, value in figures.items() if key != "delivered"}
            out[f"delivered_{engine}"] = figures["delivered"]
            if engine == "redis":
                out["many_redis_cpu_s"] = cpu_seconds(redis.pid) - before
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.hub", description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--child", choices=[*sorted(RUNS), "many"], help=argparse.SUPPRESS)  # one run, JSON out
    parser.add_argument("--many-channels", type=int, default=0, help="the many-channels case: channels per stream")
    parser.add_argument("--url", default="memory://", help="the many-channels case: the hub's URL")
    args = parser.parse_args(argv)
    if args.child == "many" or (args.many_channels and not args.child):
        channels = args.many_channels or MANY_CHANNELS
        streams = args.subscribers[0] if args.child else MANY_STREAMS
        events = args.events if args.child else MANY_EVENTS
        figures = many_channels(None if args.url == "memory://" else args.url, streams, channels, events)
        print(json.dumps(figures))
        return figures
    if args.child:
        print(json.dumps(run_here(args.child, args.subscribers[0], args.events)))
        return {}
    results: dict = {}
    for count in args.subscribers:
        for name in ("floor", "hub"):
            results[f"{name}/{count}"] = summary = run_apart(name, count, args.events)
            shown = ", ".join(f"{key} {value:.3f}" for key, value in summary.items())
            print(f"{name:5} {count:>6} subscribers: {shown}", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return results


if __name__ == "__main__":
    main()
