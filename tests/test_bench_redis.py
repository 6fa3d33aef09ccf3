"""The benchmark's scenarios across processes on Redis, in smoke mode (bench/redis_hub.py): each runs end
to end against a redis-server of its own (scripts/install-redis.sh) and two uvicorn processes, and
nothing is lost. ``hub_resume``: the client moved from a drained process to another gets every number
once, in order, with no gap. ``hub_redis``: ssesup and the anchor (sse-starlette with broadcaster)
deliver every event to every stream.

Timings are not asserted here (CI machines are noisy); the figures live in docs/benchmarks.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(systems: str, scenario: str) -> str:
    argv = [sys.executable, "-m", "bench", "--smoke", "--systems", systems, "--scenarios", scenario, "--no-report"]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "all systems delivered every event" in out
    return out


def test_hub_resume_moves_a_client_to_another_process_with_every_number_once_in_order():
    out = run_bench("ssesup", "hub_resume")
    line = re.search(
        r"^\s*ssesup\s+hub_resume received ([\d,]+) of ([\d,]+) numbers: (\d+) duplicates, (\d+) missing, "
        r"in order (\w+), (\d+) gap events, delivered ([\d.]+)%; first event from B \d+ ms after SIGTERM to A, "
        r"A exited after [\d.]+ s; [\d,]+ publishes/s \(([\d,]+) through A, ([\d,]+) through B\)",
        out,
        re.M,
    )
    assert line is not None, out
    received, events, duplicates, missing, in_order, gaps, delivered, through_a, through_b = line.groups()
    assert received == events == "1,000"
    assert (duplicates, missing, in_order, gaps, delivered) == ("0", "0", "yes", "0", "100.00")
    # Both processes published, and the stream moved: some of it came through each hub.
    assert int(through_a.replace(",", "")) > 0 and int(through_b.replace(",", "")) > 0


def test_hub_redis_delivers_every_event_to_every_stream_of_both_processes_for_ssesup_and_the_anchor():
    out = run_bench("ssesup,sse-starlette", "hub_redis")
    for system in ("ssesup", "sse-starlette"):
        line = re.search(
            rf"^\s*{system}\s+hub_redis 40 streams on 2 processes, [\d.]+ publishes/s: .* "
            r"delivered ([\d.]+)% of ([\d,]+)",
            out,
            re.M,
        )
        assert line is not None, out
        assert line[1] == "100.00" and int(line[2].replace(",", "")) > 0, line[0]
    assert re.search(r"^\s*ssesup\s+hub_redis .*x the in-process hub's .*x Hub\(\) in memory over sockets", out, re.M)


def test_hub_storm_moves_every_client_to_another_process_with_every_event_once_within_the_connection_bound():
    out = run_bench("ssesup", "hub_storm")
    line = re.search(
        r"^\s*ssesup\s+hub_storm ([\d,]+) clients drained from A onto B, ([\d,]+) events at [\d.]+/s: delivered "
        r"([\d.]+)%, (\d+) duplicates, (\d+) missing, (\d+) gaps, (\d+) out of order, (\d+) failed publishes; "
        r"every client on B [\d.]+ s after SIGTERM; Redis connections at most (\d+) \(two processes\)",
        out,
        re.M,
    )
    assert line is not None, out
    clients, events, delivered, duplicates, missing, gaps, disorder, failed, connections = line.groups()
    assert (clients, events, delivered) == ("50", "100", "100.00")
    assert (duplicates, missing, gaps, disorder, failed) == ("0",) * 5
    assert 0 < int(connections) <= 2 * (16 + 1)  # each process: its pool's bound and its reader
