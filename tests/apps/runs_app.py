"""An app of runs for the run tests: ``make_app(hub, supervisor)`` serves

* ``POST /runs/{name}?tokens=300&every=0.01&fail_at=-1&cleanup=0`` — starts a run on channel ``name``
  of ``tokens`` events ``token`` (data ``"0"``, ``"1"``, ...), one every ``every`` seconds; it raises at
  token ``fail_at`` (with a message no client may see); its ``finally`` sleeps ``cleanup`` seconds,
  then notes the run in ``cleaned``; answers 201, or 409 when a run is active on the channel;
* ``GET /runs/{name}`` — ``hub.stream(request, name)``;
* ``POST /runs/{name}/cancel`` — ``hub.cancel_run(name)``: ``{"cancelled": bool}``;
* ``GET /runs/{name}/status`` — ``{"status": ..., "cleaned": bool}`` (the latter: of this process).

``app`` is that app over ``Hub($SSESUP_HUB_URL)`` (in memory when unset) with a supervisor of
``$RUNS_DRAIN_GRACE`` seconds' drain (2 by default), for server subprocesses.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ssesup import Event, Hub, Supervisor
from ssesup.hub import RunActive

SECRET = "the database password is hunter2"
cleaned: dict[str, float] = {}


def tokens(name: str, count: int, every: float, fail_at: int, cleanup: float) -> AsyncIterator[Event]:
    async def gen() -> AsyncIterator[Event]:
        try:
            for i in range(count):
                if i == fail_at:
                    raise RuntimeError(SECRET)
                yield Event(str(i), event="token")
                await anyio.sleep(every)
        finally:
            await anyio.sleep(cleanup)  # a cleanup that awaits (closing a model's connection, say)
            cleaned[name] = time.monotonic()

    return gen()


def make_app(hub: Hub, supervisor: Supervisor) -> Starlette:
    async def start(request: Request) -> Response:
        name = request.path_params["name"]
        query = request.query_params
        source = tokens(
            name,
            int(query.get("tokens", "300")),
            float(query.get("every", "0.01")),
            int(query.get("fail_at", "-1")),
            float(query.get("cleanup", "0")),
        )
        try:
            await hub.start_run(name, source)
        except RunActive as active:
            return JSONResponse({"error": str(active)}, 409)
        return JSONResponse({"channel": name, "pid": os.getpid()}, 201)

    async def view(request: Request) -> Response:
        return hub.stream(request, request.path_params["name"], headers={"x-worker": str(os.getpid())})

    async def cancel(request: Request) -> Response:
        return JSONResponse({"cancelled": await hub.cancel_run(request.path_params["name"])})

    async def status(request: Request) -> Response:
        name = request.path_params["name"]
        return JSONResponse({"status": await hub.run_status(name), "cleaned": name in cleaned})

    app = Starlette(
        routes=[
            Route("/runs/{name}", start, methods=["POST"]),
            Route("/runs/{name}", view),
            Route("/runs/{name}/cancel", cancel, methods=["POST"]),
            Route("/runs/{name}/status", status),
        ],
        lifespan=closing(hub),
    )
    return supervisor.install(app)


def closing(hub: Hub):
    """A lifespan that closes the hub's connections at shutdown, on the server's loop (after the
    supervisor's runs have ended: its lifespan shutdown waits for them first)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await hub.aclose()

    return lifespan


app = make_app(
    Hub(os.environ.get("SSESUP_HUB_URL") or None),
    Supervisor(drain_grace=float(os.environ.get("RUNS_DRAIN_GRACE", "2")), reconnect=(0.05, 0.1), ping=0.5),
)
