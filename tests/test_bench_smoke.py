"""The benchmark's smoke mode, ssesup against the floor: the bench still runs end to end, nothing is lost
(the realistic bursts' ids arrive in order), and a SIGTERM drain gives every stream its farewell and a
proper end of body; the systems take turns scenario by scenario (the bursts burst by burst); and the
many-cores load reads its bursts to their end on one and two workers; and the hub's instruction count
(bench/instructions.py, under valgrind) runs and repeats.

Timings are not asserted here (CI machines are noisy); the figures live in docs/benchmarks.md.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = "latency,burst,burst_fields,burst_dict,fanout,idle,drain"
LINE = r"^\s*(floor|ssesup)\s+(latency|burst\w*|fanout|idle|drain)\s"  # a scenario's result line


def smoke(scenarios: str) -> str:
    """``python -m bench --smoke`` of the floor and ssesup: its output, once it has exited 0 with every
    event of every system delivered."""
    command = [sys.executable, "-m", "bench", "--smoke", "--systems", "floor,ssesup", "--no-report"]
    run = subprocess.run(
        [*command, "--scenarios", scenarios],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "all systems delivered every event" in out
    assert len(re.findall(r"^machine probe: \{'python_ns': [\d.]+, .*'memory_gbps': [\d.]+\}$", out, re.M)) == 2, out
    return out


def test_bench_smoke_runs_and_ssesup_drains_every_stream_with_a_farewell():
    out = smoke(SCENARIOS)
    # The systems take turns per group of scenarios (bench/run.py GROUPS), not all of one system first,
    # and in the bursts burst by burst (measure_bursts): the floor's first, ssesup's first, the floor's second...
    bursts = ("latency", "burst", "burst_fields", "burst_dict")
    turns = [(system, "bursts" if name in bursts else name) for system, name in re.findall(LINE, out, re.M)]
    assert [group for group, _ in itertools.groupby(group for _, group in turns)] == [
        "bursts", "fanout", "idle", "drain"
    ], out  # fmt: skip
    for group in ("fanout", "idle", "drain"):
        assert [system for system, name in turns if name == group] == ["floor", "ssesup"], out
    latency_turns = re.findall(r"^\s*(floor|ssesup)\s+latency\s+turn (\d):", out, re.M)
    assert latency_turns == [(system, turn) for turn in "12" for system in ("floor", "ssesup")], out
    burst_turns = re.findall(r"^\s*(floor|ssesup)\s+(burst\w*)\s+turn (\d):", out, re.M)
    expected = [(system, kind, turn) for kind in bursts[1:] for turn in "12" for system in ("floor", "ssesup")]
    assert burst_turns == expected, out
    for kind in ("burst_fields", "burst_dict"):
        assert re.search(rf"^\s*ssesup\s+{kind}\s+[\d,]+ events/s \([\d,]+ ids checked in order\)", out, re.M), out
    drain = re.search(r"^\s*ssesup\s+drain\s+exit [\d.]+ s, clean end ([\d.]+)%, farewell ([\d.]+)%", out, re.M)
    assert drain is not None, out
    assert (float(drain[1]), float(drain[2])) == (100.0, 100.0)
    # The floor has no drain: its streams are cut when the server's graceful timeout runs out.
    floor = re.search(r"^\s*floor\s+drain\s+exit [\d.]+ s, clean end ([\d.]+)%, farewell ([\d.]+)%", out, re.M)
    assert floor is not None, out
    assert float(floor[2]) == 0.0


def test_bench_smoke_many_cores_reads_every_burst_to_its_end_on_one_and_two_workers():
    """The many-cores load (bench/cores.py) in smoke mode: each system's 1- and 2-worker servers deliver
    bursts that the clients read to their last id (a burst that ends early, skips back or is cut fails)."""
    out = smoke("cores")
    for system in ("floor", "ssesup"):
        line = re.search(
            rf"^\s*{system}\s+cores\s+1 worker ([\d,]+) events/s, 2 workers ([\d,]+) events/s: [\d.]+x", out, re.M
        )
        assert line is not None, out
        assert all(int(figure.replace(",", "")) > 0 for figure in line.groups()), out


def test_bench_instructions_counts_the_hub_s_instructions_per_delivery_and_they_repeat():
    """bench/instructions.py under valgrind (scripts/install-valgrind.sh): the floor's and the hub's
    instructions per delivered event at 50 subscribers, the hub's counted twice for the same code: the
    same count (the hash seed is fixed: the figure does not move with the machine)."""
    src = str(ROOT / "src")
    run = subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--subscribers", "50", "--src", src, "--src", src],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    counts = re.findall(r"^(floor|hub \d)(?: \(.*\))?: ([\d,]+) instructions per delivered event", run.stdout, re.M)
    assert [name for name, _ in counts] == ["floor", "hub 1", "hub 2"], run.stdout
    floor, first, second = (int(count.replace(",", "")) for _, count in counts)
    assert all(1_000 < count < 1_000_000 for count in (floor, first, second)), run.stdout
    assert second == pytest.approx(first, rel=0.01), run.stdout


def test_bench_smoke_runs_every_viewer_gets_every_token_once_through_reconnects():
    """The runs scenario (bench/runs.py) in smoke mode: 5 runs of 200 tokens, 3 viewers each, one of which
    reconnects every second: every viewer reads every token once, in order, then end and its body's end."""
    out = smoke("runs")
    line = re.search(
        r"^\s*ssesup\s+runs\s+(\d+) runs of ([\d,]+) tokens \(memory\), (\d+) viewers each, one reconnecting every "
        r"1 s: delivered ([\d.]+)%, (\d+) duplicates, (\d+) missing, (\d+) out of order, (\d+) of (\d+) viewers "
        r"ended completed with a proper end of body, ([\d,]+) reconnects; server [\d.]+ us CPU per delivered token",
        out,
        re.M,
    )
    assert line is not None, out
    runs, tokens, viewers, delivered, duplicates, missing, disorder, clean, everyone, reconnects = line.groups()
    assert (runs, tokens, viewers, delivered) == ("5", "200", "3", "100.00")
    assert (duplicates, missing, disorder) == ("0", "0", "0")
    assert clean == everyone == "15" and int(reconnects) >= 5  # each run's reconnecting viewer came back
    assert not re.search(r"^\s*floor\s+runs", out, re.M)  # ssesup's scenario alone
