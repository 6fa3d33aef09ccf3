"""A client that stops reading, with ssesup.compat: after ``send_timeout`` seconds of a blocked send the
stream ends (``SendTimeoutError`` is raised to the server, as sse-starlette raises it) and the
generator is closed.

    uvicorn send_timeout_compat:app --app-dir examples
    curl -N http://127.0.0.1:8000/events   # then suspend curl (Ctrl+Z): the stream ends 10 s later
"""

import anyio
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from ssesup.compat import EventSourceResponse

SEND_TIMEOUT = 10
streaming: set[object] = set()


async def events(request):
    async def generate():
        token = object()
        streaming.add(token)
        try:
            i = 0
            while True:
                i += 1
                yield dict(data={i: " " * 4096})
                await anyio.sleep(0.001)
        finally:
            streaming.discard(token)

    return EventSourceResponse(generate(), send_timeout=SEND_TIMEOUT)


async def status(request):
    return JSONResponse({"streaming": len(streaming)})


app = Starlette(routes=[Route("/events", events), Route("/status", status)])
