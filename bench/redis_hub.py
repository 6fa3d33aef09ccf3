"""The scenarios across processes on Redis: ``hub_resume`` (nothing lost when a client moves from a
drained process to another) and ``hub_redis`` (the fan-out of two processes sharing Redis, against
sse-starlette with encode's ``broadcaster``).

Owns: a ``redis-server`` of each scenario run's own on 127.0.0.1 (a free port, no persistence, stopped
at the end), the publisher process of ``hub_redis`` (``python -m bench.redis_hub --publish ...``), both
scenarios' clients and their figures. Does not own the uvicorn processes (``bench.run.Server``), the
apps (``bench/apps/ssesup_redis_app.py``, ``bench/apps/sse_starlette_broadcaster_app.py``), the raw
stream client (``bench/client.py``) or the report (``bench/report.py``). Both run only when named in
``--scenarios``; systems with no app here skip them.

``hub_resume`` (ssesup only): processes A and B share ``Hub(redis_url)``. A client streams channel
``proof`` from A while this process publishes ``events`` numbered events, one at a time, alternately
through A's and B's ``POST /publish`` (through B alone once A refuses). Once the client has half of
them, A gets SIGTERM: its drain ends the stream with a farewell (a ``retry:`` hint of 50-100 ms, which
the client honours), and the client reconnects to B with ``Last-Event-ID``, until it has the last
number. Figures: events received, duplicates, missing, whether in order, gap events, SIGTERM to the
first event from B, SIGTERM to A's exit, publishes per second.

``hub_redis``: two uvicorn processes (uvloop, httptools, one worker each, not pinned: the scheduler
spreads them over both cores, as it does Redis and the publisher), ``streams`` subscribers on each,
held by this process's raw-socket client (on CPU 1 when the bench pins; each server's first stream
is opened alone, then the rest: broadcaster loses subscribers that join while a channel's first
subscription is being made); a publisher process publishes ``rate`` timed events per second (``"<time.time()> <seq> "``
and padding, event ``tick``) on channel ``bench`` through its own ``Hub(redis_url)`` (ssesup) or
``Broadcast(redis_url)`` (sse-starlette). After a warm-up, over ``window`` seconds: publish-to-deliver
p50 and p99 (from the publisher's clock to this process's, one machine), the share of (event,
subscriber) pairs delivered, and the CPU seconds of both server processes per delivered event (and
Redis's, for information). For ssesup, two references in the same run: the in-process hub's p99 at
``streams`` subscribers (``bench/hub.py``, no HTTP, a fresh process), and the same load over sockets
through ``Hub()`` in memory (one uvicorn process with every stream, publishing itself: what Redis and
a second process add to the same client's view).

The issue's load, 1k subscribers per process at 100 publishes/s, is 200k deliveries/s: more than a
2-core machine holds with the client on it (ssesup delivers it all at a p99 near a second, the anchor
cannot open its streams), so the plan's rate is 10 publishes/s; ``Plan.hub_redis_rate`` sets it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench import client
from bench.client import StreamError, _max_seq, _until, open_streams, quantile
from bench.procstat import cpu_seconds, stop

if TYPE_CHECKING:
    from bench.client import Plan
    from bench.run import Server

ROOT = Path(__file__).resolve().parent.parent
CHANNEL = "bench"
SYSTEMS = {  # bench system -> its app on Redis
    "ssesup": "bench.apps.ssesup_redis_app:app",
    "sse-starlette": "bench.apps.sse_starlette_broadcaster_app:app",
}
RESUME_SYSTEMS = ("ssesup",)


def _all_cores() -> None:
    os.sched_setaffinity(0, range(os.cpu_count() or 1))


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 on a free port, no persistence (``--save '' --appendonly no``),
    output appended to ``log``; stopped (SIGTERM) at the end."""

    def __init__(self, log: Path) -> None:
        if not (program := shutil.which("redis-server")):
            raise RuntimeError("redis-server is missing: run scripts/install-redis.sh")
        self.log = log
        with socket.socket() as sock:
            sock.bind((client.HOST, 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://{client.HOST}:{self.port}/0"
        self.argv = [program, "--port", str(self.port), "--bind", client.HOST, "--save", "", "--appendonly", "no"]
        self.argv += ["--dir", str(log.parent)]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> RedisServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_all_cores)
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"redis-server did not answer on port {self.port}; see {self.log}")
            time.sleep(0.02)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection((client.HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        stop(self.proc, 5)


def _servers(stack: contextlib.ExitStack, system: str, plan: Plan, log: Path, src: Path, env: dict,
             args: tuple[str, ...] = ()) -> tuple[Server, Server]:  # fmt: skip
    """Processes A and B of ``system``'s Redis app, neither pinned."""
    from bench.run import Server, System

    app = System(system, SYSTEMS[system], f"{system} on Redis")
    a = stack.enter_context(Server(app, plan, False, log, src, args, env))
    b = stack.enter_context(Server(app, plan, False, log, src, args, env))
    return a, b


# -- hub_resume ------------------------------------------------------------------------------------


def hub_resume(plan: Plan, log: Path, src: Path) -> dict:
    """The resume proof on ssesup (see the module's docstring)."""
    from bench.run import run_client

    events = plan.hub_resume_events
    with RedisServer(log) as redis, contextlib.ExitStack() as stack:
        env = {
            "BENCH_REDIS_URL": redis.url,
            "BENCH_HUB_HISTORY": str(2 * events),  # every event resumable, however late the client
            "BENCH_DRAIN_GRACE": str(plan.hub_resume_grace),
        }
        args = ("--timeout-graceful-shutdown", str(int(plan.hub_resume_grace) + 5))
        a, b = _servers(stack, "ssesup", plan, log, src, env, args)
        return run_client(_resume(a, b, events, plan.hub_resume_timeout))


async def _resume(a: Server, b: Server, events: int, timeout: float) -> dict:
    import httpx

    from ssesup.parser import EventStreamParser

    url_a, url_b = (f"http://{client.HOST}:{s.port}" for s in (a, b))
    loop = asyncio.get_running_loop()
    subscribed: asyncio.Future[None] = loop.create_future()
    seen: set[int] = set()
    got = {"received": 0, "duplicates": 0, "gaps": 0, "from_a": 0, "from_b": 0, "connects": 0}
    order = {"in_order": True, "last": 0}
    marks: dict[str, float] = {}
    retries: list[int] = []

    async def watch_a_exit() -> None:
        assert a.proc is not None
        while a.proc.poll() is None:
            await asyncio.sleep(0.005)
        marks["a_exit"] = time.perf_counter()

    exit_watch: asyncio.Task | None = None

    async def read(http: httpx.AsyncClient) -> None:
        nonlocal exit_watch
        parser = EventStreamParser()
        url = url_a
        while True:
            got["connects"] += 1
            headers = {"Last-Event-ID": parser.last_event_id} if parser.last_event_id else {}
            try:
                async with http.stream("GET", f"{url}/proof", headers=headers) as response:
                    if response.status_code != 200:
                        raise StreamError(f"HTTP {response.status_code} from {url}")
                    async for chunk in response.aiter_raw():
                        for event in parser.feed(chunk):
                            if event.event == "gap":
                                got["gaps"] += 1
                                continue
                            n = json.loads(event.data)["n"]
                            got["received"] += 1
                            got["from_a" if url == url_a else "from_b"] += 1
                            if url == url_b and "first_b" not in marks:
                                marks["first_b"] = time.perf_counter()
                            if n in seen:
                                got["duplicates"] += 1
                            seen.add(n)
                            order["in_order"] &= n > order["last"]
                            order["last"] = n
                            if got["received"] >= events // 2 and "sigterm" not in marks:
                                marks["sigterm"] = time.perf_counter()
                                os.kill(a.pid, signal.SIGTERM)
                                exit_watch = asyncio.create_task(watch_a_exit())
                            if n == events:
                                return
                        if parser.last_event_id and not subscribed.done():
                            subscribed.set_result(None)
            except httpx.HTTPError:
                pass  # a cut: reconnect as an EventSource would
            if parser.retry is not None:
                retries.append(parser.retry)
            url = url_b
            await asyncio.sleep((parser.retry or 0) / 1000)

    through = {"a": 0, "b": 0, "retried": 0}

    async def publish(http: httpx.AsyncClient) -> None:
        a_open = True
        for n in range(1, events + 1):
            targets = [url_a, url_b] if a_open and n % 2 else [url_b]
            for url in targets:
                try:
                    response = await http.post(f"{url}/publish", params={"n": n})
                    response.raise_for_status()
                except httpx.HTTPError:
                    if url != url_a:
                        raise
                    a_open = False  # draining or gone: refused before publishing
                    through["retried"] += 1
                    continue
                through["a" if url == url_a else "b"] += 1
                break
        marks["published"] = time.perf_counter()

    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as http:
        reader = asyncio.create_task(read(http))
        await asyncio.wait_for(asyncio.shield(subscribed), 30)
        marks["publishing"] = time.perf_counter()
        publisher = asyncio.create_task(publish(http))
        try:
            await asyncio.wait_for(reader, timeout)
        except TimeoutError:
            raise StreamError(
                f"the client had {got['received']} events ({len(seen)} numbers) after {timeout:g} s"
            ) from None
        finally:
            reader.cancel()
        await asyncio.wait_for(publisher, 30)
        if exit_watch is not None:
            await asyncio.wait_for(exit_watch, 60)
    missing = events - len(seen)
    out = {
        "events": events,
        **got,
        "missing": missing,
        "in_order": order["in_order"],
        "exactly_once": not got["duplicates"] and not missing and order["in_order"],
        "reconnect_s": marks["first_b"] - marks["sigterm"] if "first_b" in marks else float("nan"),
        "a_exit_s": marks["a_exit"] - marks["sigterm"] if "a_exit" in marks else float("nan"),
        "publish_per_s": events / (marks["published"] - marks["publishing"]),
        "through_a": through["a"],
        "through_b": through["b"],
        "publish_retried": through["retried"],
        "retry_ms": retries,
        "delivered": len(seen) / events,
    }
    if not out["exactly_once"] or got["gaps"]:
        out["error"] = (
            f"not every number once and in order: {got['duplicates']} duplicates, {missing} missing, "
            f"in order {order['in_order']}, {got['gaps']} gap events"
        )
    return out


# -- hub_redis -------------------------------------------------------------------------------------


class Publisher:
    """``python -m bench.redis_hub --publish``: a process of its own publishing ``rate`` timed events
    per second until SIGTERM; ``result`` is what it printed (events published, the rate it kept)."""

    def __init__(self, system: str, url: str, rate: float, size: int, src: Path, log: Path) -> None:
        path = os.pathsep.join(p for p in (str(src), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.argv = [sys.executable, "-m", "bench.redis_hub", "--publish", system, "--url", url]
        self.argv += ["--rate", str(rate), "--size", str(size)]
        self.env = {**os.environ, "PYTHONPATH": path}
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.result: dict = {}

    def __enter__(self) -> Publisher:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, preexec_fn=_all_cores
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            stdout, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            stdout, _ = self.proc.communicate()
        if self.proc.returncode == 0 and stdout:
            self.result = json.loads(stdout)


async def _publish(system: str, url: str, rate: float, size: int) -> dict:
    """Publish timed events on ``CHANNEL`` every ``1 / rate`` s until SIGTERM."""
    from bench.apps.common import timed

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if system == "ssesup":
        from ssesup import Event, Hub

        hub = Hub(url, metrics=False)

        async def send(data: str) -> None:
            await hub.publish(CHANNEL, Event(data, event="tick"))

        close = hub.aclose
    else:
        from broadcaster import Broadcast

        broadcast = Broadcast(url)
        await broadcast.connect()

        async def send(data: str) -> None:
            await broadcast.publish(channel=CHANNEL, message=data)

        close = broadcast.disconnect
    seq, late = 0, 0
    started = deadline = loop.time()
    while not stop.is_set():
        deadline += 1 / rate
        if (wait := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                break
        else:
            late += 1
        seq += 1
        await send(timed(seq, size))
    elapsed = loop.time() - started
    await close()
    return {"published": seq, "published_per_s": seq / elapsed, "late": late}


def hub_redis(system: str, plan: Plan, log: Path, src: Path) -> dict:
    """The fan-out of two processes on Redis (see the module's docstring)."""
    from bench import hub
    from bench.run import run_client

    with RedisServer(log) as redis, contextlib.ExitStack() as stack:
        a, b = _servers(stack, system, plan, log, src, {"BENCH_REDIS_URL": redis.url})
        with Publisher(system, redis.url, plan.hub_redis_rate, plan.size, src, log) as publisher:
            out = run_client(
                _fanout((a, b), redis.pid, plan.hub_redis_streams, plan.hub_redis_rate, plan.hub_redis_warm,
                        plan.hub_redis_window, plan.concurrency)
            )  # fmt: skip
        if not publisher.result:
            raise RuntimeError(f"the publisher failed ({publisher.proc and publisher.proc.returncode}); see {log}")
        out |= publisher.result
    if system == "ssesup":
        inprocess = hub.run_apart("hub", plan.hub_redis_streams, hub.EVENTS, src)
        out["inprocess_subscribers"] = plan.hub_redis_streams
        out["inprocess_p99_ms"] = inprocess["p99_ms"]
        out["p99_vs_inprocess"] = out["p99_ms"] / inprocess["p99_ms"]
        memory = _memory_hub(plan, log, src)
        out |= {f"memory_{key}": memory[key] for key in ("p50_ms", "p99_ms", "cpu_us_per_delivered", "delivered")}
        out["p99_vs_memory"] = out["p99_ms"] / memory["p99_ms"]
    return out


def _memory_hub(plan: Plan, log: Path, src: Path) -> dict:
    """The same load through ``Hub()`` in one process's memory: one uvicorn process (not pinned) with
    every stream, its own task publishing (the ``ssesup-hub`` system's ``/fanout``), no Redis."""
    from bench.run import Server, System, run_client

    app = System("ssesup-hub", "bench.apps.ssesup_app:app", "ssesup, Hub() in memory", {"BENCH_SSESUP_HUB": "1"})
    rate, streams = plan.hub_redis_rate, 2 * plan.hub_redis_streams
    with Server(app, plan, False, log, src, env={"BENCH_TICK": str(1 / rate)}) as server:
        return run_client(
            _fanout((server,), None, streams, rate, plan.hub_redis_warm, plan.hub_redis_window, plan.concurrency)
        )


async def _fanout(
    servers: tuple[Server, ...], redis_pid: int | None, streams: int, rate: float, warm: float, window: float,
    concurrency: int,
) -> dict:  # fmt: skip
    """``streams`` timed streams of ``/fanout`` on each server; the events published after the warm-up
    and within the window, as every stream received them."""
    conns: list[client.SSEConnection] = []
    try:
        open_s = 0.0
        for server in servers:
            # One stream first, then the rest: broadcaster 0.3 loses the subscribers that join a channel
            # while its first subscription is being made (each replaces the channel's set of queues).
            for n, gate in ((1, 1), (streams - 1, concurrency)):
                opened, seconds = await open_streams(server.port, "/fanout", n, timed=True, concurrency=gate)
                conns += opened
                open_s += seconds
        # Every stream has had an event, so each is subscribed to what is published from then on.
        first = max(c.samples[0][0] for c in conns) + max(2, round(warm * rate))
        count = max(1, round(window * rate))
        last = first + count - 1
        started = await _until(lambda: all(c.samples[-1][0] >= first - 1 or c.lost for c in conns), warm + 30)
        if not started:
            raise StreamError(f"the streams did not reach event {first - 1} within {warm + 30:g} s")
        pids = [s.pid for s in servers]
        others = [redis_pid] if redis_pid is not None else []
        cpu0, redis0, t0 = sum(map(cpu_seconds, pids)), sum(map(cpu_seconds, others)), time.perf_counter()
        await _until(lambda: _max_seq(conns) >= last, window + 30)
        cpu1, redis1, t1 = sum(map(cpu_seconds, pids)), sum(map(cpu_seconds, others)), time.perf_counter()
        # Stragglers: wait (bounded) until every stream has the last event or was lost.
        await _until(lambda: all(c.lost or c.samples[-1][0] >= last for c in conns), 30.0)
    finally:
        for conn in conns:
            conn.close()
    latencies, delivered = client.window_samples(conns, first, last)
    expected = count * len(conns)
    return {
        "streams": len(conns),
        "processes": len(servers),
        "rate": rate,
        "events_measured": count,
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": quantile(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "cpu_us_per_delivered": (cpu1 - cpu0) / max(1, delivered) * 1e6,
        "server_cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
        "redis_cpu_pct": 100 * (redis1 - redis0) / (t1 - t0) if others else float("nan"),
        "lost_streams": sum(c.lost for c in conns),
        "delivered": delivered / expected,
        "events": delivered,
        "expected": expected,
        "open_s": open_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_hub", description=__doc__.splitlines()[0])
    parser.add_argument("--publish", choices=sorted(SYSTEMS), required=True, help="publish as this system does")
    parser.add_argument("--url", required=True, help="the Redis URL")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--size", type=int, default=100, help="bytes of data per event")
    args = parser.parse_args(argv)
    import uvloop

    print(json.dumps(uvloop.run(_publish(args.publish, args.url, args.rate, args.size))), flush=True)


if __name__ == "__main__":
    main()
