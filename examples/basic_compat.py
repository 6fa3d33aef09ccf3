"""Basic streaming, with ssesup.compat: sse-starlette's first example, with one import changed.

uvicorn basic_compat:app --app-dir examples   # then: curl -N http://127.0.0.1:8000/numbers
"""

import anyio
from starlette.applications import Starlette
from starlette.routing import Route

from ssesup.compat import EventSourceResponse

INTERVAL = 0.9


async def numbers(request):
    async def generate():
        for i in range(1, 6):
            await anyio.sleep(INTERVAL)
            yield dict(data=i)

    return EventSourceResponse(generate())


async def endless(request):
    async def generate():
        i = 0
        while True:
            i += 1
            yield dict(data=i, event="tick")
            await anyio.sleep(INTERVAL)

    return EventSourceResponse(generate())


app = Starlette(routes=[Route("/numbers", numbers), Route("/endless", endless)])
