"""How streams fail, end and clean up, with ``ssesup.compat`` and with sse-starlette 3.7 itself: the same
app on a real uvicorn, a real client, and what the app raised to the server."""

from __future__ import annotations

import contextlib
import time

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from compat_support import END_OF_BODY, LIBRARIES, Raised, Seen, dechunked, library, read_until_end
from servers import UvicornThread, raw_request, read_response, recv_until, wait_until

pytestmark = pytest.mark.parametrize("name", LIBRARIES)


@contextlib.contextmanager
def serve(endpoint, **config):
    """``endpoint`` at ``/s`` on a uvicorn of its own; yields the server and the recorder of what the
    app raised."""
    app = Raised(Starlette(routes=[Route("/s", endpoint, methods=["GET", "HEAD"])]))
    with UvicornThread(app, **config) as server:
        server.raised = app
        yield server


def test_a_generator_error_is_raised_to_the_server_after_what_was_sent(name):
    lib = library(name)

    async def endpoint(request):
        async def gen():
            yield {"data": "one"}
            yield "two"
            raise RuntimeError("the generator failed")

        return lib.EventSourceResponse(gen(), ping=0)

    with serve(endpoint) as server, raw_request(server.port, "/s") as sock:
        raw = read_until_end(sock)
        wait_until(lambda: server.raised.errors)
    assert dechunked(raw) == b"data: one\r\n\r\ndata: two\r\n\r\n"
    assert not raw.endswith(END_OF_BODY)  # no clean end of body
    assert b"the generator failed" not in raw
    [error] = server.raised.errors
    assert type(error) is RuntimeError and str(error) == "the generator failed"


def test_an_encoding_error_closes_the_generator_then_is_raised(name):
    lib = library(name)
    seen = Seen()

    async def endpoint(request):
        async def gen():
            try:
                yield "fine"
                yield {"data": "x", "colour": "blue"}  # not a field: ServerSentEvent(**item) fails
                yield "never"
            finally:
                seen.add("finally")

        return lib.EventSourceResponse(gen(), ping=0)

    with serve(endpoint) as server, raw_request(server.port, "/s") as sock:
        raw = read_until_end(sock)
        wait_until(lambda: server.raised.errors)
    assert dechunked(raw) == b"data: fine\r\n\r\n"
    assert seen() == ["finally"]
    assert isinstance(server.raised.errors[0], TypeError)


def test_a_send_timeout_raises_send_timeout_error_and_closes_the_generator(name):
    lib = library(name)
    seen = Seen()

    async def endpoint(request):
        async def gen():
            try:
                while True:
                    yield {"data": "x" * 65536}
            finally:
                seen.add("finally")

        return lib.EventSourceResponse(gen(), ping=0, send_timeout=0.5)

    with serve(endpoint) as server, raw_request(server.port, "/s", rcvbuf=4096) as sock:
        recv_until(sock, b"data: x")  # then stop reading
        wait_until(lambda: server.raised.errors, timeout=15)
        wait_until(lambda: seen() == ["finally"])
    [error] = server.raised.errors
    assert isinstance(error, lib.SendTimeoutError) and isinstance(error, TimeoutError)


def test_data_sender_callable_feeds_the_stream_and_is_cancelled_at_its_end(name):
    lib = library(name)
    seen = Seen()

    async def endpoint(request):
        send_stream, receive_stream = anyio.create_memory_object_stream(10)

        async def data_sender():
            async with send_stream:
                for i in range(3):
                    await send_stream.send({"data": i})
                try:
                    await anyio.sleep_forever()
                finally:
                    seen.add("sender cancelled")

        async def until_three():
            async with receive_stream:
                async for item in receive_stream:
                    yield item
                    if item["data"] == 2:
                        return

        return lib.EventSourceResponse(until_three(), ping=0, data_sender_callable=data_sender)

    with serve(endpoint) as server:
        with raw_request(server.port, "/s") as sock:
            _, body = read_response(sock)
        assert body == b"data: 0\r\n\r\ndata: 1\r\n\r\ndata: 2\r\n\r\n"
        wait_until(lambda: seen() == ["sender cancelled"])
        assert not server.raised.errors


