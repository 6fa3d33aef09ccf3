"""Cooperative shutdown, with ssesup.compat: on SIGTERM (or ``AppStatus.should_exit = True``) the
``shutdown_event`` is set; the generator says goodbye and returns within ``shutdown_grace_period``.
ssesup adds its farewell (a ``retry:`` hint) and a clean end of body.

    uvicorn cooperative_shutdown_compat:app --app-dir examples
    curl -N http://127.0.0.1:8000/events   # then stop the server (Ctrl+C): a "shutdown" event
"""

import anyio
from starlette.applications import Starlette
from starlette.routing import Route

from ssesup.compat import EventSourceResponse

INTERVAL = 1.0


async def events(request):
    shutdown_event = anyio.Event()

    async def generate():
        counter = 0
        while not shutdown_event.is_set():
            counter += 1
            yield {"data": f"tick {counter}", "id": str(counter)}
            with anyio.move_on_after(INTERVAL):
                await shutdown_event.wait()
        yield {"event": "shutdown", "data": "server is shutting down, goodbye"}

    return EventSourceResponse(generate(), shutdown_event=shutdown_event, shutdown_grace_period=5.0)


app = Starlette(routes=[Route("/events", events)])
