"""sse-starlette with its defaults: ``EventSourceResponse`` of ``ServerSentEvent`` (CRLF, 15 s pings)."""

from __future__ import annotations

import asyncio
import json

import anyio
from sse_starlette import EventSourceResponse, JSONServerSentEvent, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from bench.apps.common import SIZE, Broadcaster, filler, stats, tick, timed

broadcaster = Broadcaster()


def _params(request: Request) -> tuple[int, int, float]:
    q = request.query_params
    return int(q.get("n", "50000")), int(q.get("size", SIZE)), float(q.get("every", "0.02"))


async def burst(request: Request) -> EventSourceResponse:
    n, size, _ = _params(request)
    data = filler(size)

    async def gen():
        for _ in range(n):
            yield ServerSentEvent(data=data)

    return EventSourceResponse(gen())


async def burst_fields(request: Request) -> EventSourceResponse:
    n, size, _ = _params(request)
    text = filler(size)

    async def gen():
        for i in range(n):
            yield JSONServerSentEvent(tick(i, text), id=str(i), event="tick")

    return EventSourceResponse(gen())


async def burst_dict(request: Request) -> EventSourceResponse:
    n, size, _ = _params(request)
    text = filler(size)

    async def gen():
        for i in range(n):
            yield {"data": json.dumps(tick(i, text)), "id": str(i), "event": "tick"}

    return EventSourceResponse(gen())


async def latency(request: Request) -> EventSourceResponse:
    n, size, every = _params(request)

    async def gen():
        for i in range(n):
            await asyncio.sleep(every)
            yield ServerSentEvent(data=timed(i, size))

    return EventSourceResponse(gen())


async def idle(request: Request) -> EventSourceResponse:
    _, size, _ = _params(request)

    async def gen():
        yield ServerSentEvent(data=filler(size))
        await anyio.sleep_forever()

    return EventSourceResponse(gen())


async def ticks(request: Request) -> EventSourceResponse:
    _, size, _ = _params(request)
    every = float(request.query_params.get("every", "1"))

    async def gen():
        data = filler(size)
        while True:
            yield ServerSentEvent(data=data)
            await asyncio.sleep(every)

    return EventSourceResponse(gen())


async def fanout(request: Request) -> EventSourceResponse:
    async def gen():
        queue = broadcaster.subscribe()
        try:
            while True:
                yield ServerSentEvent(data=await queue.get())
        finally:
            broadcaster.unsubscribe(queue)

    return EventSourceResponse(gen())


app = Starlette(
    routes=[
        Route("/burst", burst),
        Route("/burst_fields", burst_fields),
        Route("/burst_dict", burst_dict),
        Route("/latency", latency),
        Route("/idle", idle),
        Route("/ticks", ticks),
        Route("/fanout", fanout),
        Route("/stats", stats),
    ]
)
