"""HTTP/2: many streams on one connection, and one stream's ending never cuts its siblings.

A raw HTTP/2 client (tests/h2client.py) opens healthy streams and one *stalled* stream on one
connection: it never reopens the stalled stream's flow-control window (the server may send it 64 KiB,
then no more) while it reads its siblings and reopens the connection's window. The servers run as
subprocesses (hypercorn's asyncio and trio workers, h2c with prior knowledge and TLS with ALPN ``h2``),
serving tests/apps/network_app.py, which records why and when each stream ended.

What is asserted is what a user sees: the stalled stream reset alone (``RST_STREAM``), its siblings still
streaming (more ticks, no end, no reset, the connection up), each close reason true, the server's memory
bounded while a stream is stalled, farewells and proper ends for every healthy sibling in a SIGTERM
drain, and, for a peer that vanished, every stream on its connection closed ``dead_peer`` at once.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import netns
from h2client import H2Client, H2Stream
from netns import closes
from procs import ServerProcess, free_port, serve
from tls import self_signed

APP = "apps.network_app:app"
CANCEL = 0x8  # the RST_STREAM code of a stream the server no longer serves
# Each server as a command (it serves on BIND) and whether it speaks TLS. hypercorn --workers 0: the app
# runs in the process that gets SIGTERM (docs/deploying.md). granian --http auto: HTTP/1.1 and HTTP/2
# with prior knowledge on one port (the namespaced tests ask for readiness in HTTP/1.1).
KINDS = {
    "hypercorn-asyncio-h2c": ("hypercorn", "asyncio", False),
    "hypercorn-asyncio-tls": ("hypercorn", "asyncio", True),
    "hypercorn-trio-h2c": ("hypercorn", "trio", False),
    "hypercorn-trio-tls": ("hypercorn", "trio", True),
    "granian-h2c": ("granian", "auto", False),
    "granian-tls": ("granian", "auto", True),
}
HELLO = b"data: hello"


def server_argv(kind: str, host: str, port: int, tmp_path: Path) -> list[str]:
    server, mode, tls = KINDS[kind]
    if server == "hypercorn":
        argv = [sys.executable, "-m", "hypercorn", APP, "-k", mode, "--workers", "0", "-b", f"{host}:{port}"]
    else:
        argv = [sys.executable, "-m", "granian", "--interface", "asgi", APP, "--host", host, "--port", str(port)]
        argv += ["--http", mode, "--no-access-log"]
    if tls:
        cert, key = self_signed(tmp_path)
        if server == "hypercorn":
            argv += ["--certfile", str(cert), "--keyfile", str(key)]
        else:
            argv += ["--ssl-certificate", str(cert), "--ssl-keyfile", str(key)]
    return argv


def app_env(close_file: Path, **settings: float) -> dict[str, str]:
    return {"SSESUP_NET_CLOSE_FILE": str(close_file), "SSESUP_NET_SUPERVISOR": json.dumps(settings)}


@contextmanager
def h2_server(kind: str, tmp_path: Path, close_file: Path, **settings: float) -> Iterator[tuple[ServerProcess, bool]]:
    port = free_port()
    argv = server_argv(kind, "127.0.0.1", port, tmp_path)
    with serve(argv, port, tmp_path, app_env(close_file, **settings)) as server:
        yield server, KINDS[kind][2]


def server_rss_mb(server: ServerProcess) -> float:
    """The resident memory of the server's processes (granian serves from a worker process)."""
    return sum(rss_mb(pid) for pid in session_pids(server.process.pid))


