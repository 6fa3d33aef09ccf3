"""The server matrix of docs/deploying.md, the cells no other test holds: streams that complete, clients
that leave, and the memory a client that stops reading costs, on every server ssesup claims, over
HTTP/1.1 and HTTP/2.

Each server runs as a subprocess on 127.0.0.1 serving tests/apps/network_app.py, which records why each
stream ended. Stuck clients released, dead peers and SIGTERM drains are in tests/test_network.py (HTTP/1.1,
in network namespaces) and tests/test_http2.py; drains with worker processes in tests/test_drain.py.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from h2client import H2Client
from netns import closes
from procs import free_port, serve, uvicorn_argv
from servers import read_response, recv_until
from test_http2 import KINDS as H2_KINDS
from test_http2 import app_env, server_argv, server_rss_mb

APP = "apps.network_app:app"
H1 = {
    "uvicorn": lambda port: uvicorn_argv(APP, port, "--log-level", "warning"),
    "gunicorn-uvicorn-worker": lambda port: [
        sys.executable, "-m", "gunicorn", APP, "-k", "uvicorn_worker.UvicornWorker", "-w", "1",
        "-b", f"127.0.0.1:{port}",
    ],
    "hypercorn-asyncio": lambda port: [
        sys.executable, "-m", "hypercorn", APP, "-k", "asyncio", "--workers", "0", "-b", f"127.0.0.1:{port}",
    ],
    "hypercorn-trio": lambda port: [
        sys.executable, "-m", "hypercorn", APP, "-k", "trio", "--workers", "0", "-b", f"127.0.0.1:{port}",
    ],
    "granian": lambda port: [
        sys.executable, "-m", "granian", "--interface", "asgi", APP, "--host", "127.0.0.1", "--port", str(port),
        "--http", "1", "--no-access-log",
    ],
    "daphne": lambda port: [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), APP],
}  # fmt: skip


def wait_for_reasons(close_file: Path, count: int, timeout: float = 10.0) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while len(closes(close_file)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return sorted((route, reason) for _, route, reason, _ in closes(close_file))


@pytest.mark.parametrize("kind", H1)
def test_http1_a_stream_completes_and_a_client_that_leaves_is_seen(kind: str, tmp_path: Path):
    close_file = tmp_path / "closes.txt"
    port = free_port()
    with serve(H1[kind](port), port, tmp_path, app_env(close_file)):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /count?n=3 HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head.lower()
        assert body.count(b"data: event ") == 3 and body.endswith(b"data: event 2\r\n\r\n")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /slow?every=0.1 HTTP/1.1\r\nHost: x\r\n\r\n")
            recv_until(sock, b"data: tick 2")
        assert wait_for_reasons(close_file, 2) == [("/count", "completed"), ("/slow", "client_disconnect")]


@pytest.mark.parametrize("kind", H2_KINDS)
def test_http2_a_stream_completes_and_a_stream_the_client_cancels_is_seen(kind: str, tmp_path: Path):
    close_file = tmp_path / "closes.txt"
    port = free_port()
    with serve(server_argv(kind, "127.0.0.1", port, tmp_path), port, tmp_path, app_env(close_file)):
        client = H2Client("127.0.0.1", port, tls=H2_KINDS[kind][2])
        complete = client.request("/count?n=3")
        assert client.wait(complete, lambda s: s.finished)
        assert complete.ended and complete.body.count(b"data: event ") == 3
        leaving = client.request("/slow?every=0.1")
        client.wait_for(leaving, b"data: tick 2")
        client.cancel(leaving)  # an EventSource closed: the connection stays
        assert wait_for_reasons(close_file, 2) == [("/count", "completed"), ("/slow", "client_disconnect")]
        assert client.close_error is None
        client.close()


@pytest.mark.parametrize("kind", H1)
def test_http1_a_client_that_stops_reading_costs_the_server_bounded_memory(kind: str, tmp_path: Path):
    close_file = tmp_path / "closes.txt"
    port = free_port()
    with serve(H1[kind](port), port, tmp_path, app_env(close_file, send_timeout=30)) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        recv_until(sock, b"data: hello")
        time.sleep(0.5)  # the kernel's buffers fill
        before = peak = server_rss_mb(server)
        started = time.monotonic()
        while time.monotonic() - started < 3:  # 64 KiB events, as fast as the server takes them
            peak = max(peak, server_rss_mb(server))
            time.sleep(0.1)
        sock.close()
        assert peak - before < 30, f"server RSS {before:.0f} -> {peak:.0f} MB in 3 s"


# The matrix's rows in docs/deploying.md, and the tests that hold their cells (file, function, parameter id).
STREAMS = "test_http1_a_stream_completes_and_a_client_that_leaves_is_seen"
CELLS = {
    ("`uvicorn` (httptools or h11, asyncio or uvloop)", "HTTP/1.1"): [
        ("test_server_matrix.py", STREAMS, "uvicorn"),
        ("test_server_matrix.py", "test_http1_a_client_that_stops_reading_costs_the_server_bounded_memory", "uvicorn"),
        ("test_network.py", "test_sigterm_with_stuck_and_vanished_peers", "uvicorn-httptools-uvloop"),
        ("test_network.py", "test_a_send_timeout_releases_the_connection", "uvicorn-h11-asyncio"),
        ("test_network.py", "test_a_vanished_peer_on_an_idle_or_slow_stream", "uvicorn-httptools-uvloop"),
        ("test_drain.py", "test_sigterm_drains_under_other_servers", "uvicorn-workers-2"),
    ],
    ("`gunicorn -k uvicorn_worker.UvicornWorker`", "HTTP/1.1"): [
        ("test_server_matrix.py", STREAMS, "gunicorn"),
        ("test_network.py", "test_sigterm_with_stuck_and_vanished_peers", "gunicorn-uvicorn-worker"),
        ("test_drain.py", "test_sigterm_drains_under_other_servers", "gunicorn-2-uvicorn-workers"),
    ],
    ("`hypercorn --workers 0` (asyncio)", "HTTP/1.1"): [
        ("test_server_matrix.py", STREAMS, "hypercorn-asyncio"),
        ("test_network.py", "test_sigterm_with_stuck_and_vanished_peers", "hypercorn-asyncio"),
    ],
    ("`hypercorn --workers 0` (asyncio)", "HTTP/2, h2c and TLS"): [
        ("test_server_matrix.py", "test_http2_a_stream_completes", "hypercorn-asyncio-tls"),
        ("test_http2.py", "test_a_stalled_stream_ends_alone", "hypercorn-asyncio-h2c"),
        ("test_http2.py", "test_a_client_that_stops_reading_its_connection", "hypercorn-asyncio-h2c"),
        ("test_http2.py", "test_sigterm_drains_every_healthy_sibling", "hypercorn-asyncio-tls"),
        ("test_http2.py", "test_a_vanished_peer_closes_every_stream", "hypercorn-asyncio-h2c"),
        ("test_browser_http2.py", "test_a_page_streams_twelve_event_sources", "hypercorn-asyncio-tls"),
    ],
    ("`hypercorn -k trio --workers 0`", "HTTP/1.1"): [
        ("test_server_matrix.py", STREAMS, "hypercorn-trio"),
        ("test_network.py", "test_a_send_timeout_releases_the_connection", "hypercorn-trio"),
        ("test_network.py", "test_a_vanished_peer_on_an_idle_or_slow_stream", "hypercorn-trio"),
    ],
    ("`hypercorn -k trio --workers 0`", "HTTP/2, h2c and TLS"): [
        ("test_server_matrix.py", "test_http2_a_stream_completes", "hypercorn-trio-tls"),
        ("test_http2.py", "test_a_stalled_stream_ends_alone", "hypercorn-trio-h2c"),
        ("test_http2.py", "test_a_client_that_stops_reading_its_connection", "hypercorn-trio-tls"),
        ("test_http2.py", "test_a_vanished_peer_closes_every_stream", "hypercorn-trio-h2c"),
    ],
    ("`hypercorn`", "HTTP/3"): [],
    ("`granian --interface asgi`", "HTTP/1.1"): [
        ("test_server_matrix.py", STREAMS, "granian"),
        ("test_network.py", "test_sigterm_with_stuck_and_vanished_peers", "granian"),
        ("test_drain.py", "test_sigterm_drains_under_other_servers", "granian-workers-2"),
    ],
    ("`granian --interface asgi`", "HTTP/2, h2c and TLS"): [
        ("test_server_matrix.py", "test_http2_a_stream_completes", "granian-tls"),
        ("test_http2.py", "test_a_stalled_stream_ends_alone", "granian-h2c"),
        ("test_http2.py", "test_sigterm_drains_every_healthy_sibling", "granian-tls"),
        ("test_http2.py", "test_a_vanished_peer_closes_every_stream", "granian-h2c"),
        ("test_browser_http2.py", "test_a_page_streams_twelve_event_sources", "granian-tls"),
    ],
    ("`daphne`", "HTTP/1.1"): [
        ("test_server_matrix.py", "test_http1_a_client_that_stops_reading_costs_the_server_bounded_memory", "daphne"),
        ("test_network.py", "test_sigterm_with_stuck_and_vanished_peers", "daphne"),
        ("test_drain.py", "test_sigterm_drains_under_other_servers", "daphne"),
    ],
    ("`daphne`", "HTTP/2"): [],
}


def test_every_row_of_the_server_matrix_is_held_by_tests_that_exist():
    text = (Path(__file__).parent.parent / "docs" / "deploying.md").read_text()
    table = text[text.index("| server | protocol | streams |") :].split("\n\n")[0].splitlines()[2:]
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]) for line in table}
    assert rows == set(CELLS)
    tests = Path(__file__).parent
    for row, cells in CELLS.items():
        for file, function, parameter in cells:
            source = (tests / file).read_text()
            assert f"def {function}" in source, (row, file, function)
            assert f'"{parameter}' in source, (row, file, parameter)  # the parameter's id (or a key it starts)
