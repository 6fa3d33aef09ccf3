"""The app the core tests serve: one route per behaviour, and a recorder of what happened inside."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import anyio
import sniffio
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ssesup import Event, StreamObserver, SupervisedStream, Supervisor
from ssesup.states import State


@dataclass
class Recorder(StreamObserver):
    """What the server did, read by the test's thread."""

    closes: list[tuple[str, str, str]] = field(default_factory=list)
    transitions: list[tuple[str, str, str]] = field(default_factory=list)
    finally_ran: list[str] = field(default_factory=list)
    background_ran: list[str] = field(default_factory=list)
    pulled: list[int] = field(default_factory=list)
    reports: list[tuple[str, int, int, int]] = field(default_factory=list)
    body_sends: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def transitioned(self, stream: Any, transition: Any) -> None:
        with self.lock:
            self.transitions.append((stream.stream_id, transition.from_state.value, transition.to_state.value))
            if transition.to_state is State.CLOSED:
                self.closes.append((stream.stream_id, stream.route, transition.close_reason.value))

    def sent(self, stream: Any, events: int, pings: int, nbytes: int) -> None:
        with self.lock:
            self.reports.append((stream.route, events, pings, nbytes))

    def reported(self, route: str) -> tuple[int, int, int]:
        """Events, pings and bytes the observers heard of for ``route``."""
        with self.lock:
            rows = [row[1:] for row in self.reports if row[0] == route]
        return tuple(sum(column) for column in zip(*rows, strict=True)) if rows else (0, 0, 0)  # type: ignore[return-value]

    def reasons(self, route: str | None = None) -> list[str]:
        with self.lock:
            return [reason for _, r, reason in self.closes if route is None or r == route]


def make_app(supervisor: Supervisor | None = None) -> tuple[Starlette, Recorder]:
    recorder = Recorder()
    (supervisor or _default()).subscribe(recorder)

    def stream(gen: Any, **kwargs: Any) -> SupervisedStream:
        return SupervisedStream(gen, supervisor=supervisor, **kwargs) if supervisor else SupervisedStream(gen, **kwargs)

    async def mixed(request: Request) -> SupervisedStream:
        async def gen():
            yield Event("one", id="1", event="first")
            yield "two\nlines"
            yield b"data: three\r\n\r\n"
            yield memoryview(b"data: four\r\n\r\n")
            yield {"data": "five", "event": "dict", "id": "5", "retry": 1500}
            yield Event.json({"six": [6, None]}, event="json")

        return stream(gen())

    async def sync_gen(request: Request) -> SupervisedStream:
        def gen():
            try:
                for i in range(3):
                    yield Event(f"sync {i}", id=str(i))
            finally:
                recorder.finally_ran.append("sync")

        return stream(gen())

    async def count(request: Request) -> SupervisedStream:
        n = int(request.query_params.get("n", "3"))
        every = float(request.query_params.get("every", "0"))
        size = int(request.query_params.get("size", "0"))

        async def gen():
            try:
                for i in range(n):
                    yield Event(f"{i}:" + "x" * size, id=str(i))
                    if every:
                        await anyio.sleep(every)
            finally:
                recorder.finally_ran.append("count")

        task = BackgroundTask(recorder.background_ran.append, "count")
        return stream(gen(), background=task)

    async def wait(request: Request) -> SupervisedStream:
        async def gen():
            try:
                yield Event("waiting", id="0")
                await anyio.sleep_forever()
            finally:
                recorder.finally_ran.append("wait")

        return stream(gen(), **_stream_options(request))

    async def fail(request: Request) -> SupervisedStream:
        async def gen():
            try:
                yield Event("before the error")
                raise RuntimeError("secret database password in this message")
            finally:
                recorder.finally_ran.append("fail")

        return stream(gen())

    async def bad_item(request: Request) -> SupervisedStream:
        async def gen():
            yield Event("fine")
            yield object()  # not JSON-able: numbers, lists and models are sent as JSON data

        return stream(gen())

    async def flood(request: Request) -> SupervisedStream:
        async def gen():
            try:
                i = 0
                while True:
                    recorder.pulled.append(i)
                    yield Event("y" * 8192, id=str(i))
                    i += 1
                    await anyio.sleep(0)
            finally:
                recorder.finally_ran.append("flood")

        return stream(gen(), **_stream_options(request))

    async def busy(request: Request) -> SupervisedStream:
        async def gen():
            for i in range(int(request.query_params.get("n", "20"))):
                yield Event(str(i))
                await anyio.sleep(float(request.query_params.get("every", "0.05")))

        return stream(gen(), **_stream_options(request))

    async def user_events(request: Request) -> SupervisedStream:
        user = request.path_params["user_id"]

        async def gen():
            yield Event(f"hello {user}")

        return stream(gen())

    async def custom(request: Request) -> SupervisedStream:
        async def gen():
            yield Event("created")

        return stream(gen(), status_code=201, headers={"cache-control": "no-cache", "x-extra": "yes"})

    async def stats(request: Request) -> JSONResponse:
        live = (supervisor or _default()).loop_supervision
        tasks = len(asyncio.all_tasks()) if sniffio.current_async_library() == "asyncio" else -1
        return JSONResponse(
            {
                "streams": len(live.streams),
                "timers": live.timers.pending,
                "timer_driver": live.timers.running,
                "tasks": tasks,
            }
        )

    app = Starlette(
        routes=[
            Route("/mixed", mixed),
            Route("/sync", sync_gen),
            Route("/count", count),
            Route("/wait", wait),
            Route("/fail", fail),
            Route("/bad-item", bad_item),
            Route("/flood", flood),
            Route("/busy", busy),
            Route("/users/{user_id}/events", user_events),
            Route("/custom", custom),
            Route("/stats", stats),
        ]
    )
    return CountBodySends(app, recorder), recorder  # type: ignore[return-value]


class CountBodySends:
    """ASGI middleware: records every ``http.response.body`` message (path, bytes), i.e. every send."""

    def __init__(self, app: Any, recorder: Recorder) -> None:
        self.app = app
        self.recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.body":
                with self.recorder.lock:
                    self.recorder.body_sends.append((scope["path"], len(message.get("body", b""))))
            await send(message)

        await self.app(scope, receive, counting_send)


def _stream_options(request: Request) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name in ("ping", "send_timeout"):
        if name in request.query_params:
            options[name] = float(request.query_params[name])
    if request.query_params.get("ping_event"):
        options["ping_factory"] = lambda: Event(event="ping", data="keep-alive")
    return options


def _default() -> Supervisor:
    from ssesup import default_supervisor

    return default_supervisor
