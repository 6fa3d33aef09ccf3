"""The across-processes anchor: sse-starlette streaming encode's ``broadcaster`` on Redis pub/sub.

``/fanout``   ``EventSourceResponse`` of what ``Broadcast($BENCH_REDIS_URL)`` delivers on channel
``bench`` (``broadcast.subscribe``), each message as a ``ServerSentEvent`` named ``tick``. The
broadcast connects and disconnects in the app's lifespan, as broadcaster's README does. Pub/sub keeps
no history: a client that reconnects gets only what is published after it subscribed again. Owns no
measuring (bench/redis_hub.py).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from broadcaster import Broadcast
from broadcaster._backends.redis import RedisBackend
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route


class SubscribedRedisBackend(RedisBackend):
    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)
        self._ready.set()


broadcast = Broadcast(backend=SubscribedRedisBackend(os.environ["BENCH_REDIS_URL"]))


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    await broadcast.connect()
    try:
        yield
    finally:
        await broadcast.disconnect()


async def fanout(request: Request) -> EventSourceResponse:
    async def gen():
        async with broadcast.subscribe(channel="bench") as subscriber:
            async for event in subscriber:
                yield ServerSentEvent(data=event.message, event="tick")

    return EventSourceResponse(gen())


app = Starlette(routes=[Route("/fanout", fanout)], lifespan=lifespan)
