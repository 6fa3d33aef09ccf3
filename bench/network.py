"""The network scenarios: a deploy with stuck and vanished peers, and churn. Linux, root.

Each runs one system's app under uvicorn (uvloop, httptools, server defaults: no
``--timeout-graceful-shutdown``) inside a network namespace of its own; clients connect from other
namespaces over veth pairs (tests/netns.py owns the namespaces, the black-hole and the client
sockets). A *stuck* client reads its first event of ``/burst`` and never reads again (4 KiB receive
buffer); a *vanished* one reads ``/ticks``, then its namespace drops every packet and its socket is
closed: the server never hears a FIN or a RST.

* ``deploy``: healthy, stuck and vanished streams open, then SIGTERM. Measured: seconds to exit
  (killed at the cap), healthy streams that got a farewell (a ``retry:`` after the signal) and a
  proper end of body, and the server's socket descriptors and kernel send queue before the streams,
  with them, and at the last look before the process ended.
* ``churn``: rounds of healthy streams opened and closed by their clients, plus stuck and vanished
  ones, then a settle time. Measured before and after: RSS, socket descriptors, asyncio tasks,
  ssesup's pending timers (``/stats``), and the connections the server still holds.

Does not own: the uvicorn command line's other scenarios (bench/run.py), the report (bench/report.py).
"""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
import time
from pathlib import Path
from types import ModuleType

from bench.procstat import rss_kib

ROOT = Path(__file__).resolve().parent.parent
STUCK_RCVBUF = 4096


def _netns() -> ModuleType:
    """tests/netns.py, the namespace harness the network tests use too (one copy of it)."""
    spec = importlib.util.spec_from_file_location("netns", ROOT / "tests" / "netns.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("netns", module)
    spec.loader.exec_module(module)
    return module


def _command(app: str) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", app, "--loop", "uvloop", "--http", "httptools",
        "--host", "0.0.0.0", "--port", "8000", "--log-level", "warning", "--no-access-log", "--app-dir", str(ROOT),
    ]  # fmt: skip


def _open(netns: ModuleType, net, peer: str, path: str, stuck: bool = False):
    client = netns.StreamClient(net.connect(peer, rcvbuf=STUCK_RCVBUF if stuck else None), path)
    client.read_until(b"data: ")
    return client


def _send_q(server) -> int:
    return sum(c.send_q for c in server.connections())


def _stats(net) -> dict:
    """The app's ``/stats`` (tasks, timers), fetched from inside the server namespace."""
    head, _, body = net.request("/stats").partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"/stats answered {head[:40]!r}")
    return json.loads(body)


def deploy(app: str, env: dict, log: Path, healthy: int, stuck: int, vanished: int, cap: float) -> dict:
    netns = _netns()
    with netns.network("live", "gone") as net, netns.serve(net, _command(app), log, env) as server:
        fds_before = server.socket_fds()
        live = [_open(netns, net, "live", "/ticks?every=0.5") for _ in range(healthy)]
        for _ in range(stuck):
            _open(netns, net, "live", "/burst?n=1000000000&size=65536", stuck=True)
        gone = [_open(netns, net, "gone", "/ticks?every=0.2") for _ in range(vanished)]
        for client in live:
            client.read_on(timeout=cap + 10)
        net.blackhole("gone")
        for client in gone:
            client.sock.close()
        time.sleep(1.0)
        fds_open, send_q_open = server.socket_fds(), _send_q(server)
        marks = [len(client.body) for client in live]
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        fds_last, send_q_last = fds_open, send_q_open
        while server.process.poll() is None and time.monotonic() - signalled < cap:
            fds_last, send_q_last = server.socket_fds(), _send_q(server)
            time.sleep(0.05)
        exit_s = time.monotonic() - signalled
        killed = server.process.poll() is None
        if killed:
            server.process.kill()
            server.process.wait(10)
        for client in live:
            client.join(10)
    farewells = sum(b"retry:" in client.body[mark:] for client, mark in zip(live, marks, strict=True))
    return {
        "healthy": healthy,
        "stuck": stuck,
        "vanished": vanished,
        "exit_s": exit_s,
        "killed": killed,
        "farewell": farewells / healthy,
        "clean": sum(client.ended_cleanly for client in live) / healthy,
        "fds_before": fds_before,
        "fds_open": fds_open,
        "fds_last": fds_last,
        "send_q_open_kib": send_q_open / 1024,
        "send_q_last_kib": send_q_last / 1024,
        "asgi_incomplete": server.log().count("ASGI callable returned without completing response"),
    }


def churn(app: str, env: dict, log: Path, rounds: int, per_round: int, settle: float) -> dict:
    """``rounds`` rounds of ``per_round`` healthy streams (opened, read, closed by the client), one stuck
    and one vanished stream (each round's vanished peer has a namespace of its own); then ``settle`` s."""
    netns = _netns()
    peers = ["live", *(f"gone{i}" for i in range(rounds))]
    with netns.network(*peers) as net, netns.serve(net, _command(app), log, env) as server:
        for _ in range(20):  # warm-up: first-request costs are not a leak
            _open(netns, net, "live", "/ticks?every=0.2").sock.close()
        time.sleep(1.0)
        pid = server.pids()[0]
        before = {"rss_kib": rss_kib(pid), "fds": server.socket_fds(), **_stats(net)}
        started = time.monotonic()
        for i in range(rounds):
            clients = [_open(netns, net, "live", "/ticks?every=0.2") for _ in range(per_round)]
            _open(netns, net, "live", "/burst?n=1000000000&size=65536", stuck=True)
            gone = _open(netns, net, f"gone{i}", "/ticks?every=0.2")
            net.blackhole(f"gone{i}")
            gone.sock.close()
            for client in clients:
                client.sock.close()
        churn_s = time.monotonic() - started
        time.sleep(settle)
        after = {"rss_kib": rss_kib(pid), "fds": server.socket_fds(), **_stats(net)}
        held = [c for c in server.connections() if c.holds]
        return {
            "rounds": rounds,
            "streams": rounds * (per_round + 2),
            "churn_s": churn_s,
            "settle_s": settle,
            "before": before,
            "after": after,
            "rss_growth_kib": after["rss_kib"] - before["rss_kib"],
            "fds_growth": after["fds"] - before["fds"],
            "tasks_growth": after.get("tasks", 0) - before.get("tasks", 0),
            "timers_growth": (after.get("timers") or 0) - (before.get("timers") or 0),
            "held_after": len(held),
            "send_q_after_kib": sum(c.send_q for c in held) / 1024,
        }
