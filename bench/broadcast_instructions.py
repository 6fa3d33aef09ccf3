"""Instructions per delivery of a broadcast to subscribers of two channels, counted by valgrind:
``python -m bench.broadcast_instructions [--subscribers 2000] [--src DIR ...]``.

The scale scenario's subscription in one process, without the network: ``--subscribers`` subscriptions
``hub.subscribe(f"user:{i}", "broadcast").encoded()`` on ``Hub("redis://")`` (a redis-server of its
own, fresh for each run), each user channel published to once first (so its position is a Redis stream id, as in the
scenario, not a small number), each subscription taken by a task of its own that drops the bytes; then
``FEW`` or ``MANY`` publishes to ``broadcast``, each awaited until every subscriber has taken it. The
process runs under callgrind twice, and the difference of the two counts per delivery is reported (the
start, the joins and the warm-up cancel out): what the hub's reader, the fan-out, the mailbox and the
subscription's framing (the id of two positions) cost per subscriber per event, less the sends. Python's
hash seed is fixed.
The count still moves from run to run (where the reader's reads from Redis and the wake-ups fall): two
runs of one tree at 500 subscribers gave 51,110 and 59,909, so a difference under a sixth needs repeated
runs.

Owns: this measurement. Does not own the hub or the redis-server (bench/redis_hub.py). Needs
``valgrind`` and ``redis-server``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path

from bench.instructions import callgrind_count

ROOT = Path(__file__).resolve().parent.parent
FEW, MANY = 5, 25


async def _run(url: str, subscribers: int, publishes: int) -> None:
    from ssesup import Event, Hub

    hub = Hub(url, metrics=False)
    for i in range(subscribers):
        await hub.publish(f"user:{i}", Event("before"))
    taken = [0] * subscribers
    progress = asyncio.Event()

    async def take(index: int, items) -> None:
        async for _ in items:
            taken[index] += 1
            progress.set()

    tasks = [
        asyncio.create_task(take(i, hub.subscribe(f"user:{i}", "broadcast").encoded())) for i in range(subscribers)
    ]

    async def until(count: int) -> None:
        while min(taken) < count:
            progress.clear()
            await progress.wait()

    await until(1)  # every subscription started (its first item, an id)
    for n in range(1, publishes + 2):  # one warm-up publish
        await hub.publish("broadcast", Event(f"broadcast {n}"))
        await until(1 + n)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await hub.aclose()


def instructions(subscribers: int, publishes: int, src: Path | None) -> int:
    """One run under callgrind, on a redis-server of its own (every run starts from the same state)."""
    from bench.redis_hub import RedisServer
    from bench.run import RAW

    with RedisServer(RAW / "broadcast-instructions.log") as redis:
        return _instructions(redis.url, subscribers, publishes, src)


def _instructions(url: str, subscribers: int, publishes: int, src: Path | None) -> int:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("bench.broadcast_instructions needs valgrind (scripts/install-valgrind.sh)")
    path = os.pathsep.join(p for p in (str(src) if src else "", str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "bench.broadcast_instructions", "--child", str(publishes), "--url", url,
               "--subscribers", str(subscribers)]  # fmt: skip
    return callgrind_count(valgrind, command, {**os.environ, "PYTHONPATH": path}, timeout=3600)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m bench.broadcast_instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--src", type=Path, action="append", default=[], help="an ssesup package's directory")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        import uvloop

        uvloop.run(_run(args.url, args.subscribers, args.child))
        return {}
    counted: dict[str, float] = {}
    for src in args.src or [None]:
        few = instructions(args.subscribers, FEW, src)
        many = instructions(args.subscribers, MANY, src)
        count = counted[str(src)] = (many - few) / ((MANY - FEW) * args.subscribers)
        print(f"{src or 'ssesup'}: {count:,.0f} instructions per delivery ({args.subscribers} subscribers)")
    return counted


if __name__ == "__main__":
    main()
