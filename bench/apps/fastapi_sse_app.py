"""FastAPI's own SSE (``fastapi.sse``): path operations that ``yield`` with ``response_class=EventSourceResponse``.

Events are ``ServerSentEvent(raw_data=...)`` so the data line is the same 100 bytes as elsewhere (plain
``data=`` would be JSON-quoted); the realistic bursts pass their object as ``data=``, which FastAPI writes
as JSON. FastAPI frames events with LF and inserts a ping after 15 s of silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

import anyio
from fastapi import FastAPI
from fastapi.sse import EventSourceResponse, ServerSentEvent

from bench.apps.common import SIZE, Broadcaster, filler, loop_stats, tick, timed

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
broadcaster = Broadcaster()


@app.get("/burst", response_class=EventSourceResponse)
async def burst(n: int = 50000, size: int = SIZE) -> AsyncIterable[ServerSentEvent]:
    data = filler(size)
    for _ in range(n):
        yield ServerSentEvent(raw_data=data)


@app.get("/burst_fields", response_class=EventSourceResponse)
async def burst_fields(n: int = 50000, size: int = SIZE) -> AsyncIterable[ServerSentEvent]:
    text = filler(size)
    for i in range(n):
        yield ServerSentEvent(data=tick(i, text), id=str(i), event="tick")


@app.get("/burst_dict", response_class=EventSourceResponse)
async def burst_dict(n: int = 50000, size: int = SIZE) -> AsyncIterable[ServerSentEvent]:
    # A plain dict yielded here would be sent as the data alone; a dict of fields is validated into an event.
    text = filler(size)
    for i in range(n):
        yield ServerSentEvent.model_validate({"data": tick(i, text), "id": str(i), "event": "tick"})


@app.get("/latency", response_class=EventSourceResponse)
async def latency(n: int = 100, every: float = 0.02, size: int = SIZE) -> AsyncIterable[ServerSentEvent]:
    for i in range(n):
        await asyncio.sleep(every)
        yield ServerSentEvent(raw_data=timed(i, size))


@app.get("/idle", response_class=EventSourceResponse)
async def idle(size: int = SIZE) -> AsyncIterable[ServerSentEvent]:
    yield ServerSentEvent(raw_data=filler(size))
    await anyio.sleep_forever()


@app.get("/ticks", response_class=EventSourceResponse)
async def ticks(every: float = 1.0, size: int = SIZE) -> AsyncIterable[ServerSentEvent]:
    data = filler(size)
    while True:
        yield ServerSentEvent(raw_data=data)
        await asyncio.sleep(every)


@app.get("/fanout", response_class=EventSourceResponse)
async def fanout() -> AsyncIterable[ServerSentEvent]:
    queue = broadcaster.subscribe()
    try:
        while True:
            yield ServerSentEvent(raw_data=await queue.get())
    finally:
        broadcaster.unsubscribe(queue)


@app.get("/stats")
async def stats() -> dict:
    return loop_stats()
