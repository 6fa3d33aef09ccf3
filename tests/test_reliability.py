"""What holds when clients and generators misbehave: connections released, blocked sync generators
abandoned, cleanups given their time, HEAD, large events, server-side send errors. Real uvicorn, real
sockets. (Vanished peers across a real network: tests/test_network.py.)"""

from __future__ import annotations

import signal
import socket
import time

import pytest
from prometheus_client import REGISTRY

from apps.reliability_app import make_app
from procs import free_port, serve, uvicorn_argv
from servers import UvicornThread, raw_request, read_response, recv_until, wait_until
from ssesup import Supervisor
from ssesup.sync_source import abandoned_threads

SERVERS = [
    pytest.param({"http": "httptools", "loop": "uvloop"}, id="httptools-uvloop"),
    pytest.param({"http": "h11", "loop": "asyncio"}, id="h11-asyncio"),
]


def serve_app(supervisor: Supervisor, **config):
    app, recorder, blocker = make_app(supervisor)
    server = UvicornThread(app, log_config=None, **config)
    server.recorder = recorder
    server.blocker = blocker
    server.supervisor = supervisor
    return server


def live_streams(server) -> int:
    return server.call(lambda: len(server.supervisor.loop_supervision.streams))


def stuck_client(port: int, path: str) -> socket.socket:
    """A client that asks for ``path`` and then never reads (a tiny receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def is_reset(sock: socket.socket, timeout: float) -> bool:
    """Whether the server reset (or closed) the connection within ``timeout`` (reads what is buffered)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 20):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            continue
    return False


@pytest.mark.parametrize("config", SERVERS)
def test_a_stalled_stream_releases_its_connection_and_the_server_logs_no_error(config, uvicorn_log):
    with serve_app(Supervisor(ping=0), **config) as server:
        clients = [stuck_client(server.port, "/fast?send_timeout=1") for _ in range(3)]
        wait_until(lambda: server.recorder.reasons("/fast") == ["send_timeout"] * 3, timeout=10)
        closed_at = time.monotonic()
        assert all(is_reset(sock, timeout=2.5) for sock in clients)
        assert time.monotonic() - closed_at < 3
        wait_until(lambda: live_streams(server) == 0)
        for sock in clients:
            sock.close()
    assert "without completing response" not in uvicorn_log.text
    assert "Exception in ASGI application" not in uvicorn_log.text


def test_blocked_sync_generators_are_abandoned_and_leave_the_pool_and_the_app_usable():
    supervisor = Supervisor(ping=0, sync_threads=4)
    with serve_app(supervisor) as server:
        blocked, waiting = [], []
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /blocking HTTP/1.1\r\nHost: x\r\n\r\n")
            recv_until(sock, b"before the block")
            blocked.append(sock)
        for _ in range(3):  # these wait for one of the 4 threads
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /blocking HTTP/1.1\r\nHost: x\r\n\r\n")
            recv_until(sock, b"\r\n\r\n")
            waiting.append(sock)
        wait_until(lambda: live_streams(server) == 7)
        # The waiting ones leave first: closed together with the blocked ones, a waiting stream whose
        # disconnect the server has not read yet may take a freed thread, pull, and block in its turn.
        for sock in waiting:
            sock.close()
        wait_until(lambda: server.recorder.reasons("/blocking") == ["client_disconnect"] * 3, timeout=5)
        assert abandoned_threads() == 0  # they left without ever taking a thread
        for sock in blocked:
            sock.close()
        wait_until(lambda: server.recorder.reasons("/blocking") == ["client_disconnect"] * 7, timeout=5)
        wait_until(lambda: live_streams(server) == 0, timeout=5)
        assert abandoned_threads() == 4
        assert REGISTRY.get_sample_value("ssesup_sync_threads_abandoned") == 4
        with raw_request(server.port, "/sync-count") as sock:
            _, body = read_response(sock)
        assert body == b"id: 1\r\ndata: one\r\n\r\nid: 2\r\ndata: two\r\n\r\n"
        with raw_request(server.port, "/plain-sync") as sock:
            assert recv_until(sock, b"sync endpoint works").startswith(b"HTTP/1.1 200")
        for _ in range(4):  # unblock them: each thread closes its generator and is free again
            server.blocker.put(None)
        wait_until(lambda: abandoned_threads() == 0, timeout=5)
        assert REGISTRY.get_sample_value("ssesup_sync_threads_abandoned") == 0


@pytest.mark.parametrize("config", SERVERS)
def test_a_generators_async_cleanup_gets_its_time_after_a_disconnect(config):
    with serve_app(Supervisor(ping=0), **config) as server:
        with raw_request(server.port, "/slow-cleanup?cleanup=1") as sock:
            recv_until(sock, b"data: hello")
        wait_until(lambda: server.recorder.cleaned("slow"), timeout=5)
        assert server.recorder.cleaned("slow")[0] >= 0.95
        assert server.recorder.reasons("/slow-cleanup") == ["client_disconnect"]


