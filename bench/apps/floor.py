"""The floor: Starlette's bare ``StreamingResponse`` of pre-encoded frames, one ASGI send per event."""

from __future__ import annotations

import asyncio
import json

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from bench.apps.common import SIZE, Broadcaster, filler, frame, stats, tick, timed

MEDIA = "text/event-stream"
broadcaster = Broadcaster(make=frame)


def _params(request: Request) -> tuple[int, int, float]:
    q = request.query_params
    return int(q.get("n", "50000")), int(q.get("size", SIZE)), float(q.get("every", "0.02"))


async def burst(request: Request) -> StreamingResponse:
    n, size, _ = _params(request)
    one = frame(filler(size))

    async def gen():
        for _ in range(n):
            yield one

    return StreamingResponse(gen(), media_type=MEDIA)


async def burst_fields(request: Request) -> StreamingResponse:
    """The realistic events, formatted by hand (one frame per event, one ASGI send each); the dict
    burst is the same code: by hand there is nothing else to yield."""
    n, size, _ = _params(request)
    text = filler(size)

    async def gen():
        for i in range(n):
            obj = tick(i, text)
            yield f"event: tick\r\nid: {i}\r\ndata: {json.dumps(obj, separators=(',', ':'))}\r\n\r\n".encode()

    return StreamingResponse(gen(), media_type=MEDIA)


async def latency(request: Request) -> StreamingResponse:
    n, size, every = _params(request)

    async def gen():
        for i in range(n):
            await asyncio.sleep(every)
            yield frame(timed(i, size))

    return StreamingResponse(gen(), media_type=MEDIA)


async def idle(request: Request) -> StreamingResponse:
    _, size, _ = _params(request)

    async def gen():
        yield frame(filler(size))
        await anyio.sleep_forever()

    return StreamingResponse(gen(), media_type=MEDIA)


async def ticks(request: Request) -> StreamingResponse:
    _, size, _ = _params(request)
    every = float(request.query_params.get("every", "1"))

    async def gen():
        data = frame(filler(size))
        while True:
            yield data
            await asyncio.sleep(every)

    return StreamingResponse(gen(), media_type=MEDIA)


async def fanout(request: Request) -> StreamingResponse:
    async def gen():
        queue = broadcaster.subscribe()
        try:
            while True:
                yield await queue.get()
        finally:
            broadcaster.unsubscribe(queue)

    return StreamingResponse(gen(), media_type=MEDIA)


app = Starlette(
    routes=[
        Route("/burst", burst),
        Route("/burst_fields", burst_fields),
        Route("/burst_dict", burst_fields),
        Route("/latency", latency),
        Route("/idle", idle),
        Route("/ticks", ticks),
        Route("/fanout", fanout),
        Route("/stats", stats),
    ]
)
