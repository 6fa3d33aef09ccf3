"""A cooperative-shutdown app for SIGTERM tests, on the library named by ``SSE_LIB`` (``ssesup.compat`` or
``sse_starlette``), imported as an app would import it (sse-starlette's patch of uvicorn left in place)."""

from __future__ import annotations

import importlib
import os

import anyio
from starlette.applications import Starlette
from starlette.routing import Route

lib = importlib.import_module(os.environ.get("SSE_LIB", "ssesup.compat"))
AppStatus = importlib.import_module(f"{lib.__name__}.sse").AppStatus


async def events(request):
    shutdown_event = anyio.Event()

    async def generate():
        yield {"data": "hello"}
        await shutdown_event.wait()
        yield {"event": "shutdown", "data": f"goodbye, should_exit={AppStatus.should_exit}"}

    return lib.EventSourceResponse(generate(), shutdown_event=shutdown_event, shutdown_grace_period=5)


app = Starlette(routes=[Route("/events", events)])
