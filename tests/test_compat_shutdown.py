"""How a shutdown ends streams, with ``ssesup.compat`` and with sse-starlette 3.7: ``shutdown_event`` and
``shutdown_grace_period``, ``AppStatus.should_exit``, and a real SIGTERM (a uvicorn subprocess). Where
ssesup sends more (a ``retry:`` hint and a clean end of body), the test says so."""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import time

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from compat_support import END_OF_BODY, LIBRARIES, Seen, dechunked, library, read_until_end
from procs import free_port, serve
from servers import UvicornThread, raw_request, recv_until, wait_until
from ssesup import Event, SupervisedStream, Supervisor

RETRY = re.compile(rb"retry: \d+\r\n\r\n")


@pytest.fixture(params=LIBRARIES)
def lib(request):
    lib = library(request.param)
    yield lib
    lib.AppStatus.should_exit = False


@contextlib.contextmanager
def app_with(*routes):
    with UvicornThread(Starlette(routes=[Route(path, endpoint) for path, endpoint in routes])) as server:
        yield server


def cooperative(lib, seen: Seen, grace: float):
    async def endpoint(request):
        shutdown_event = anyio.Event()

        async def generate():
            yield {"data": "hello"}
            await shutdown_event.wait()
            yield {"event": "shutdown", "data": "goodbye"}

        async def on_close(message):
            seen.add("close handler")

        return lib.EventSourceResponse(
            generate(),
            ping=0,
            shutdown_event=shutdown_event,
            shutdown_grace_period=grace,
            client_close_handler_callable=on_close,
        )

    return endpoint


def stubborn(lib, grace: float):
    async def endpoint(request):
        async def generate():
            yield {"data": "hello"}
            await anyio.sleep_forever()

        return lib.EventSourceResponse(generate(), ping=0, shutdown_grace_period=grace)

    return endpoint


def test_a_cooperative_generator_says_goodbye_when_should_exit_is_set(lib):
    seen = Seen()
    with app_with(("/s", cooperative(lib, seen, grace=5))) as server, raw_request(server.port, "/s") as sock:
        recv_until(sock, b"data: hello")
        lib.AppStatus.should_exit = True
        raw = read_until_end(sock)
        wait_until(lambda: seen())  # the handler runs once the end of body has gone out
    assert b"event: shutdown\r\ndata: goodbye\r\n\r\n" in raw
    assert raw.endswith(END_OF_BODY)  # the generator finished: a clean end of body with both
    if lib.name == "ssesup.compat":
        assert RETRY.search(raw.split(b"data: goodbye", 1)[1])  # ssesup's farewell: a reconnect hint
    assert seen() == ["close handler"]  # as for any generator that finished: the response completed


def test_with_no_grace_a_stubborn_generator_ends_at_once(lib):
    with app_with(("/s", stubborn(lib, grace=0))) as server, raw_request(server.port, "/s") as sock:
        recv_until(sock, b"data: hello")
        started = time.monotonic()
        lib.AppStatus.should_exit = True
        raw = read_until_end(sock)
        took = time.monotonic() - started
    assert took < 5
    if lib.name == "ssesup.compat":
        assert RETRY.search(raw) and raw.endswith(END_OF_BODY)  # farewell and a clean end
    else:
        assert not RETRY.search(raw) and not raw.endswith(END_OF_BODY)  # cut: the response never completes


def test_the_grace_period_ends_a_stubborn_generator_after_it(lib):
    with app_with(("/s", stubborn(lib, grace=1.5))) as server, raw_request(server.port, "/s") as sock:
        recv_until(sock, b"data: hello")
        started = time.monotonic()
        lib.AppStatus.should_exit = True
        read_until_end(sock)
        took = time.monotonic() - started
    assert 1.2 < took < 8


def test_once_should_exit_is_set_new_streams_are_not_served(lib):
    with app_with(("/s", stubborn(lib, grace=0))) as server:
        with raw_request(server.port, "/s") as sock:
            recv_until(sock, b"data: hello")  # a stream on this loop, so that the flag reaches it
            lib.AppStatus.should_exit = True
            read_until_end(sock)
        with raw_request(server.port, "/s", extra="Connection: close\r\n") as sock:
            raw = read_until_end(sock)
    if lib.name == "ssesup.compat":
        assert raw.startswith(b"HTTP/1.1 503 ") and b"retry-after: " in raw.lower()
    else:
        assert raw.startswith(b"HTTP/1.1 200 ") and not raw.endswith(END_OF_BODY)  # opened, then cut at once


def test_should_exit_drains_the_supervisor_native_streams_included():
    lib = library("ssesup.compat")

    async def native(request):
        async def gen():
            yield Event("native")
            await anyio.sleep_forever()

        return SupervisedStream(gen(), ping=0)

    try:
        with (
            app_with(("/compat", stubborn(lib, grace=0)), ("/native", native)) as server,
            raw_request(server.port, "/compat") as compat,
            raw_request(server.port, "/native") as other,
        ):
            recv_until(compat, b"data: hello")
            recv_until(other, b"data: native")
            lib.AppStatus.should_exit = True
            assert read_until_end(compat).endswith(END_OF_BODY)
            assert RETRY.search(read_until_end(other))  # closed by the supervisor's drain, in its wave
    finally:
        lib.AppStatus.should_exit = False


@pytest.mark.parametrize("name", LIBRARIES)
def test_sigterm_sets_the_shutdown_event_and_should_exit(tmp_path, name):
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "compat_shutdown_app:app", "--port", str(port)]
    with serve(argv, port, tmp_path, env={"SSE_LIB": name}) as server:
        with raw_request(port, "/events") as sock:
            recv_until(sock, b"data: hello")
            server.signal(signal.SIGTERM)
            raw = read_until_end(sock)
        server.process.wait(15)  # exits (uvicorn re-raises the signal it handled)
    assert b"event: shutdown\r\ndata: goodbye, should_exit=True\r\n\r\n" in raw
    assert raw.endswith(END_OF_BODY)
    if name == "ssesup.compat":
        assert RETRY.search(raw.split(b"goodbye", 1)[1])


def test_disabling_the_automatic_drain_only_changes_what_should_exit_reports():
    lib = library("ssesup.compat")
    supervisor = Supervisor(ping=0)

    async def endpoint(request):
        shutdown_event = anyio.Event()

        async def gen():
            yield "hello"
            await shutdown_event.wait()
            yield f"should_exit={lib.AppStatus.should_exit}"

        return lib.EventSourceResponse(gen(), shutdown_event=shutdown_event)

    lib.AppStatus.disable_automatic_graceful_drain()
    try:
        app = Starlette(routes=[Route("/s", endpoint)])
        supervisor.install(app)
        with UvicornThread(app) as server, raw_request(server.port, "/s") as sock:
            raw = recv_until(sock, b"data: hello")
            server.call(supervisor.begin_drain)
            raw += read_until_end(sock)
    finally:
        lib.AppStatus.enable_automatic_graceful_drain_mode()
    assert b"data: should_exit=False\r\n\r\n" in dechunked(raw) and raw.endswith(END_OF_BODY)