def test_a_failing_data_sender_is_raised_to_the_server(name):
    lib = library(name)

    async def endpoint(request):
        async def data_sender():
            await anyio.sleep(0.1)
            raise LookupError("the sender failed")

        async def gen():
            yield "hello"
            await anyio.sleep_forever()

        return lib.EventSourceResponse(gen(), ping=0, data_sender_callable=data_sender)

    with serve(endpoint) as server, raw_request(server.port, "/s") as sock:
        raw = read_until_end(sock)
        wait_until(lambda: server.raised.errors)
    assert dechunked(raw) == b"data: hello\r\n\r\n" and not raw.endswith(END_OF_BODY)
    assert isinstance(server.raised.errors[0], LookupError)


def test_client_close_handler_gets_the_disconnect_message_when_the_client_leaves_or_the_stream_completes(name):
    lib = library(name)
    seen = Seen()

    async def endpoint(request):
        async def on_close(message):
            seen.add((request.query_params.get("how"), message))

        async def gen():
            yield "hello"
            if request.query_params["how"] == "error":
                raise RuntimeError("no close handler for this")
            if request.query_params["how"] == "disconnect":
                await anyio.sleep_forever()

        return lib.EventSourceResponse(gen(), ping=0, client_close_handler_callable=on_close)

    disconnect = {"type": "http.disconnect"}
    with serve(endpoint) as server:
        with raw_request(server.port, "/s?how=complete") as sock:
            read_response(sock)
            wait_until(lambda: seen() == [("complete", disconnect)])  # the client is still there
        with raw_request(server.port, "/s?how=error") as sock:
            read_until_end(sock)
        with raw_request(server.port, "/s?how=disconnect") as sock:
            recv_until(sock, b"data: hello")
        wait_until(lambda: len(seen()) == 2)
        time.sleep(0.2)
    assert seen() == [("complete", disconnect), ("disconnect", disconnect)]


def test_cleanup_timeout_bounds_the_cleanup_after_an_encoding_error(name):
    lib = library(name)
    seen = Seen()

    async def endpoint(request):
        async def gen():
            try:
                yield {"data": "x", "colour": "blue"}
            finally:
                seen.add("cleanup started")
                await anyio.sleep(30)
                seen.add("cleanup finished")

        return lib.EventSourceResponse(gen(), ping=0, cleanup_timeout=0.3)

    with serve(endpoint) as server, raw_request(server.port, "/s") as sock:
        started = time.monotonic()
        read_until_end(sock)
        wait_until(lambda: server.raised.errors)
        took = time.monotonic() - started
    assert seen() == ["cleanup started"]
    assert took < 10  # cut after 0.3 s, not 30
    assert isinstance(server.raised.errors[0], TypeError)


def test_head_starts_neither_the_generator_nor_the_data_sender(name):
    lib = library(name)
    seen = Seen()

    async def endpoint(request):
        async def data_sender():
            seen.add("data sender")

        async def gen():
            seen.add("generator")
            yield "hello"

        return lib.EventSourceResponse(gen(), data_sender_callable=data_sender)

    with serve(endpoint) as server:
        response = httpx.head(server.url + "/s", timeout=10)
        assert response.status_code == 200 and response.content == b""
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        time.sleep(0.2)
    assert seen() == []


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"sep": "\r\n\r\n"}, ValueError, "sep must be one of"),
        ({"ping": -1}, ValueError, "ping interval must be >= 0"),
        ({"ping": "15"}, TypeError, "ping interval must be int or float"),
        ({"shutdown_grace_period": -0.1}, ValueError, "shutdown_grace_period must be >= 0"),
        ({"cleanup_timeout": -1}, ValueError, "cleanup_timeout must be >= 0"),
    ],
)
def test_wrong_options_are_refused_with_sse_starlettes_errors(name, options, error, message):
    lib = library(name)
    with pytest.raises(error, match=message):
        lib.EventSourceResponse(iter(()), **options)


def test_the_response_keeps_sse_starlettes_attributes(name):
    lib = library(name)
    response = lib.EventSourceResponse(iter(()), sep="\n", send_timeout=3)
    assert (response.sep, response.send_timeout, response.ping_interval) == ("\n", 3, 15)
    content = iter(())
    assert lib.EventSourceResponse(_events()).body_iterator.__class__.__name__ == "async_generator"
    assert lib.EventSourceResponse(content).body_iterator is not content  # iterated in threads
    response.ping_interval = 2.5
    assert response.ping_interval == 2.5
    with pytest.raises(ValueError):
        response.ping_interval = -1
    with pytest.raises(NotImplementedError):
        response.enable_compression()


