"""The embedded demo app: ``ssesup demo`` serves it, ``curl -N`` shows its events.

Owns: a small Starlette app with ticking streams, ``/metrics``, ``/ready`` and ``/live``.
Does not own: anything the library does.
"""

from __future__ import annotations

import itertools

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount, Route

from ssesup import Event, SupervisedStream, default_supervisor, metrics_app


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


async def user_ticks(request: Request) -> SupervisedStream:
    """``/users/{user_id}/ticks``: ticks for one user (the metrics label it by the route template)."""
    user_id = request.path_params["user_id"]

    async def gen():
        for i in itertools.count():
            yield Event.json({"user": user_id, "tick": i}, id=str(i), event="tick")
            await anyio.sleep(1)

    return SupervisedStream(gen())


app = Starlette(
    routes=[
        Route("/ticks", ticks),
        Route("/users/{user_id}/ticks", user_ticks),
        Route("/metrics", metrics_app()),
        Mount("/ready", default_supervisor.readiness()),
        Mount("/live", default_supervisor.liveness()),
    ]
)