def test_a_cleanup_past_its_close_grace_is_cut_and_logged(capsys):
    with serve_app(Supervisor(ping=0)) as server:
        with raw_request(server.port, "/slow-cleanup?cleanup=3&grace=0.3") as sock:
            recv_until(sock, b"data: hello")
        started = time.monotonic()
        wait_until(lambda: server.recorder.reasons("/slow-cleanup") == ["client_disconnect"])
        wait_until(lambda: live_streams(server) == 0, timeout=3)
        assert time.monotonic() - started < 2.5  # cut after 0.3 s; uncut it would take 3 s
        time.sleep(0.2)
        assert server.recorder.cleaned("slow") == []  # cancelled, not finished


def test_a_finally_that_swallows_every_cancellation_neither_holds_its_stream_nor_the_exit(tmp_path):
    port = free_port()
    argv = uvicorn_argv("apps.reliability_app:app", port)
    with serve(argv, port, tmp_path) as server:
        with raw_request(port, "/stubborn") as sock:
            recv_until(sock, b"data: hello")
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /stubborn HTTP/1.1\r\nHost: x\r\n\r\n")
        recv_until(sock, b"data: hello")
        time.sleep(1.0)  # the first stream's cleanup was cut and left behind
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        server.process.wait(10)
        assert time.monotonic() - started < 2 + 2  # drain grace (2 s) + 2 s
        sock.close()
        assert "stream.cleanup_cut" in server.log()


def test_head_answers_the_headers_and_ends_and_the_connection_stays_usable():
    with serve_app(Supervisor(ping=0)) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.settimeout(5)
        sock.sendall(b"HEAD /head-probe HTTP/1.1\r\nHost: x\r\n\r\n")
        head = recv_until(sock, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
        sock.sendall(b"GET /plain-sync HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = recv_until(sock, b"sync endpoint works")
        assert b"HTTP/1.1 200" in answer
        sock.close()
        wait_until(lambda: server.recorder.reasons("/head-probe") == ["completed"])
        assert server.recorder.started == []  # the generator never ran


def test_a_large_event_reaches_the_server_in_slices_of_the_high_water_mark():
    from ssesup.stream import HIGH_WATER

    supervisor = Supervisor(ping=0)
    app, recorder, _ = make_app(supervisor)
    largest: list[int] = []

    async def recording(scope, receive, send):
        async def record(message):
            if message["type"] == "http.response.body":
                largest.append(len(message.get("body", b"")))
            await send(message)

        await app(scope, receive, record)

    with UvicornThread(recording) as server:
        size = 3 * 1024 * 1024
        with raw_request(server.port, f"/large?size={size}") as sock:
            received = recv_until(sock, b"x" * 1000, timeout=10)
            assert received
        wait_until(lambda: recorder.reasons("/large") == ["client_disconnect"])
    assert max(largest) <= HIGH_WATER
    assert sum(largest) >= size


def test_an_event_over_max_event_size_ends_the_stream_with_error(capsys):
    with serve_app(Supervisor(ping=0)) as server:
        with raw_request(server.port, "/limited") as sock:
            _, body = read_response(sock)
        assert body == b"id: 1\r\ndata: small\r\n\r\n"
        wait_until(lambda: server.recorder.reasons("/limited") == ["error"])
    assert "max_event_size" in capsys.readouterr().out


def test_a_send_the_server_refuses_ends_with_error_not_shutdown(capsys):
    with serve_app(Supervisor(ping=0), http="h11") as server:
        with raw_request(server.port, "/bad-header") as sock:
            sock.settimeout(5)
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        assert b"text/event-stream" not in answer and b"x-bad" not in answer
        wait_until(lambda: server.recorder.reasons("/bad-header") == ["error"])
    assert "stream.send_failed" in capsys.readouterr().out


def test_a_second_sigterm_force_closes_what_is_left_and_the_server_exits(tmp_path):
    """60 streams and a 60 s grace: the waves would take 30 s; a second SIGTERM ends them at once."""
    port = free_port()
    argv = uvicorn_argv("apps.drain_app:app", port)
    with serve(argv, port, tmp_path, env={"SSESUP_TEST_GRACE": "60"}) as server:
        clients = []
        for _ in range(60):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
            recv_until(sock, b"data: hello")
            clients.append(sock)
        server.signal(signal.SIGTERM)
        time.sleep(1.5)
        assert server.process.poll() is None  # still draining in waves
        server.signal(signal.SIGTERM)
        started = time.monotonic()
        server.process.wait(10)
        assert time.monotonic() - started < 5  # the waves alone would take 30 s
        for sock in clients:
            sock.close()
    assert "drain.forced" in server.log()


def test_a_source_that_gives_up_ends_the_stream_with_its_own_reason_after_what_it_sent():
    with serve_app(Supervisor(ping=0)) as server:
        with raw_request(server.port, "/gives-up") as sock:
            _, body = read_response(sock)
        assert body == b"id: 1\r\ndata: one\r\n\r\n"  # what was yielded, then a proper end of body
        wait_until(lambda: server.recorder.reasons("/gives-up") == ["slow_consumer"])
