"""The examples in examples/, each shape written with ssesup.compat and natively, run on a real uvicorn
with real clients (httpx + httpx-sse, raw sockets); the two of each pair send the same events."""

from __future__ import annotations

import importlib.util
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from compat_support import END_OF_BODY, dechunked, read_until_end
from procs import free_port, serve
from servers import UvicornThread, raw_request, read_response, recv_until, wait_until

EXAMPLES = Path(__file__).parent.parent / "examples"
KINDS = ("compat", "native")


def load(shape: str, kind: str):
    """examples/<shape>_<kind>.py as a fresh module (examples/ on the path for the shared parts)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{shape}_{kind}", EXAMPLES / f"{shape}_{kind}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def body(server, path: str) -> bytes:
    with raw_request(server.port, path) as sock:
        return read_response(sock)[1]


def test_every_example_comes_in_both_kinds():
    shapes = {path.stem.rsplit("_", 1)[0] for path in EXAMPLES.glob("*_*.py") if path.stem.endswith(KINDS)}
    assert shapes == {"basic", "broadcasting", "database", "send_timeout", "cooperative_shutdown"}
    for shape in shapes:
        assert all((EXAMPLES / f"{shape}_{kind}.py").exists() for kind in KINDS)


def test_basic():
    bodies = []
    for kind in KINDS:
        example = load("basic", kind)
        example.INTERVAL = 0.01
        with UvicornThread(example.app) as server:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                with connect_sse(client, "GET", "/numbers") as source:
                    assert [event.data for event in source.iter_sse()] == ["1", "2", "3", "4", "5"]
                with connect_sse(client, "GET", "/endless") as source:
                    events = source.iter_sse()
                    assert [next(events).data for _ in range(3)] == ["1", "2", "3"]
            bodies.append(body(server, "/numbers"))
    assert bodies[0] == bodies[1]


@pytest.mark.parametrize("kind", KINDS)
def test_broadcasting(kind):
    example = load("broadcasting", kind)
    with UvicornThread(example.app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        clients = lambda: client.get("/status").json()["connected_clients"]  # noqa: E731
        with connect_sse(client, "GET", "/events") as first, connect_sse(client, "GET", "/events") as second:
            wait_until(lambda: clients() == 2)
            assert client.post("/send", json={"message": "hello"}).json() == {"status": "sent", "clients": 2}
            client.post("/send", json={"message": "alert!", "event": "alert"})
            for source in (first, second):
                events = source.iter_sse()
                assert [(e.event, e.data) for e in (next(events), next(events))] == [
                    ("message", "hello"),
                    ("alert", "alert!"),
                ]
        wait_until(lambda: clients() == 0)  # each subscription ended with its stream


def test_database(tmp_path):
    bodies = []
    for kind in KINDS:
        example = load("database", kind)
        example.database.PATH = str(tmp_path / "items.db")
        example.database.create(example.database.PATH)
        with UvicornThread(example.app) as server:
            with (
                httpx.Client(base_url=server.url, timeout=10) as client,
                connect_sse(client, "GET", "/items") as source,
            ):
                events = list(source.iter_sse())
            bodies.append(body(server, "/items"))
        assert [(e.id, e.data) for e in events] == [(str(i), f"item {i}") for i in range(1, 21)]
    assert bodies[0] == bodies[1]


@pytest.mark.parametrize("kind", KINDS)
def test_send_timeout(kind):
    example = load("send_timeout", kind)
    example.SEND_TIMEOUT = 2  # long enough for a loaded machine to ask for the status first
    with UvicornThread(example.app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        streaming = lambda: client.get("/status").json()["streaming"]  # noqa: E731
        with raw_request(server.port, "/events", rcvbuf=4096) as sock:
            recv_until(sock, b"data: ")  # then stop reading
            assert streaming() == 1
            wait_until(lambda: streaming() == 0, timeout=15)  # timed out: the generator was closed


@pytest.mark.parametrize("kind", KINDS)
def test_cooperative_shutdown(tmp_path, kind):
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", f"cooperative_shutdown_{kind}:app", "--app-dir", str(EXAMPLES)]
    with serve([*argv, "--port", str(port)], port, tmp_path) as server:
        with raw_request(port, "/events") as sock:
            raw = recv_until(sock, b"data: tick 1")
            server.signal(signal.SIGTERM)
            raw += read_until_end(sock)
        server.process.wait(15)  # exits (uvicorn re-raises the signal it handled)
    events = dechunked(raw)
    assert b"id: 1\r\ndata: tick 1\r\n\r\n" in events
    assert b"event: shutdown\r\ndata: server is shutting down, goodbye\r\n\r\n" in events
    assert re.search(rb"goodbye\r\n\r\n.*retry: \d+\r\n\r\n", events, re.S)
    assert raw.endswith(END_OF_BODY)
