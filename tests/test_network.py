"""Against the real network: peers that stop reading or vanish (no FIN, no RST) neither hang a deploy nor
keep their connections.

Every test runs a real server (uvicorn httptools+uvloop and h11+asyncio, gunicorn with uvicorn workers,
hypercorn) inside a network namespace of its own, its clients in other namespaces joined by veth pairs
(tests/netns.py). A *stuck* client reads its first event and then never reads again (a tiny receive
buffer); a *vanished* one reads, then its namespace drops every packet and its socket is closed, so
the server never hears of it. What is asserted is what the server side shows: the close reason the
app recorded, the server's TCP connections (``ss``: state, Send-Q, the descriptors open for each), its log,
and when its process exits. The bounds leave room for a loaded machine; docs/reliability.md has the
measured figures.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

import netns
from netns import NamespacedServer, Network, StreamClient, closes

APP = "apps.network_app:app"
HOST = ("--host", "0.0.0.0", "--port", str(netns.PORT))
SERVERS = {
    "uvicorn-httptools-uvloop": [
        sys.executable, "-m", "uvicorn", APP, *HOST, "--http", "httptools", "--loop", "uvloop",
    ],
    "uvicorn-h11-asyncio": [sys.executable, "-m", "uvicorn", APP, *HOST, "--http", "h11", "--loop", "asyncio"],
    "gunicorn-uvicorn-worker": [
        sys.executable, "-m", "gunicorn", APP, "-k", "uvicorn_worker.UvicornWorker", "-w", "1",
        "-b", f"0.0.0.0:{netns.PORT}",
    ],
    # --workers 0: the app runs in the process that gets the signal (docs/deploying.md: worker processes
    # get no signal, so no drain).
    "hypercorn-asyncio": [
        sys.executable, "-m", "hypercorn", APP, "-k", "asyncio", "--workers", "0", "-b", f"0.0.0.0:{netns.PORT}",
    ],
    # granian's connections live in Rust: ssesup finds their sockets by the scope's two ends (edge/sockets.py).
    "granian": [
        sys.executable, "-m", "granian", "--interface", "asgi", APP, "--host", "0.0.0.0", "--port", str(netns.PORT),
        "--http", "1", "--no-access-log",
    ],
    # daphne: Twisted's transport never makes a send wait; ssesup bounds it and holds daphne's shutdown.
    "daphne": [sys.executable, "-m", "daphne", "-b", "0.0.0.0", "-p", str(netns.PORT), APP],
}  # fmt: skip
# Servers that handle no SIGTERM (the drain's cases are not theirs: docs/deploying.md), in the other cases.
NO_SIGTERM = {
    "hypercorn-trio": [
        sys.executable, "-m", "hypercorn", APP, "-k", "trio", "--workers", "0", "-b", f"0.0.0.0:{netns.PORT}",
    ],
}  # fmt: skip
# What the issue asks is 2 s from the decision to close to a released connection, and an exit within
# drain_grace + 2 s; the tests allow 2 s more for a loaded machine.
RELEASE_BOUND = 2.0 + 2.0
EXIT_SLACK = 2.0 + 2.0
SERVER_ERROR = "ASGI callable returned without completing response"
TINY_RCVBUF = 4096


@pytest.fixture(autouse=True, scope="module")
def _namespaces() -> None:
    """These tests need network namespaces (root; scripts/install-netns-tools.sh installs ip and nft);
    where the kernel refuses them, each test fails with the reason: a vanished peer is never simulated."""
    reason = netns.namespaces_unavailable()
    if reason is not None:
        pytest.fail(f"needs network namespaces: {reason}")


@pytest.fixture
def close_file(tmp_path: Path) -> Path:
    return tmp_path / "closes.txt"


def start(net: Network, server: str, tmp_path: Path, close_file: Path, **settings: float):
    env = {"SSESUP_NET_CLOSE_FILE": str(close_file), "SSESUP_NET_SUPERVISOR": json.dumps(settings)}
    return netns.serve(net, {**SERVERS, **NO_SIGTERM}[server], tmp_path / "server.log", env)


def open_stream(net: Network, peer: str, path: str, *, stuck: bool = False) -> StreamClient:
    """A stream that has had its first event; a ``stuck`` one has a tiny receive buffer (it reads no more)."""
    client = StreamClient(net.connect(peer, rcvbuf=TINY_RCVBUF if stuck else None), path)
    client.read_until(b"data: hello")
    return client


def vanish(net: Network, peer: str, clients: list[StreamClient]) -> None:
    """``peer``'s namespace drops every packet, then its clients close: the server hears nothing."""
    net.blackhole(peer)
    for client in clients:
        client.sock.close()


