"""The actor under other servers and set-ups: trio through hypercorn, several loops in several threads,
FastAPI, GZipMiddleware, a websocket scope, zero configuration and an installed supervisor."""

from __future__ import annotations

import socket
import threading

import anyio
import httpx
import pytest
from fastapi import FastAPI
from httpx_sse import connect_sse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Route

from apps.core import make_app
from servers import HypercornTrioThread, UvicornThread, raw_request, read_response, recv_until, wait_until
from ssesup import Event, SupervisedStream, Supervisor, default_supervisor


def sse_data(url: str, **params) -> list[str]:
    with httpx.Client(timeout=10) as client, connect_sse(client, "GET", url, params=params) as source:
        return [event.data for event in source.iter_sse()]


def test_streams_run_on_trio_under_hypercorn_with_every_ending():
    app, recorder = make_app()
    with HypercornTrioThread(app) as server:
        assert sse_data(server.url + "/count", n="3") == ["0:", "1:", "2:"]
        with raw_request(server.port, "/fail") as sock:
            _, body = read_response(sock)
        assert body == b"data: before the error\r\n\r\n"
        with raw_request(server.port, "/wait?ping=0.1") as sock:
            recv_until(sock, b": ping")
        wait_until(lambda: recorder.reasons("/wait") == ["client_disconnect"])
        wait_until(lambda: server.call(lambda: len(default_supervisor.loop_supervision.streams)) == 0)
        assert server.call(lambda: default_supervisor.loop_supervision.timers.running) is False
    assert recorder.reasons("/count") == ["completed"]
    assert recorder.reasons("/fail") == ["error"]
    assert sorted(recorder.finally_ran) == ["count", "fail", "wait"]


def test_several_event_loops_in_several_threads_share_nothing():
    """Two servers, two loops, one default supervisor: each loop sees only its own streams."""
    app, _ = make_app()
    with UvicornThread(app, loop="asyncio") as one, UvicornThread(app, loop="asyncio") as two:
        socks = []
        for server in (one, two, two):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /wait?ping=0 HTTP/1.1\r\nHost: x\r\n\r\n")
            recv_until(sock, b"waiting")
            socks.append(sock)
        assert one.call(lambda: len(default_supervisor.loop_supervision.streams)) == 1
        assert two.call(lambda: len(default_supervisor.loop_supervision.streams)) == 2
        supervision = lambda: default_supervisor.loop_supervision  # noqa: E731
        assert one.call(supervision) is not two.call(supervision)
        for sock in socks:
            sock.close()
        wait_until(lambda: two.call(lambda: len(default_supervisor.loop_supervision.streams)) == 0)
        wait_until(lambda: one.call(lambda: len(default_supervisor.loop_supervision.streams)) == 0)


def test_a_fastapi_path_operation_returns_a_supervised_stream():
    app = FastAPI()

    @app.get("/items/{item_id}/events")
    async def item_events(item_id: int) -> SupervisedStream:
        async def gen():
            for i in range(2):
                yield Event.json({"item": item_id, "n": i}, event="item")

        return SupervisedStream(gen())

    with UvicornThread(app) as server:
        assert sse_data(server.url + "/items/7/events") == ['{"item":7,"n":0}', '{"item":7,"n":1}']


def test_gzip_middleware_neither_compresses_nor_buffers_the_stream():
    first_sent = threading.Event()

    async def slow(request):
        async def gen():
            yield Event("x" * 2000)
            first_sent.set()
            await anyio.sleep(5)  # the client has the first event long before (and leaves)
            yield Event("y" * 2000)

        return SupervisedStream(gen())

    app = Starlette(routes=[Route("/slow", slow)], middleware=[Middleware(GZipMiddleware, minimum_size=10)])
    with UvicornThread(app) as server, raw_request(server.port, "/slow", extra="Accept-Encoding: gzip\r\n") as sock:
        received = recv_until(sock, b"x" * 2000)
        # The first event arrived before the second was made: nothing held it back.
        assert b"y" * 100 not in received
        assert b"content-encoding" not in received.split(b"\r\n\r\n")[0].lower()


def test_a_websocket_scope_gets_the_stream_as_a_denial_response_like_streaming_response():
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return

        async def gen():
            yield Event("not a websocket")

        await SupervisedStream(gen())(scope, receive, send)

    with (
        UvicornThread(app, ws="websockets-sansio") as server,
        raw_request(
            server.port,
            "/ws",
            extra=(
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            ),
        ) as sock,
    ):
        received = recv_until(sock, b"not a websocket")
    assert received.startswith(b"HTTP/1.1 200")
    assert b"data: not a websocket" in received


def test_zero_configuration_uses_the_default_supervisor_and_its_defaults():
    app, recorder = make_app()
    with UvicornThread(app) as server:
        assert sse_data(server.url + "/count", n="1") == ["0:"]
    assert recorder.reasons("/count") == ["completed"]
    assert (default_supervisor.ping, default_supervisor.send_timeout, default_supervisor.sep) == (15.0, 30.0, "\r\n")


def test_an_installed_supervisor_sets_the_defaults_of_an_app_in_one_line():
    async def ping_me(request):
        async def gen():
            yield Event("hello")
            await anyio.sleep_forever()

        return SupervisedStream(gen())

    app = Starlette(routes=[Route("/", ping_me)])
    supervisor = Supervisor(ping=0.1, sep="\n")
    supervisor.install(app)
    with UvicornThread(app) as server, raw_request(server.port, "/") as sock:
        received = recv_until(sock, b": ping\n\n")
        assert b"data: hello\n\n" in received
        assert server.call(lambda: len(supervisor.loop_supervision.streams)) == 1
        assert server.call(lambda: len(default_supervisor.loop_supervision.streams)) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ping": -1}, "ping"),
        ({"send_timeout": "soon"}, "send_timeout"),
        ({"sep": "\r\n\r\n"}, "separator"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Supervisor(**kwargs)

    async def gen():
        yield "x"

    with pytest.raises(ValueError, match=message):
        SupervisedStream(gen(), **kwargs)


def test_content_that_is_not_iterable_is_refused():
    with pytest.raises(TypeError, match="iterable"):
        SupervisedStream(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable"):
        SupervisedStream("a plain string")  # type: ignore[arg-type]


def test_install_refuses_an_app_without_add_middleware():
    async def app(scope, receive, send):
        pass

    with pytest.raises(TypeError, match="SupervisorMiddleware"):
        Supervisor().install(app)
