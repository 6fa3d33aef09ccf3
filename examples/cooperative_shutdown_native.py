"""Cooperative shutdown, natively: on SIGTERM the supervisor drains; the generator sees it
(``stream.draining``, ``await stream.wait_draining()``), says goodbye and returns. The stream then ends
with the supervisor's farewell (a jittered ``retry:`` hint) and a clean end of body; one that does not
return is closed in its wave, within the supervisor's ``drain_grace``.

    uvicorn cooperative_shutdown_native:app --app-dir examples
    curl -N http://127.0.0.1:8000/events   # then stop the server (Ctrl+C): a "shutdown" event
"""

import anyio
from starlette.applications import Starlette
from starlette.routing import Route

from ssesup import Event, SupervisedStream, current_stream

INTERVAL = 1.0


async def events(request):
    async def generate():
        stream = current_stream()
        counter = 0
        while not stream.draining:
            counter += 1
            yield Event(f"tick {counter}", id=str(counter))
            with anyio.move_on_after(INTERVAL):
                await stream.wait_draining()
        yield Event("server is shutting down, goodbye", event="shutdown")

    return SupervisedStream(generate())


app = Starlette(routes=[Route("/events", events)])
