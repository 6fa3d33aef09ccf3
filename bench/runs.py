"""Runs under load (``runs``): ``runs`` runs at once, each of ``tokens`` tokens (one every ``every``
seconds), watched by ``viewers`` viewers each, one of which drops its connection every second and comes
back with its ``Last-Event-ID`` (as a phone that changes networks). One uvicorn process serves
bench/apps/ssesup_runs_app.py, its hub in memory (``Hub()``; ``--redis``: on a redis-server of its own);
this process is every viewer, on raw sockets (a chunked body read to its last chunk, events parsed as
an ``EventSource`` would).

Figures: whether every viewer got every token once, in order, then ``end`` completed and a proper end
of body (``delivered`` is the share of (viewer, token) pairs received; ``duplicates``, ``missing``,
``out_of_order``, ``clean_ends``), the reconnects, the server's CPU per delivered token (its CPU time
over the runs, publishing and sending, divided by viewers x tokens), its memory per run, and the wall
time. Memory is measured first, as RSS growth: ``runs`` runs of ``tokens`` tokens that nobody watches
live, each read once after its end (what an ended run keeps for ``run_ttl``: ``kib_per_run_kept``),
then, over that, the peak with the watched runs and all their viewers connected
(``kib_per_run_peak``). (RSS once viewers leave says little: the allocator keeps what it freed.) On
Redis, also Redis's own memory per ended run (``redis_kib_per_run_kept``: ``used_memory`` growth).
ssesup only. Runs only when named in ``--scenarios``.

``python -m bench.runs [--runs 100] [--tokens 1000] [--viewers 10] [--every 0.05] [--redis] [--src DIR]``
runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import client
from bench.client import Plan
from bench.procstat import cpu_seconds, rss_kib

SYSTEMS = ("ssesup",)
APP = "bench.apps.ssesup_runs_app:app"
RECONNECT_EVERY = 1.0  # seconds a reconnecting viewer keeps each connection


@dataclass
class Viewer:
    """What one viewer read across its connections."""

    tokens: list[int] = field(default_factory=list)
    last_id: str = ""
    end: str = ""
    clean_end: bool = False
    connects: int = 0


def scenario(plan: Plan, log: Path, src: Path, redis: bool = False) -> dict:
    """The scenario (see the module's docstring)."""
    from bench.redis_hub import RedisServer
    from bench.run import Server, System, run_client

    with contextlib.ExitStack() as stack:
        env = {}
        if redis:
            env["BENCH_REDIS_URL"] = stack.enter_context(RedisServer(log)).url
        system = System("ssesup", APP, "ssesup runs")
        server = stack.enter_context(Server(system, plan, False, log, src, (), env))
        out = run_client(_runs(server.port, server.pid, plan, env.get("BENCH_REDIS_URL")))
        out["engine"] = "redis" if redis else "memory"
        return out


def _redis_used_kib(url: str | None) -> float:
    if url is None:
        return 0.0
    import redis

    client_ = redis.Redis.from_url(url)
    try:
        return int(client_.info("memory")["used_memory"]) / 1024
    finally:
        client_.close()


async def _runs(port: int, pid: int, plan: Plan, redis_url: str | None = None) -> dict:
    runs, tokens, viewers, every = plan.runs_count, plan.runs_tokens, plan.runs_viewers, plan.runs_every
    await _start(port, "warm-up", 10, 0.0)  # import paths, the first run's costs
    warm = Viewer()
    await _view(port, "warm-up", None, warm)
    await asyncio.sleep(plan.settle)
    idle_kib = rss_kib(pid)
    redis_before = _redis_used_kib(redis_url)
    for n in range(runs):  # what ended runs keep: started at once, each read once after its end
        await _start(port, f"kept:{n}", tokens, 0.0)
    for n in range(runs):
        kept = Viewer()
        await _view(port, f"kept:{n}", None, kept)
        if kept.tokens != list(range(tokens)):
            raise RuntimeError(f"kept:{n} read {len(kept.tokens)} tokens")
    await asyncio.sleep(plan.settle)
    kept_kib = rss_kib(pid)
    redis_kept = _redis_used_kib(redis_url)
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    for n in range(runs):
        await _start(port, f"run:{n}", tokens, every)
    watched = [[Viewer() for _ in range(viewers)] for _ in range(runs)]
    tasks = [
        asyncio.create_task(_view(port, f"run:{n}", RECONNECT_EVERY if v == 0 else None, watched[n][v]))
        for n in range(runs)
        for v in range(viewers)
    ]
    peak_kib = kept_kib
    done = asyncio.gather(*tasks)
    deadline = started + plan.runs_timeout
    while not done.done() and time.monotonic() < deadline:
        peak_kib = max(peak_kib, rss_kib(pid))
        await asyncio.wait((done,), timeout=0.25)
    if not done.done():
        done.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await done
    wall = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu_before

    everyone = [viewer for per_run in watched for viewer in per_run]
    expected = list(range(tokens))
    delivered = sum(len(set(viewer.tokens) & set(expected)) for viewer in everyone)
    pairs = len(everyone) * tokens
    return {
        "runs": runs,
        "tokens": tokens,
        "viewers": viewers,
        "every": every,
        "delivered": delivered / pairs,
        "duplicates": sum(len(viewer.tokens) - len(set(viewer.tokens)) for viewer in everyone),
        "missing": pairs - delivered,
        "out_of_order": sum(viewer.tokens != sorted(viewer.tokens) for viewer in everyone),
        "clean_ends": sum(viewer.clean_end and viewer.end == '{"status":"completed"}' for viewer in everyone),
        "viewers_all": len(everyone),
        "reconnects": sum(viewer.connects - 1 for viewer in everyone),
        "cpu_us_per_token": 1e6 * cpu / pairs,
        "server_cpu_pct": 100 * cpu / wall,
        "kib_per_run_peak": (peak_kib - kept_kib) / runs,
        "kib_per_run_kept": (kept_kib - idle_kib) / runs,
        "redis_kib_per_run_kept": (redis_kept - redis_before) / runs,
        "wall_s": wall,
    }


async def _start(port: int, name: str, tokens: int, every: float) -> None:
    reader, writer = await asyncio.open_connection(client.HOST, port)
    path = f"/runs/{name}?tokens={tokens}&every={every}"
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {client.HOST}\r\nContent-Length: 0\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    if not head.startswith(b"HTTP/1.1 201"):
        raise RuntimeError(f"starting {name} answered {head[:40]!r}")


async def _view(port: int, name: str, reconnect_every: float | None, viewer: Viewer) -> None:
    """Read run ``name`` until its ``end`` and the end of its body, as an EventSource that closes on ``end``;
    with ``reconnect_every``, drop each connection after that long and come back with ``Last-Event-ID``."""
    while not viewer.clean_end:
        reader, writer = await asyncio.open_connection(client.HOST, port)
        resume = f"Last-Event-ID: {viewer.last_id}\r\n" if viewer.last_id else ""
        writer.write(f"GET /runs/{name} HTTP/1.1\r\nHost: {client.HOST}\r\n{resume}\r\n".encode())
        try:
            async with asyncio.timeout(reconnect_every):
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"{name} answered {head[:40]!r}")
                viewer.connects += 1
                await _read_body(reader, viewer)
        except TimeoutError:
            pass  # the viewer drops its connection (a phone changing networks) and comes back
        except (asyncio.IncompleteReadError, ConnectionError):
            await asyncio.sleep(0.05)  # cut (a slow consumer, say): back after its last id
        finally:
            writer.transport.abort()


