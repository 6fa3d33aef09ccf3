"""A client that stops reading, natively: a send that does not complete within ``send_timeout`` (30 s
unless set) closes the stream with ``send_timeout``, releases its connection (a reset, its buffers
freed) and closes the generator; nothing is raised to the server, the close reason is logged and
counted. A peer that vanished without a FIN is found by ``dead_peer_timeout`` as well.

    uvicorn send_timeout_native:app --app-dir examples
    curl -N http://127.0.0.1:8000/events   # then suspend curl (Ctrl+Z): the stream ends 10 s later
"""

import anyio
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from ssesup import SupervisedStream

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
                yield {"data": {i: " " * 4096}}  # a dict of fields; data not a str goes out as JSON
                await anyio.sleep(0.001)
        finally:
            streaming.discard(token)

    return SupervisedStream(generate(), send_timeout=SEND_TIMEOUT)


async def status(request):
    return JSONResponse({"streaming": len(streaming)})


app = Starlette(routes=[Route("/events", events), Route("/status", status)])