def test_without_send_timeout_a_client_that_stops_reading_is_not_timed_out(name):
    lib = library(name)
    seen = Seen()

    async def endpoint(request):
        async def gen():
            try:
                while True:
                    yield {"data": "x" * 65536}
                    await anyio.sleep(0.001)  # sse-starlette's sends to a closed connection never wait
            finally:
                seen.add("finally")

        return lib.EventSourceResponse(gen(), ping=0)  # send_timeout=None: off

    with serve(endpoint) as server, raw_request(server.port, "/s", rcvbuf=4096) as sock:
        recv_until(sock, b"data: x")
        time.sleep(1.5)
        assert not server.raised.errors and seen() == []


def test_after_a_disconnect_the_cleanup_may_await_where_sse_starlette_cuts_it(name):
    lib = library(name)
    seen = Seen()

    async def endpoint(request):
        async def gen():
            try:
                yield "hello"
                await anyio.sleep_forever()
            finally:
                seen.add("cleanup started")
                await anyio.sleep(0.2)  # closing a session, say
                seen.add("cleanup finished")

        return lib.EventSourceResponse(gen(), ping=0)

    with serve(endpoint) as server:
        with raw_request(server.port, "/s") as sock:
            recv_until(sock, b"data: hello")
        wait_until(lambda: seen())
        if name == "ssesup.compat":
            wait_until(lambda: len(seen()) == 2, timeout=5)
        else:
            time.sleep(0.6)  # long enough for a cleanup that was not cut to finish
    if name == "ssesup.compat":
        assert seen() == ["cleanup started", "cleanup finished"]  # within cleanup_timeout (30 s)
    else:
        assert seen() == ["cleanup started"]  # the cancellation reaches the await in finally too


def test_send_timeout_zero_is_off_where_sse_starlette_times_out_every_send(name):
    lib = library(name)

    async def endpoint(request):
        async def gen():
            yield "a"
            yield "b"

        return lib.EventSourceResponse(gen(), ping=0, send_timeout=0)

    with serve(endpoint) as server, raw_request(server.port, "/s") as sock:
        raw = read_until_end(sock)
        if name == "ssesup.compat":
            assert dechunked(raw) == b"data: a\r\n\r\ndata: b\r\n\r\n" and raw.endswith(END_OF_BODY)
        else:
            wait_until(lambda: server.raised.errors)
            assert isinstance(server.raised.errors[0], lib.SendTimeoutError)


def test_a_failing_ping_factory_is_logged_where_sse_starlette_ends_the_response(name):
    lib = library(name)

    async def endpoint(request):
        def ping():
            raise RuntimeError("the ping factory failed")

        async def gen():
            yield "a"
            await anyio.sleep(1)
            yield "b"

        return lib.EventSourceResponse(gen(), ping=0.3, ping_message_factory=ping)

    with serve(endpoint) as server, raw_request(server.port, "/s") as sock:
        raw = read_until_end(sock)
        if name == "ssesup.compat":
            assert raw.endswith(END_OF_BODY) and dechunked(raw).startswith(b"data: a\r\n\r\n: ping\r\n\r\n")
            assert not server.raised.errors
        else:
            wait_until(lambda: server.raised.errors)
            assert isinstance(server.raised.errors[0], RuntimeError) and not raw.endswith(END_OF_BODY)


class Overlaps:
    """An ASGI wrapper that records how many sends of one response were in flight at once."""

    def __init__(self, app) -> None:
        self.app = app
        self.most = 0

    async def __call__(self, scope, receive, send):
        in_flight = 0

        async def counted(message):
            nonlocal in_flight
            in_flight += 1
            self.most = max(self.most, in_flight)
            try:
                await send(message)
            finally:
                in_flight -= 1

        await self.app(scope, receive, counted)


def test_a_ping_never_overlaps_an_unfinished_send_where_sse_starlettes_does(name):
    lib = library(name)

    async def endpoint(request):
        async def gen():
            while True:
                yield {"data": "x" * 65536}
                await anyio.sleep(0.001)  # sse-starlette's sends to a closed connection never wait

        return lib.EventSourceResponse(gen(), ping=0.2)

    app = Overlaps(Starlette(routes=[Route("/s", endpoint)]))
    with UvicornThread(app) as server, raw_request(server.port, "/s", rcvbuf=4096) as sock:
        recv_until(sock, b"data: x")  # then stop reading: a data send blocks, pings come due
        if name == "ssesup.compat":
            time.sleep(1)
        else:
            wait_until(lambda: app.most >= 2, timeout=10)
        most = app.most
    assert most == 1 if name == "ssesup.compat" else most == 2


async def _events():
    yield "x"
