"""The reconnect storm on Redis (``hub_storm``): what follows every drain of a process that holds many
streams. Processes A and B share ``Hub(redis_url)`` (bench/apps/ssesup_redis_app.py, a drain whose
farewell asks clients back within 50-100 ms). ``clients`` streams of channel ``proof`` open on A; this
process publishes ``events`` numbered events at ``rate`` a second, alternately through A and B (through
B alone once A refuses); after a tenth of them A gets SIGTERM, its drain sends every client away, and
each reconnects to B after the ``retry:`` hint with its ``Last-Event-ID``, all within about a second.

Figures: every client's numbers (each once, in order: ``delivered`` is the share of (client, event)
pairs received, with ``duplicates``, ``missing``, ``gaps``, ``out_of_order`` clients), failed
publishes, the peak of Redis's connected clients during the run less those before it (both processes:
each holds at most ``redis_connections`` and its reader's one, whatever the storm), the time from
SIGTERM until every client streams from B, and the run's wall time. ssesup only. Runs only when named
in ``--scenarios``.

``python -m bench.storm [--clients 2000] [--events 1000] [--rate 50] [--src DIR]`` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import tempfile
import threading
import time
from pathlib import Path

from bench import client
from bench.client import Plan

SYSTEMS = ("ssesup",)


class ConnectionsSeen:
    """Polls Redis's count of connected clients every few milliseconds (in a thread): the peak, less
    those before it (its own among them)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.before = self._count()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _count(self) -> int:
        return int(self.client.info("clients")["connected_clients"])

    def _poll(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # the server going away at the end
                self.peak = max(self.peak, self._count() - self.before)
            time.sleep(0.003)

    def __enter__(self) -> ConnectionsSeen:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def hub_storm(plan: Plan, log: Path, src: Path) -> dict:
    """The storm (see the module's docstring)."""
    from bench.redis_hub import RedisServer, _servers
    from bench.run import run_client

    with RedisServer(log) as redis, contextlib.ExitStack() as stack:
        env = {
            "BENCH_REDIS_URL": redis.url,
            "BENCH_HUB_HISTORY": str(2 * plan.hub_storm_events),  # every event resumable
            "BENCH_DRAIN_GRACE": str(plan.hub_storm_grace),
        }
        args = ("--timeout-graceful-shutdown", str(int(plan.hub_storm_grace) + 5))
        with ConnectionsSeen(redis.url) as seen:
            a, b = _servers(stack, "ssesup", plan, log, src, env, args)
            out = run_client(_storm(a, b, plan))
        out["redis_connections_peak"] = seen.peak
        return out


async def _storm(a, b, plan: Plan) -> dict:
    import httpx

    from ssesup.parser import EventStreamParser

    clients, events, rate = plan.hub_storm_clients, plan.hub_storm_events, plan.hub_storm_rate
    url_a, url_b = (f"http://{client.HOST}:{s.port}" for s in (a, b))
    got: list[list[int]] = [[] for _ in range(clients)]
    gaps = [0] * clients
    on_b = [False] * clients
    subscribed = 0
    all_subscribed = asyncio.Event()
    all_on_b = asyncio.Event()
    finished = asyncio.Event()
    last = events - 1
    done_clients = 0
    failed_publishes = 0
    sigterm_at = 0.0
    moved_s = float("nan")
    limits = httpx.Limits(max_connections=clients + 50, max_keepalive_connections=50)
    timeout = httpx.Timeout(30, read=60)

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:

        async def stream(index: int) -> None:
            nonlocal subscribed, done_clients, moved_s
            last_id = ""
            url = url_a
            while True:
                parser = EventStreamParser()
                headers = {"Last-Event-ID": last_id} if last_id else {}
                try:
                    async with http.stream("GET", f"{url}/proof", headers=headers) as response:
                        if response.status_code != 200:
                            await asyncio.sleep(0.05)
                            url = url_b
                            continue
                        if url == url_b and not on_b[index]:
                            on_b[index] = True
                            if all(on_b):
                                moved_s = time.monotonic() - sigterm_at
                                all_on_b.set()
                        async for chunk in response.aiter_raw():
                            if not last_id and url == url_a:
                                subscribed += 1
                                if subscribed == clients:
                                    all_subscribed.set()
                            for event in parser.feed(chunk):
                                if event.event == "gap":
                                    gaps[index] += 1
                                elif event.event == "n":
                                    got[index].append(event.json()["n"])
                            last_id = parser.last_event_id or last_id
                            if got[index] and got[index][-1] == last:
                                done_clients += 1
                                if done_clients == clients:
                                    finished.set()
                                return
                except httpx.TransportError:
                    pass
                await asyncio.sleep((parser.retry or 100) / 1000)  # the drain's hint, as a browser does
                url = url_b

        async def publish() -> None:
            nonlocal failed_publishes, sigterm_at
            await all_subscribed.wait()
            next_at = time.monotonic()
            for n in range(events):
                if n == events // 10:
                    sigterm_at = time.monotonic()
                    a.proc.send_signal(signal.SIGTERM)
                for url in (url_a, url_b) if n % 2 and not sigterm_at else (url_b,):
                    try:
                        response = await http.post(f"{url}/publish", params={"n": n})
                    except httpx.TransportError:
                        continue
                    if response.status_code == 200:
                        break
                else:
                    failed_publishes += 1
                next_at += 1 / rate
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        started = time.monotonic()
        tasks = [asyncio.create_task(stream(index)) for index in range(clients)]
        publishing = asyncio.create_task(publish())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), plan.hub_storm_timeout)
        wall = time.monotonic() - started
        for task in (*tasks, publishing):
            task.cancel()
        await asyncio.gather(*tasks, publishing, return_exceptions=True)

    expected = list(range(events))
    duplicates = sum(len(numbers) - len(set(numbers)) for numbers in got)
    missing = sum(len(set(expected) - set(numbers)) for numbers in got)
    return {
        "clients": clients,
        "events": events,
        "rate": rate,
        "delivered": sum(len(set(numbers) & set(expected)) for numbers in got) / (clients * events),
        "duplicates": duplicates,
        "missing": missing,
        "gaps": sum(gaps),
        "out_of_order": sum(numbers != sorted(numbers) for numbers in got),
        "failed_publishes": failed_publishes,
        "moved_s": moved_s,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=Plan.hub_storm_clients)
    parser.add_argument("--events", type=int, default=Plan.hub_storm_events)
    parser.add_argument("--rate", type=float, default=Plan.hub_storm_rate)
    parser.add_argument("--src", type=Path, help="the directory of the ssesup package the servers run (default: src/)")
    args = parser.parse_args(argv)
    from bench.run import ROOT

    plan = Plan(hub_storm_clients=args.clients, hub_storm_events=args.events, hub_storm_rate=args.rate)
    with tempfile.TemporaryDirectory() as tmp:
        result = hub_storm(plan, Path(tmp) / "storm.log", args.src or ROOT / "src")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
