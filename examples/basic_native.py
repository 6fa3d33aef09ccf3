"""Basic streaming, natively: what basic_compat.py does, with ssesup's own API.

    uvicorn basic_native:app --app-dir examples   # then: curl -N http://127.0.0.1:8000/numbers

A disconnect needs no handling: the stream sees it while the generator waits and closes the generator.
"""

import anyio
from starlette.applications import Starlette
from starlette.routing import Route

from ssesup import Event, SupervisedStream

INTERVAL = 0.9


async def numbers(request):
    async def generate():
        for i in range(1, 6):
            await anyio.sleep(INTERVAL)
            yield Event(str(i))

    return SupervisedStream(generate())


async def endless(request):
    async def generate():
        i = 0
        while True:
            i += 1
            yield Event(str(i), event="tick")
            await anyio.sleep(INTERVAL)

    return SupervisedStream(generate())


app = Starlette(routes=[Route("/numbers", numbers), Route("/endless", endless)])
