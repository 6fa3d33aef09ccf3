"""ssesup's runs, for the runs scenario (bench/runs.py): ``Hub($BENCH_REDIS_URL)`` (in memory when unset).

``POST /runs/{name}?tokens=1000&every=0.05``  starts a run on channel ``name``: ``tokens`` events named
              ``t`` (data ``0``, ``1``, ...), one every ``every`` seconds; 201.
``GET /runs/{name}``  ``hub.stream(request, name)``: the run from its first token (or after
              ``Last-Event-ID``), then ``end``.

The app installs a supervisor (metrics off, as the other bench apps), so that runs are drained with the
process. Owns no measuring: the client and the scenario do.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ssesup import Event, Hub, Supervisor

hub = Hub(os.environ.get("BENCH_REDIS_URL") or None, metrics=False)


async def start(request: Request) -> Response:
    name = request.path_params["name"]
    count = int(request.query_params.get("tokens", "1000"))
    every = float(request.query_params.get("every", "0.05"))

    async def tokens() -> AsyncIterator[Event]:
        for i in range(count):
            yield Event(str(i), event="t")
            await anyio.sleep(every)

    await hub.start_run(name, tokens())
    return JSONResponse({"channel": name}, 201)


async def view(request: Request) -> Response:
    return hub.stream(request, request.path_params["name"])


app = Supervisor(metrics=False).install(
    Starlette(routes=[Route("/runs/{name}", start, methods=["POST"]), Route("/runs/{name}", view)])
)
