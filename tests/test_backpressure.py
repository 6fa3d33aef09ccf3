"""Back-pressure reaches the generator: while a large event waits for a client that does not read, the
next one is neither pulled nor encoded, so a stuck stream holds one event (encoded once) plus at most the
high-water mark. Measured on a real uvicorn process: its RSS, and how many events each stream pulled.

The app is this module (``uvicorn test_backpressure:app``), served in a process of its own so that its
RSS is the stuck streams' and nothing else's.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time

import httpx
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from procs import free_port, serve, uvicorn_argv
from servers import wait_until
from ssesup import Event, SupervisedStream, Supervisor

EVENT_SIZE = 10 * 1024 * 1024
CLIENTS = 5
PAYLOAD = "x" * EVENT_SIZE  # one string shared by every event: what a stream holds is its encoded bytes
pulled: dict[str, int] = {}
supervisor = Supervisor(ping=0, send_timeout=120, dead_peer_timeout=0)


async def big(request):
    name = request.query_params["name"]

    async def gen():
        n = 0
        while True:
            pulled[name] = pulled.get(name, 0) + 1
            yield Event(PAYLOAD, event="big", id=str(n))
            n += 1

    return SupervisedStream(gen(), supervisor=supervisor)


async def counts(request):
    return JSONResponse(pulled)


app = Starlette(routes=[Route("/big", big), Route("/pulled", counts)])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def stuck_client(port: int, name: str) -> socket.socket:
    """A client that asks for the stream and never reads a byte of it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /big?name={name} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def test_a_stream_stuck_on_a_large_event_holds_one_event_and_pulls_no_more(tmp_path):
    port = free_port()
    with serve(uvicorn_argv("test_backpressure:app", port, "--log-level", "warning"), port, tmp_path) as server:
        pid = server.process.pid
        base = f"http://127.0.0.1:{port}"
        httpx.get(f"{base}/pulled", timeout=10)
        before = rss_bytes(pid)
        with contextlib.ExitStack() as stack:
            for i in range(CLIENTS):
                stack.enter_context(stuck_client(port, f"c{i}"))

            def settled() -> dict[str, int]:
                return json.loads(httpx.get(f"{base}/pulled", timeout=10).text)

            wait_until(lambda: len(settled()) == CLIENTS, timeout=20)
            time.sleep(2)  # time enough for a producer that does not wait to pull and encode the next one
            counts = settled()
            grown = rss_bytes(pid) - before
    assert counts == {f"c{i}": 1 for i in range(CLIENTS)}, counts
    per_client = grown / CLIENTS
    assert per_client < 1.5 * EVENT_SIZE, f"{per_client / 2**20:.1f} MiB per stuck client"
