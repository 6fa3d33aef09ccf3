"""The embedded demo app: ``ssesup demo`` serves it, ``curl -N`` shows its events.

Owns: a small Starlette app with a ticking stream. Does not own: anything the library does.
"""

from __future__ import annotations

import itertools

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from ssesup import Event, SupervisedStream


async def ticks(request: Request) -> SupervisedStream:
    """``/ticks?every=1&count=10``: one event a tick; count 0 streams until the client leaves."""
    every = float(request.query_params.get("every", "1"))
    count = int(request.query_params.get("count", "0"))

    async def gen():
        numbers = itertools.count() if count <= 0 else range(count)
        for i in numbers:
            yield Event.json({"tick": i}, id=str(i), event="tick")
            await anyio.sleep(every)

    return SupervisedStream(gen())


app = Starlette(routes=[Route("/ticks", ticks)])
