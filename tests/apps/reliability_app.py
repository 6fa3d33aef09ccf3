"""The app the reliability tests serve: generators that block, clean up slowly, send large events, or
set bad headers; a plain sync endpoint; and a recorder of close reasons and cleanups."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ssesup import Event, SupervisedStream, Supervisor
from ssesup.states import State, Trigger
from ssesup.stream import StreamEnding


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closes: list[tuple[str, str]] = []
        self.cleanups: list[tuple[str, float]] = []
        self.started: list[str] = []

    def __call__(self, stream: Any, transition: Any) -> None:
        if transition.to_state is State.CLOSED:
            with self.lock:
                self.closes.append((stream.route, transition.close_reason.value))

    def reasons(self, route: str) -> list[str]:
        with self.lock:
            return [reason for r, reason in self.closes if r == route]

    def cleaned(self, name: str) -> list[float]:
        with self.lock:
            return [seconds for n, seconds in self.cleanups if n == name]


def make_app(supervisor: Supervisor) -> tuple[Starlette, Recorder, queue.Queue]:
    recorder = Recorder()
    supervisor.subscribe(recorder)
    blocker: queue.Queue = queue.Queue()  # never fed: sync generators block on it

    def stream(gen: Any, **kwargs: Any) -> SupervisedStream:
        return SupervisedStream(gen, supervisor=supervisor, **kwargs)

    async def fast(request: Request) -> SupervisedStream:
        """As fast as the client reads: a client that never reads stalls the sends."""

        async def gen():
            chunk = "x" * 4000
            while True:
                yield Event(chunk)
                await anyio.sleep(0)

        return stream(gen(), send_timeout=float(request.query_params.get("send_timeout", "1")))

    def blocking(request: Request) -> SupervisedStream:
        def gen():
            yield Event("before the block")
            blocker.get()  # nothing ever comes
            yield Event("never")

        return stream(gen())

    def sync_count(request: Request) -> SupervisedStream:
        return stream(iter([Event("one", id="1"), Event("two", id="2")]))

    def plain_sync(request: Request) -> PlainTextResponse:
        return PlainTextResponse("sync endpoint works")

    async def slow_cleanup(request: Request) -> SupervisedStream:
        """Its finally awaits a cleanup of ``cleanup`` seconds after the client leaves."""
        seconds = float(request.query_params.get("cleanup", "1"))

        async def gen():
            try:
                yield Event("hello", id="1")
                await anyio.sleep_forever()
            finally:
                started = time.monotonic()
                await anyio.sleep(seconds)
                with recorder.lock:
                    recorder.cleanups.append(("slow", time.monotonic() - started))

        return stream(gen(), close_grace=float(request.query_params.get("grace", "5")))

    async def stubborn(request: Request) -> SupervisedStream:
        """Its finally swallows every cancellation, forever."""

        async def gen():
            try:
                yield Event("hello", id="1")
                await anyio.sleep_forever()
            finally:
                while True:
                    with contextlib.suppress(BaseException):  # the behaviour under test
                        await anyio.sleep(0.05)

        return stream(gen(), close_grace=0.5)

    async def head_probe(request: Request) -> SupervisedStream:
        async def gen():
            with recorder.lock:
                recorder.started.append("head_probe")
            yield Event("body")

        return stream(gen())

    async def large(request: Request) -> SupervisedStream:
        size = int(request.query_params.get("size", str(10 * 1024 * 1024)))

        async def gen():
            yield Event("x" * size, id="big")
            await anyio.sleep_forever()

        return stream(gen(), send_timeout=30)

    async def limited(request: Request) -> SupervisedStream:
        async def gen():
            yield Event("small", id="1")
            yield Event("y" * 2000, id="2")
            yield Event("never sent", id="3")

        return stream(gen(), max_event_size=1000)

    async def bad_header(request: Request) -> SupervisedStream:
        async def gen():
            yield Event("never")

        return stream(gen(), headers={"x-bad": "a\r\nb"})

    async def gives_up(request: Request) -> SupervisedStream:
        async def gen():
            yield Event("one", id="1")
            raise StreamEnding(Trigger.SLOW_CONSUMER, "this client is too slow")

        return stream(gen())

    routes = [
        Route("/gives-up", gives_up),
        Route("/fast", fast),
        Route("/blocking", blocking),
        Route("/sync-count", sync_count),
        Route("/plain-sync", plain_sync),
        Route("/slow-cleanup", slow_cleanup),
        Route("/stubborn", stubborn),
        Route("/head-probe", head_probe),
        Route("/large", large),
        Route("/limited", limited),
        Route("/bad-header", bad_header),
    ]
    return Starlette(routes=routes), recorder, blocker


app, _recorder, _blocker = make_app(Supervisor(ping=0, drain_grace=2))
"""For servers run as a subprocess."""