def session_pids(session: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(stat[3]) == session:
                found.append(int(entry.name))
    return found


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def open_streams(client: H2Client, healthy: int, path: str = "/slow?every=0.2") -> tuple[list[H2Stream], H2Stream]:
    stalled = client.request("/flood", stalled=True)  # first: a drain's first wave closes it
    streams = [client.request(path) for _ in range(healthy)]
    for stream in [*streams, stalled]:
        client.wait_for(stream, HELLO)
    return streams, stalled


def reasons(close_file: Path) -> list[tuple[str, str]]:
    return sorted((route, reason) for _, route, reason, _ in closes(close_file))


@pytest.mark.parametrize("kind", KINDS)
def test_a_stalled_stream_ends_alone_at_its_send_timeout_and_its_siblings_stream_on(kind: str, tmp_path: Path):
    close_file = tmp_path / "closes.txt"
    with h2_server(kind, tmp_path, close_file, send_timeout=2) as (server, tls):
        client = H2Client("127.0.0.1", server.port, tls=tls)
        healthy, stalled = open_streams(client, 3)
        started = time.time()
        before = peak = server_rss_mb(server)
        # The stalled stream's send waits (at ssesup's bound on hypercorn, granian's own on granian): its
        # send_timeout (2 s, checked every 0.5 s) ends it. Meanwhile the server's memory stays put.
        while not closes(close_file) and time.time() - started < 10:
            peak = max(peak, server_rss_mb(server))
            time.sleep(0.1)
        time.sleep(0.3)  # the reset, where there is one, is on its way
        assert reasons(close_file) == [("/flood", "send_timeout")], f"server RSS {before:.0f} -> {peak:.0f} MB"
        assert closes(close_file)[0][0] - started < 2 + 0.5 + 2  # the timeout, a check interval, a loaded machine
        assert peak - before < 30, f"server RSS {before:.0f} -> {peak:.0f} MB while a stream was stalled"
        assert not stalled.ended
        if KINDS[kind][0] == "hypercorn":
            assert stalled.reset_code == CANCEL  # reset alone
        else:
            # granian keeps a stream whose window is shut even once its app has returned (docs/deploying.md):
            # no reset reaches the client; the stream's bytes wait, bounded, in granian.
            assert stalled.reset_code is None

        sizes = [len(stream.body) for stream in healthy]
        time.sleep(1.5)  # ticks every 0.2 s go on arriving on every sibling
        for stream, size in zip(healthy, sizes, strict=True):
            assert stream.body.count(b"data: tick") >= 5 + stream.body[:size].count(b"data: tick")
            assert not stream.finished, (stream.reset_code, stream.ended)
        assert client.close_error is None and client.goaway is None
        assert reasons(close_file) == [("/flood", "send_timeout")]  # nothing else ended

        client.close()
        deadline = time.monotonic() + 5
        while len(closes(close_file)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reasons(close_file) == [("/flood", "send_timeout")] + [("/slow", "client_disconnect")] * 3


@pytest.mark.parametrize("kind", ["hypercorn-asyncio-h2c", "hypercorn-asyncio-tls", "granian-h2c", "granian-tls"])
def test_sigterm_drains_every_healthy_sibling_of_a_stalled_stream_with_its_farewell(kind: str, tmp_path: Path):
    grace = 3.0
    close_file = tmp_path / "closes.txt"
    with h2_server(kind, tmp_path, close_file, drain_grace=grace) as (server, tls):
        client = H2Client("127.0.0.1", server.port, tls=tls)
        healthy, stalled = open_streams(client, 59, path="/slow?every=0.5")
        time.sleep(0.5)  # the stalled stream's window is shut: what it is sent now stays on the server

        server.signal(signal.SIGTERM)
        started = time.monotonic()
        for stream in healthy:
            client.wait(stream, lambda s: s.finished, timeout=grace + 10)
        exited = server.process.wait(grace + 10)

        farewells = [s for s in healthy if b"event: farewell" in s.body and s.ended and s.reset_code is None]
        assert len(farewells) == 59, [(s.stream_id, s.ended, s.reset_code, s.body[-80:]) for s in healthy]
        assert not stalled.ended
        if KINDS[kind][0] == "hypercorn":
            assert stalled.reset_code == CANCEL, (stalled.ended, stalled.reset_code)
        else:  # granian keeps the stuck stream: its connection is released once its siblings are done
            assert client.closed_at is not None and client.closed_at - started < grace + 4
        assert time.monotonic() - started < grace + 4, f"exited ({exited}) {time.monotonic() - started:.1f} s after"
        assert reasons(close_file) == [("/flood", "drained")] + [("/slow", "drained")] * 59


@pytest.fixture
def _namespaces() -> None:
    reason = netns.namespaces_unavailable()
    if reason is not None:
        pytest.fail(f"needs network namespaces: {reason}")


@pytest.mark.usefixtures("_namespaces")
@pytest.mark.parametrize("kind", ["hypercorn-asyncio-h2c", "hypercorn-trio-h2c", "granian-h2c"])  # readiness: HTTP/1.1
def test_a_vanished_peer_closes_every_stream_on_its_connection_with_dead_peer_at_once(kind: str, tmp_path: Path):
    close_file = tmp_path / "closes.txt"
    tls = KINDS[kind][2]
    argv = server_argv(kind, "0.0.0.0", netns.PORT, tmp_path)
    env = app_env(close_file, ping=1, dead_peer_timeout=3, send_timeout=30)
    with netns.network("gone") as net, netns.serve(net, argv, tmp_path / "server.log", env) as server:
        sock = net.connect("gone")
        port = sock.getsockname()[1]
        client = H2Client(net.peers["gone"].server_address, netns.PORT, tls=tls, sock=sock)
        streams = []
        # Opened 0.7 s apart, their timers look at the socket at different moments: each would find
        # the peer dead on its own at a different time.
        for path in ("/idle", "/slow?every=1", "/idle", "/slow?every=1"):
            stream = client.request(path)
            client.wait_for(stream, HELLO)
            streams.append(stream)
            time.sleep(0.7)
        vanished_at = time.time()
        net.blackhole("gone")
        client.close()

        deadline = time.monotonic() + 15
        while len(closes(close_file)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        ended = [(at, route, reason) for at, route, reason, client_port in closes(close_file) if client_port == port]
        assert sorted(reason for _, _, reason in ended) == ["dead_peer"] * 4, ended
        times = [at for at, _, _ in ended]
        assert max(times) - min(times) < 0.5, ended  # at once, when the first stream found the peer dead
        assert max(times) - vanished_at < 10
        deadline = time.time() + 4
        while server.held({port}) and time.time() < deadline:
            time.sleep(0.05)
        assert not server.held({port}), server.held({port})


@pytest.mark.parametrize("kind", ["hypercorn-asyncio-h2c", "hypercorn-trio-tls"])
def test_a_client_that_stops_reading_its_connection_has_each_stream_reset_then_the_connection_released(
    kind: str, tmp_path: Path
):
    """The whole peer stuck (it reads nothing at all): each stream ends with its send_timeout; the last
    one's connection, with nothing else on it and nothing draining, is released."""
    close_file = tmp_path / "closes.txt"
    with h2_server(kind, tmp_path, close_file, send_timeout=2) as (server, tls):
        client = H2Client("127.0.0.1", server.port, tls=tls, rcvbuf=4096)
        streams = [client.request("/flood") for _ in range(2)]
        for stream in streams:
            client.wait_for(stream, HELLO)
        client.reading.clear()
        port = client.sock.getsockname()[1]
        deadline = time.monotonic() + 15
        while len(closes(close_file)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reasons(close_file) == [("/flood", "send_timeout")] * 2
        decided = time.monotonic()
        while held(port) and time.monotonic() - decided < 4:
            time.sleep(0.05)
        assert not held(port), held(port)
        client.close()


def held(client_port: int) -> list[str]:
    """The server's side of the client's connection, while it holds it (open, or bytes queued)."""
    import subprocess

    out = subprocess.run(["ss", "-tanH", f"( dport = :{client_port} )"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[0] in ("ESTAB", "CLOSE-WAIT") or line.split()[2] != "0"]
