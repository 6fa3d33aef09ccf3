"""What one stream of the scale scenario holds in its server: ``python -m bench.scale_memory [--streams N]``.

One uvicorn process of the scale app (bench/apps/ssesup_scale_app.py) on a redis-server of its own,
with ``PYTHONTRACEMALLOC=1`` and ``/debug/memory``; a warm-up of 100 streams opened and closed, then a
mark (a tracemalloc snapshot and the count of live objects per type), then ``N`` streams opened by the
compiled client (bench/scale_client.c), held, and compared with the mark: the KiB per stream
allocated by each source line (the top ones), the objects per stream by type, and the process's RSS
per stream (tracemalloc's own bookkeeping included, so above the scenario's). Prints a table; with
``--json PATH`` writes the figures.

Owns: this measurement. Does not own the app, the client's build (bench/scale.py) or the redis-server
(bench/redis_hub.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path

from bench.procstat import rss_kib
from bench.scale import Child, build_client

ROOT = Path(__file__).resolve().parent.parent


def measure(streams: int, log_dir: Path, src: Path, top: int = 25) -> dict:
    from bench.client import Plan
    from bench.redis_hub import RedisServer
    from bench.run import Server, System

    log = log_dir / "scale-memory.log"
    binary = build_client(log_dir)
    with RedisServer(log) as redis:
        env = {"BENCH_REDIS_URL": redis.url, "BENCH_SCALE_TRACE": "1", "PYTHONTRACEMALLOC": "1"}
        system = System("ssesup", "bench.apps.ssesup_scale_app:app", "ssesup at scale")
        with Server(system, Plan(), False, log, src, ("--backlog", "4096"), env) as server:
            base = f"http://127.0.0.1:{server.port}/debug/memory"

            def client(first: int, count: int) -> Child:
                argv = [str(binary), "--targets", f"127.0.0.1:{server.port}", "--src", "127.0.0.20",
                        "--uids", f"{first}:{count}"]  # fmt: skip
                child = Child(argv, log)
                child.answer(10)
                return child

            warm = client(streams, 100)
            warm.ask("open", 60)
            warm.close()
            time.sleep(1)
            urllib.request.urlopen(f"{base}?mark=1", timeout=60).read()
            rss0 = rss_kib(server.pid)
            held = client(0, streams)
            try:
                held.ask("open", 60 + streams / 50)
                time.sleep(1)
                rss1 = rss_kib(server.pid)
                found = json.loads(urllib.request.urlopen(f"{base}?top={top}", timeout=120).read())
            finally:
                held.close()
    return {
        "streams": streams,
        "rss_kib_per_stream": (rss1 - rss0) / streams,
        "traced_kib_per_stream": found["traced_kib"] / streams,
        "lines": [
            {
                "where": _short(line["where"]),
                "kib_per_stream": line["kib"] / streams,
                "blocks_per_stream": line["blocks"] / streams,
            }
            for line in found["lines"]
        ],
        "objects_per_stream": [(name, count / streams) for name, count in found["objects"]],
    }


def _short(where: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--src", default=str(ROOT / "src"), help="the directory of the ssesup package to measure")
    parser.add_argument("--top", type=int, default=25, help="source lines and types to list")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    from bench.run import RAW, raise_nofile

    raise_nofile()
    out = measure(args.streams, RAW, Path(args.src), args.top)
    print(f"{out['streams']:,} streams: RSS {out['rss_kib_per_stream']:.1f} KiB per stream under tracemalloc, "
          f"{out['traced_kib_per_stream']:.1f} KiB traced")  # fmt: skip
    own = sum(line["kib_per_stream"] for line in out["lines"] if line["where"].startswith("ssesup/"))
    print(f"  ssesup's own lines among those listed: {own:.2f} KiB per stream")
    for line in out["lines"]:
        print(f"  {line['kib_per_stream']:7.2f} KiB {line['blocks_per_stream']:6.2f} blocks  {line['where']}")
    print("objects per stream: " + ", ".join(f"{name} {count:.2f}" for name, count in out["objects_per_stream"]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