async def _read_body(reader: asyncio.StreamReader, viewer: Viewer) -> None:
    """Read a chunked event stream to its end (the viewer keeps the last id of each whole event)."""
    buffer = b""
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            viewer.clean_end = bool(viewer.end)  # an end of body after `end`: the run's; else back
            return
        buffer += chunk[:-2]
        while (cut := buffer.find(b"\r\n\r\n")) >= 0:
            frame, buffer = buffer[:cut], buffer[cut + 4 :]
            kind = data = b""
            for line in frame.split(b"\r\n"):
                if line.startswith(b"id: "):
                    viewer.last_id = line[4:].decode()
                elif line.startswith(b"event: "):
                    kind = line[7:]
                elif line.startswith(b"data: "):
                    data = line[6:]
            if kind == b"t":
                viewer.tokens.append(int(data))
            elif kind == b"end":
                viewer.end = data.decode()


def brief(r: dict) -> str:
    return (
        f"{r['runs']} runs of {r['tokens']:,} tokens ({r['engine']}), {r['viewers']} viewers each, one reconnecting "
        f"every {RECONNECT_EVERY:g} s: delivered {100 * r['delivered']:.2f}%, {r['duplicates']} duplicates, "
        f"{r['missing']} missing, {r['out_of_order']} out of order, {r['clean_ends']} of {r['viewers_all']} "
        f"viewers ended completed with a proper end of body, {r['reconnects']:,} reconnects; server "
        f"{r['cpu_us_per_token']:.2f} us CPU per delivered token ({r['server_cpu_pct']:.0f}% of a core), "
        f"{r['kib_per_run_kept']:.0f} KiB per ended run kept"
        + (f" (and {r['redis_kib_per_run_kept']:.0f} KiB of Redis's)" if r["engine"] == "redis" else "")
        + f", {r['kib_per_run_peak']:.0f} KiB per run at the peak (its {r['viewers']} viewers connected); "
        f"{r['wall_s']:.1f} s"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.runs", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=Plan.runs_count)
    parser.add_argument("--tokens", type=int, default=Plan.runs_tokens)
    parser.add_argument("--viewers", type=int, default=Plan.runs_viewers)
    parser.add_argument("--every", type=float, default=Plan.runs_every)
    parser.add_argument("--redis", action="store_true", help="the hub on a redis-server of its own")
    parser.add_argument("--src", type=Path, help="the directory of the ssesup package the server runs (default: src/)")
    args = parser.parse_args(argv)
    from bench.run import ROOT, raise_nofile

    raise_nofile()
    plan = Plan(runs_count=args.runs, runs_tokens=args.tokens, runs_viewers=args.viewers, runs_every=args.every)
    with tempfile.TemporaryDirectory() as tmp:
        result = scenario(plan, Path(tmp) / "runs.log", args.src or ROOT / "src", args.redis)
    print(brief(result))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
