"""ssesup with its defaults (keep-alive pings and the send deadline on): ``SupervisedStream`` of ``Event``.

``BENCH_SSESUP_BARE=1`` turns pings and the send deadline off (``ping=0, send_timeout=0``), to see
what they cost. ``BENCH_DRAIN_GRACE=<seconds>`` installs a ``Supervisor(drain_grace=...)`` (the drain
scenario: a grace shorter than uvicorn's ``--timeout-graceful-shutdown``), ``BENCH_SSESUP_SUPERVISOR``
a supervisor of those keyword arguments (a JSON object; the churn scenario's short deadlines); unset,
the app runs on the default supervisor with no middleware, as an application with zero configuration
would. ``BENCH_SSESUP_JSON=stdlib`` makes ``import orjson`` fail in the server, so ssesup writes JSON with
the standard library, as where orjson is not installed (the library itself is not touched).
``BENCH_SSESUP_HUB=1`` serves ``/fanout`` through ``Hub()``: every tick is published to one channel
that every stream follows (``hub.stream``), the hub's fan-out over HTTP; and ``/idle`` as an idle
subscriber (``hub.stream`` of a channel whose one event each stream replays), the memory of one.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

if os.environ.get("BENCH_SSESUP_JSON") == "stdlib":
    sys.modules["orjson"] = None  # type: ignore[assignment]  # import orjson raises ImportError

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.apps.common import SIZE, TICK, Broadcaster, filler, loop_stats, tick, timed
from ssesup import Event, Hub, SupervisedStream, Supervisor, default_supervisor

OPTIONS = {"ping": 0, "send_timeout": 0} if os.environ.get("BENCH_SSESUP_BARE") == "1" else {}
broadcaster = Broadcaster()


def _params(request: Request) -> tuple[int, int, float]:
    q = request.query_params
    return int(q.get("n", "50000")), int(q.get("size", SIZE)), float(q.get("every", "0.02"))


async def burst(request: Request) -> SupervisedStream:
    n, size, _ = _params(request)
    data = filler(size)

    async def gen():
        for _ in range(n):
            yield Event(data=data)

    return SupervisedStream(gen(), **OPTIONS)


async def burst_fields(request: Request) -> SupervisedStream:
    n, size, _ = _params(request)
    text = filler(size)

    async def gen():
        for i in range(n):
            yield Event.json(tick(i, text), id=str(i), event="tick")

    return SupervisedStream(gen(), **OPTIONS)


async def burst_dict(request: Request) -> SupervisedStream:
    n, size, _ = _params(request)
    text = filler(size)

    async def gen():
        for i in range(n):
            yield {"data": tick(i, text), "id": str(i), "event": "tick"}

    return SupervisedStream(gen(), **OPTIONS)


async def latency(request: Request) -> SupervisedStream:
    n, size, every = _params(request)

    async def gen():
        for i in range(n):
            await asyncio.sleep(every)
            yield Event(data=timed(i, size))

    return SupervisedStream(gen(), **OPTIONS)


async def idle(request: Request) -> SupervisedStream:
    _, size, _ = _params(request)

    async def gen():
        yield Event(data=filler(size))
        await anyio.sleep_forever()

    return SupervisedStream(gen(), **OPTIONS)


async def ticks(request: Request) -> SupervisedStream:
    _, size, _ = _params(request)
    every = float(request.query_params.get("every", "1"))

    async def gen():
        data = filler(size)
        while True:
            yield Event(data=data)
            await asyncio.sleep(every)

    return SupervisedStream(gen(), **OPTIONS)


async def fanout(request: Request) -> SupervisedStream:
    async def gen():
        queue = broadcaster.subscribe()
        try:
            while True:
                yield Event(data=await queue.get())
        finally:
            broadcaster.unsubscribe(queue)

    return SupervisedStream(gen(), **OPTIONS)


hub = Hub(metrics=False)
hub_ticker: asyncio.Task | None = None


async def _publish_ticks() -> None:
    loop = asyncio.get_running_loop()
    deadline, seq = loop.time(), 0
    while True:
        deadline += TICK
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        seq += 1
        await hub.publish("ticks", Event(timed(seq, SIZE)))


async def hub_fanout(request: Request) -> SupervisedStream:
    global hub_ticker
    if hub_ticker is None:
        hub_ticker = asyncio.get_running_loop().create_task(_publish_ticks())
    return hub.stream(request, "ticks", **OPTIONS)


idle_start: str | None = None  # the id of the "idle" channel before its one event
idle_setup = asyncio.Lock()  # the first streams open together: one of them publishes the event


async def hub_idle(request: Request) -> SupervisedStream:
    """An idle subscriber: ``hub.stream`` of a channel with one event in its history, resumed from
    before it (so the client gets one event, as from ``/idle``), then nothing."""
    global idle_start
    if idle_start is None:  # the lock only until the channel is set up, not for every stream
        async with idle_setup:
            if idle_start is None:
                async with hub.subscribe("idle") as subscription:
                    start = (await anext(subscription)).id  # a subscription's first event: its position
                await hub.publish("idle", Event(data=filler(_params(request)[1])))
                idle_start = start
    headers = [*request.scope["headers"], (b"last-event-id", str(idle_start).encode())]
    return hub.stream(Request({**request.scope, "headers": headers}, request.receive), "idle", **OPTIONS)


async def stats(request: Request) -> JSONResponse:
    return JSONResponse(loop_stats(supervisor.loop_supervision.timers.pending))


app = Starlette(
    routes=[
        Route("/burst", burst),
        Route("/burst_fields", burst_fields),
        Route("/burst_dict", burst_dict),
        Route("/latency", latency),
        Route("/idle", hub_idle if os.environ.get("BENCH_SSESUP_HUB") == "1" else idle),
        Route("/ticks", ticks),
        Route("/fanout", hub_fanout if os.environ.get("BENCH_SSESUP_HUB") == "1" else fanout),
        Route("/stats", stats),
    ]
)
settings = json.loads(os.environ.get("BENCH_SSESUP_SUPERVISOR", "{}"))
if grace := os.environ.get("BENCH_DRAIN_GRACE"):
    settings["drain_grace"] = float(grace)
supervisor = Supervisor(**settings) if settings else default_supervisor
if settings:
    supervisor.install(app)
