"""A stream's own hooks: a close callback, a companion task, a drain event with the stream's own grace,
and errors raised to the server. Real uvicorn, real sockets."""

from __future__ import annotations

import threading
import time

import anyio
from starlette.applications import Starlette
from starlette.routing import Route

from servers import UvicornThread, raw_request, read_response, recv_until, wait_until
from ssesup import CloseReason, Event, SupervisedStream, Supervisor


class Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[str] = []

    def add(self, item: str) -> None:
        with self.lock:
            self.items.append(item)

    def __call__(self) -> list[str]:
        with self.lock:
            return list(self.items)


def serve(routes) -> UvicornThread:
    return UvicornThread(Starlette(routes=routes), log_config=None)


def test_on_close_is_called_once_with_the_reason_before_the_generator_is_closed():
    supervisor = Supervisor(ping=0)
    seen = Seen()

    async def on_close(stream):
        await anyio.sleep(0.05)  # may await
        seen.add(f"on_close {stream.close_reason.value}")

    async def endpoint(request):
        async def gen():
            try:
                yield Event("hello")
                await anyio.sleep_forever()
            finally:
                seen.add("finally")

        return SupervisedStream(gen(), on_close=on_close, supervisor=supervisor)

    with serve([Route("/s", endpoint)]) as server:
        with raw_request(server.port, "/s") as sock:
            recv_until(sock, b"data: hello")
        wait_until(lambda: len(seen()) == 2)
    assert seen() == ["on_close client_disconnect", "finally"]


def test_a_companion_runs_beside_the_stream_and_is_cancelled_when_it_ends():
    supervisor = Supervisor(ping=0)
    seen = Seen()
    queue: list[str] = []

    async def endpoint(request):
        ready = anyio.Event()

        async def companion():
            try:
                queue.append("pushed by the companion")
                ready.set()
                await anyio.sleep_forever()
            finally:
                seen.add("companion cancelled")

        async def gen():
            await ready.wait()
            yield Event(queue.pop())
            yield Event("done")

        return SupervisedStream(gen(), companion=companion, supervisor=supervisor)

    with serve([Route("/s", endpoint)]) as server:
        with raw_request(server.port, "/s") as sock:
            _, body = read_response(sock)
        assert body == b"data: pushed by the companion\r\n\r\ndata: done\r\n\r\n"
        wait_until(lambda: seen() == ["companion cancelled"])


def test_a_failing_companion_ends_the_stream_with_error():
    supervisor = Supervisor(ping=0)
    reasons: list[CloseReason] = []
    supervisor.subscribe(lambda stream, t: t.close_reason and reasons.append(t.close_reason))

    async def endpoint(request):
        async def companion():
            raise RuntimeError("the companion failed")

        async def gen():
            yield Event("hello")
            await anyio.sleep_forever()

        return SupervisedStream(gen(), companion=companion, supervisor=supervisor)

    with serve([Route("/s", endpoint)]) as server:
        with raw_request(server.port, "/s") as sock:
            _, body = read_response(sock)
        assert b"the companion failed" not in body
        wait_until(lambda: reasons == [CloseReason.ERROR])


def test_the_drain_event_is_set_and_the_streams_own_grace_times_its_close():
    supervisor = Supervisor(ping=0, drain_grace=20)  # waves would close it after the 1 s lead
    closed_at: list[float] = []
    supervisor.subscribe(lambda stream, t: t.close_reason and closed_at.append(time.monotonic()))

    async def endpoint(request):
        event = anyio.Event()

        async def gen():
            yield Event("hello")
            await event.wait()
            yield Event("goodbye", event="last")
            await anyio.sleep_forever()

        return SupervisedStream(gen(), drain_event=event, drain_grace=2.5, supervisor=supervisor)

    with serve([Route("/s", endpoint)]) as server:
        with raw_request(server.port, "/s") as sock:
            recv_until(sock, b"data: hello")
            started = time.monotonic()
            server.call(lambda: supervisor.begin_drain())
            received = recv_until(sock, b"event: last")
            assert b"data: goodbye" in received
            _, body = b"", recv_until(sock, b"0\r\n\r\n", timeout=10)
            assert b"retry: " in body
        wait_until(lambda: closed_at)
        assert 2.3 < closed_at[0] - started < 6


def test_raise_errors_sends_what_was_queued_then_raises_to_the_server(uvicorn_log):
    supervisor = Supervisor(ping=0)

    async def endpoint(request):
        async def gen():
            yield Event("one")
            yield Event("two")
            raise ValueError("the generator failed")

        return SupervisedStream(gen(), raise_errors=True, supervisor=supervisor)

    with serve([Route("/s", endpoint)]) as server, raw_request(server.port, "/s") as sock:
        sock.settimeout(5)
        received = b"".join(iter(lambda: sock.recv(65536), b""))
    assert b"data: one\r\n\r\n" in received and b"data: two\r\n\r\n" in received
    assert not received.endswith(b"0\r\n\r\n")  # no clean end of body: the error reached the server
    assert "the generator failed" in uvicorn_log.text
