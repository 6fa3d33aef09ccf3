"""The scale scenario (bench/scale.py) in smoke mode, at 2,000 streams: it runs end to end (the compiled
load client built by the bench, two uvicorn processes on one redis-server of its own, a publisher), and
its checks hold: every stream got every broadcast and every event of its own user's channel once, with
no gap, through a drain of one server whose streams reconnect to the other with Last-Event-ID; no
answer 5xx.

Timings are not asserted here (CI machines are noisy); the figures live in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from bench.scale import Sysctls, hist_quantile, layout, sizes_for

ROOT = Path(__file__).resolve().parent.parent


def test_scale_smoke_delivers_every_event_once_through_a_drain(tmp_path):
    summary = tmp_path / "scale.json"
    argv = [sys.executable, "-m", "bench", "--smoke", "--systems", "ssesup", "--scenarios", "scale",
            "--json", str(summary)]  # fmt: skip
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "all systems delivered every event" in out
    line = re.search(r"^\s*ssesup\s+scale\s+2,000 streams \(2 servers, 1 clients\): .*; exactly once: yes$", out, re.M)
    assert line is not None, out
    (scale,) = json.loads(summary.read_text())["scale"]
    figures = scale["per_size"]["2k"]
    assert figures["verified_streams"] == 2000
    assert (figures["duplicates"], figures["missing"], figures["gap_events"]) == (0, 0, 0)
    assert figures["fanout_delivered"] == figures["user_delivered"] == 1.0
    assert figures["published_broadcast"] > 0 and figures["published_user"] > 0
    # The storm: server 0's streams (uid % 2 == 0) all came back, each after a farewell, with no 5xx.
    assert figures["storm_moved"] == figures["storm_readmitted"] == figures["storm_clean_ends"] == 1000
    assert figures["storm_5xx"] == 0 and figures["storm_all_back"]
    assert figures["reconnects"] == 1000


def test_sizes_and_layout_keep_every_process_within_its_file_limit():
    assert sizes_for(100_000) == [10_000, 25_000, 50_000, 100_000]
    assert sizes_for(30_000) == [10_000, 25_000, 30_000]
    assert sizes_for(2000) == [2000]
    for n in (2000, 10_000, 25_000, 50_000, 100_000):
        workers, clients = layout(n, 20_000)
        # After one server is drained, the others hold every stream within the limit.
        assert -(-n // (workers - 1)) <= 19_000 and -(-n // clients) <= 15_000
    assert layout(100_000, 20_000) == (8, 7)


def test_latency_quantiles_read_the_clients_histogram_of_100_us_buckets():
    hist = {0: 50, 9: 49, 10_000: 1}  # 50 under 0.1 ms, 49 at 0.9-1.0 ms, one at 1 s
    assert hist_quantile(hist, 0.5) == 0.1
    assert round(hist_quantile(hist, 0.99), 6) == 1.0
    assert round(hist_quantile(hist, 1.0), 6) == 1000.1


def test_kernel_settings_are_only_raised_and_restored(tmp_path, monkeypatch):
    files = {"net.core.somaxconn": "4096", "net.ipv4.tcp_mem": "100 200 300"}
    for name, value in files.items():
        path = tmp_path / name.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    monkeypatch.setattr(Sysctls, "_path", staticmethod(lambda name: tmp_path / name.replace(".", "/")))
    with Sysctls({"net.core.somaxconn": "1024", "net.ipv4.tcp_mem": "50 400 600"}) as sysctls:
        assert (tmp_path / "net/core/somaxconn").read_text() == "4096\n"  # never lowered: not written
        assert (tmp_path / "net/ipv4/tcp_mem").read_text() == "100 400 600"
    assert sysctls.record["net.ipv4.tcp_mem"] == {"found": "100 200 300", "wanted": "50 400 600", "set": "100 400 600"}
    assert (tmp_path / "net/ipv4/tcp_mem").read_text() == "100 200 300"