def wait_for_closes(close_file: Path, ports: set[int], timeout: float) -> dict[int, tuple[float, str]]:
    """Client port -> (unix time, reason) of the streams of ``ports`` that closed within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        ended = {port: (at, reason) for at, _, reason, port in closes(close_file) if port in ports}
        if len(ended) == len(ports) or time.monotonic() > deadline:
            return ended
        time.sleep(0.05)


def wait_released(server: NamespacedServer, ports: set[int], decided_at: float) -> float:
    """Seconds from ``decided_at`` (unix time) until the server holds no connection of ``ports`` (no
    socket open, no descriptor, no bytes in the kernel); fails after RELEASE_BOUND."""
    deadline = decided_at + RELEASE_BOUND
    while True:
        if not (held := server.held(ports)):
            return time.time() - decided_at
        if time.time() > deadline:
            pytest.fail(f"{len(held)} connections still held {time.time() - decided_at:.1f} s after the close: {held}")
        time.sleep(0.05)


@pytest.mark.parametrize("server_kind", [*SERVERS, *NO_SIGTERM])
def test_a_send_timeout_releases_the_connection_of_a_client_that_stopped_reading(
    server_kind: str, tmp_path: Path, close_file: Path
) -> None:
    with netns.network("stuck") as net, start(net, server_kind, tmp_path, close_file, send_timeout=2) as server:
        stuck = [open_stream(net, "stuck", "/flood", stuck=True) for _ in range(2)]
        ports = {client.port for client in stuck}
        server.wait_unsendable(ports)

        ended = wait_for_closes(close_file, ports, timeout=15)

        assert sorted(reason for _, reason in ended.values()) == ["send_timeout", "send_timeout"]
        wait_released(server, ports, decided_at=max(at for at, _ in ended.values()))
        time.sleep(0.5)  # what a server logs for a response it saw end is logged by now
        assert SERVER_ERROR not in server.log()


@pytest.mark.parametrize("server_kind", [*SERVERS, *NO_SIGTERM])
def test_a_vanished_peer_on_an_idle_or_slow_stream_is_closed_with_dead_peer_and_released(
    server_kind: str, tmp_path: Path, close_file: Path
) -> None:
    settings = {"ping": 1, "dead_peer_timeout": 3, "send_timeout": 30}
    with netns.network("gone") as net, start(net, server_kind, tmp_path, close_file, **settings) as server:
        clients = [open_stream(net, "gone", "/idle"), open_stream(net, "gone", "/slow?every=1")]
        clients[1].read_until(b"data: tick 0")
        ports = {client.port for client in clients}
        vanished_at = time.time()
        vanish(net, "gone", clients)

        # Unacknowledged for 3 s, seen at a timer tick (a ping a second): well within 10 s.
        ended = wait_for_closes(close_file, ports, timeout=10)

        assert [reason for _, reason in ended.values()] == ["dead_peer", "dead_peer"], ended
        assert max(at for at, _ in ended.values()) - vanished_at < 10
        wait_released(server, ports, decided_at=max(at for at, _ in ended.values()))
        metrics = net.request("/metrics").decode()
        for route in ("/idle", "/slow"):
            assert f'ssesup_streams_closed_total{{reason="dead_peer",route="{route}"}} 1.0' in metrics
        assert SERVER_ERROR not in server.log()


@pytest.mark.parametrize("server_kind", SERVERS)
def test_sigterm_with_stuck_and_vanished_peers_exits_in_time_and_every_healthy_client_gets_its_farewell(
    server_kind: str, tmp_path: Path, close_file: Path
) -> None:
    grace = 3.0
    with (
        netns.network("live", "gone") as net,
        start(net, server_kind, tmp_path, close_file, drain_grace=grace) as server,
    ):
        healthy = [open_stream(net, "live", "/slow?every=0.5") for _ in range(3)]
        stuck = [open_stream(net, "live", "/flood", stuck=True) for _ in range(3)]
        server.wait_unsendable({c.port for c in stuck})
        vanished = [open_stream(net, "gone", "/slow?every=0.2") for _ in range(2)]
        for client in healthy:
            client.read_on(timeout=grace + 20)
        vanish(net, "gone", vanished)
        time.sleep(0.5)  # the server sends into the void: bytes it will never see acknowledged

        server.signal(signal.SIGTERM)
        exit_s = server.wait_exit(timeout=grace + 20)

        assert exit_s is not None, f"still running {grace + 20:.0f} s after SIGTERM"
        assert exit_s < grace + EXIT_SLACK, f"exited {exit_s:.1f} s after SIGTERM (grace {grace} s)"
        for client in healthy:
            client.join(5)
            assert b"event: farewell" in client.body and client.ended_cleanly, client.body[-300:]
        assert SERVER_ERROR not in server.log()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_force_closes_every_stream_left_at_once(
    second: signal.Signals, tmp_path: Path, close_file: Path
) -> None:
    # 60 streams are closed in waves across half the grace (30 s): the drain alone would outlast the test.
    grace = 60.0
    server_kind = "uvicorn-httptools-uvloop"
    with (
        netns.network("live", "gone") as net,
        start(net, server_kind, tmp_path, close_file, drain_grace=grace) as server,
    ):
        idle = [open_stream(net, "live", "/idle") for _ in range(60)]  # they read what is left at the end
        stuck = [open_stream(net, "live", "/flood", stuck=True) for _ in range(2)]
        server.wait_unsendable({c.port for c in stuck})
        vanish(net, "gone", [open_stream(net, "gone", "/slow?every=0.2") for _ in range(2)])
        time.sleep(0.5)
        server.signal(signal.SIGTERM)
        time.sleep(1.5)
        assert server.process.poll() is None, "a drain of 60 streams in a 60 s grace ended within 1.5 s"

        server.signal(second)
        exit_s = server.wait_exit(timeout=20)

        assert exit_s is not None, "still running 20 s after the second signal"
        assert exit_s < EXIT_SLACK, f"exited {exit_s:.1f} s after the second signal"
        for client in idle:
            client.read_on(timeout=5)
        for client in idle:
            client.join(6)
            assert b"event: farewell" in client.body and client.ended_cleanly, client.body[-300:]
