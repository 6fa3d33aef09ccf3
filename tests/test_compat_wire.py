"""What goes on the wire: the same app served by real uvicorn through ``ssesup.compat`` and through
sse-starlette 3.7 sends the same body, byte for byte, and the same headers but ``Connection``."""

from __future__ import annotations

import contextlib
import re
import socket

import anyio
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.routing import Route

from compat_support import LIBRARIES, Seen, library
from servers import UvicornThread, raw_request, read_response, recv_until, wait_until

# sse-starlette's default ping carries the time: the same bytes but for it.
PING_TIME = re.compile(rb": ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.?\d*\+00:00")


def wire_app(lib, seen: Seen) -> Starlette:
    E, SSE, JSON = lib.EventSourceResponse, lib.ServerSentEvent, lib.JSONServerSentEvent

    def stream(make, **options):
        async def endpoint(request):
            return E(make(), **options)

        return endpoint

    async def dicts():
        yield {"data": 1}
        yield {"data": "a\nb", "event": "e", "id": "7", "retry": 1500, "comment": "c1\nc2"}
        yield {"data": {"k": [1, 2]}}
        yield {"comment": ""}
        yield {"data": ""}

    async def strings():
        for item in ("hello", "two\r\nlines", "", 42, 3.5, None, "é ✓"):
            yield item

    async def raw():
        yield b"data: raw\r\n\r\n"
        yield memoryview(b": mv\r\n\r\n")
        yield bytearray(b"data: ba")  # not bytes for sse-starlette: its str()

    async def events():
        yield SSE("x", event="y", id="1", retry=10, comment="hi")
        yield SSE(data="own sep", sep="\n")
        yield JSON({"a": "é", "b": [1.5, None]})
        yield JSON(None, event="empty")
        yield SSE()

    def sync():
        yield "a"
        yield {"data": "b", "id": "2"}
        yield SSE("c")

    async def pinged():
        yield "first"
        await anyio.sleep(1.5)  # halfway between the pings at 1 s and 2 s
        yield "second"

    async def one():
        yield "one"

    routes = {
        "/dicts": stream(dicts),
        "/strings": stream(strings),
        "/bytes": stream(raw),
        "/events": stream(events),
        "/sync": stream(sync),
        "/list": stream(lambda: ["x", {"data": "y"}]),
        "/sep-lf": stream(dicts, sep="\n"),
        "/sep-cr": stream(strings, sep="\r"),
        "/ping": stream(pinged, ping=1),
        "/custom-ping": stream(pinged, ping=1, sep="\n", ping_message_factory=lambda: SSE(comment="custom")),
        "/dict-ping": stream(pinged, ping=1, sep="\n", ping_message_factory=lambda: {"event": "ping"}),
        "/headers": stream(
            one,
            status_code=201,
            headers={"X-Custom": "yes", "Cache-Control": "public, max-age=5", "X-Accel-Buffering": "yes"},
            media_type="text/x-events",
        ),
        "/background": stream(one, background=BackgroundTask(seen.add, "background")),
    }
    return Starlette(routes=[Route(path, endpoint, methods=["GET", "HEAD"]) for path, endpoint in routes.items()])


@pytest.fixture(scope="module")
def servers():
    """Both libraries serving the same app, each on a uvicorn of its own."""
    with contextlib.ExitStack() as stack:
        running = {}
        for name in LIBRARIES:
            seen = Seen()
            server = stack.enter_context(UvicornThread(wire_app(library(name), seen)))
            server.seen = seen
            running[name] = server
        yield running


def fetch(server, path: str, method: str = "GET") -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers (but date and server) and de-chunked body, pings' times masked."""
    if method == "HEAD":
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head, body = recv_until(sock, b"\r\n\r\n").split(b"\r\n\r\n", 1)
    else:
        with raw_request(server.port, path) as sock:
            head, body = read_response(sock)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines]
    headers = [(name.lower(), value) for name, value in headers if name.lower() not in ("date", "server")]
    return int(status_line.split()[1]), headers, PING_TIME.sub(b": ping - <time>", body)


def same_headers(headers, reference_headers) -> None:
    assert ("connection", "keep-alive") in reference_headers  # hop-by-hop: ssesup never sends it
    assert headers == [header for header in reference_headers if header != ("connection", "keep-alive")]


@pytest.mark.parametrize(
    "path",
    [
        "/dicts",
        "/strings",
        "/bytes",
        "/events",
        "/sync",
        "/list",
        "/sep-lf",
        "/sep-cr",
        "/ping",
        "/custom-ping",
        "/dict-ping",
        "/headers",
        "/background",
    ],
)
def test_the_same_app_sends_the_same_bytes(servers, path):
    status, headers, body = fetch(servers["ssesup.compat"], path)
    ref_status, ref_headers, ref_body = fetch(servers["sse_starlette"], path)
    assert body == ref_body
    assert status == ref_status
    same_headers(headers, ref_headers)
    if "ping" in path:
        assert len(re.findall(rb"ping|custom", body)) == 1  # first, one ping, second


def test_the_background_task_runs_after_the_body(servers):
    for server in servers.values():
        fetch(server, "/background")
        wait_until(lambda server=server: "background" in server.seen())


@pytest.mark.parametrize("path", ["/headers", "/background", "/dicts"])
def test_head_answers_the_headers_of_get_and_ends(servers, path):
    before = {name: len(server.seen()) for name, server in servers.items()}
    status, headers, body = fetch(servers["ssesup.compat"], path, "HEAD")
    ref_status, ref_headers, ref_body = fetch(servers["sse_starlette"], path, "HEAD")
    assert (status, body) == (ref_status, ref_body) == (fetch(servers["sse_starlette"], path)[0], b"")
    same_headers(headers, ref_headers)
    if path == "/background":  # the background task still runs, as for GET
        for name, server in servers.items():
            wait_until(lambda server=server, name=name: len(server.seen()) >= before[name] + 1)


@pytest.mark.parametrize("name", LIBRARIES)
def test_pings_are_sent_on_idle_streams_only_where_sse_starlette_pings_every_interval(name):
    lib = library(name)

    async def endpoint(request):
        async def busy():
            for i in range(8):
                yield {"data": i}
                await anyio.sleep(0.3)

        return lib.EventSourceResponse(busy(), ping=1)

    with UvicornThread(Starlette(routes=[Route("/s", endpoint)])) as server:
        _, _, body = fetch(server, "/s")
    pings = body.count(b": ping - <time>")
    assert body.count(b"data: ") == 8
    assert pings == 0 if name == "ssesup.compat" else pings >= 1


def test_compat_streams_run_on_trio_too():
    from servers import HypercornTrioThread

    ours = library("ssesup.compat")
    with HypercornTrioThread(wire_app(ours, Seen())) as server:
        trio_bodies = {path: fetch(server, path)[2] for path in ("/dicts", "/events", "/sync", "/ping")}
    with UvicornThread(wire_app(ours, Seen())) as server:
        assert trio_bodies == {path: fetch(server, path)[2] for path in trio_bodies}
