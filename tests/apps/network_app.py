"""The app the network tests (tests/test_network.py) and the bench's network scenarios serve.

It owns the routes and a record of how each stream ended; it does not know which server runs it or
what the network does (tests/netns.py owns that). Routes, each opening with a ``hello`` event:

* ``/flood``: 64 KiB events as fast as the client takes them (a client that stops reading stalls it);
* ``/idle``: nothing after the hello (only the supervisor's pings);
* ``/slow?every=S``: one small event every ``S`` seconds (default 1);
* ``/count?n=N``: ``N`` events (default 3), then the stream completes;
* ``/page?n=N``: a page whose script opens ``N`` ``EventSource``s on ``/slow?every=0.5`` (default 8),
  each closed at its farewell; ``window.sources`` says what each saw;
* ``/metrics``: ssesup's metrics (``ssesup_streams_closed_total{route,reason}``).

Settings come from the environment: ``SSESUP_NET_SUPERVISOR`` is a JSON object of
:class:`~ssesup.Supervisor` keyword arguments (``{"send_timeout": 2, "drain_grace": 3}``); unset, the
supervisor has its defaults. Every stream, when it closes, appends ``<unix time> <route> <reason>
<client host:port>`` to ``SSESUP_NET_CLOSE_FILE``, so a test can read when and why each stream ended
after the server is gone.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from ssesup import Event, SupervisedStream, Supervisor, metrics_app
from ssesup.states import State, Transition

CLOSE_FILE = os.environ.get("SSESUP_NET_CLOSE_FILE", os.devnull)
FLOOD_EVENT = "f" * 65536

supervisor = Supervisor(
    farewell=lambda stream: Event("goodbye", event="farewell"),
    **json.loads(os.environ.get("SSESUP_NET_SUPERVISOR", "{}")),
)


def _record_close(stream: Any, transition: Transition) -> None:
    if transition.to_state is State.CLOSED:
        with open(CLOSE_FILE, "a") as f:
            f.write(f"{time.time():.3f} {stream.route} {transition.close_reason.value} {stream.client}\n")


supervisor.subscribe(_record_close)


async def flood(request: Request) -> SupervisedStream:
    async def gen():
        yield Event("hello")
        while True:
            yield Event(FLOOD_EVENT)
            await anyio.sleep(0)

    return SupervisedStream(gen())


async def idle(request: Request) -> SupervisedStream:
    async def gen():
        yield Event("hello")
        await anyio.sleep_forever()

    return SupervisedStream(gen())


async def slow(request: Request) -> SupervisedStream:
    every = float(request.query_params.get("every", "1"))

    async def gen():
        yield Event("hello")
        for i in itertools.count():
            await anyio.sleep(every)
            yield Event(f"tick {i}", id=str(i))

    return SupervisedStream(gen())


async def count(request: Request) -> SupervisedStream:
    n = int(request.query_params.get("n", "3"))

    async def gen():
        yield Event("hello")
        for i in range(n):
            yield Event(f"event {i}", id=str(i))

    return SupervisedStream(gen())


PAGE = """<!doctype html><meta charset="utf-8"><title>streams</title><script>
const count = Number(new URLSearchParams(location.search).get("n") || 8);
window.sources = [];
for (let i = 0; i < count; i++) {
  const state = {opened: false, ticks: 0, farewell: false};
  const source = new EventSource("/slow?every=0.5");
  source.onopen = () => { state.opened = true; };
  source.onmessage = (event) => { if (event.data.startsWith("tick")) state.ticks++; };
  source.addEventListener("farewell", () => { state.farewell = true; source.close(); });
  window.sources.push(state);
}
</script>"""


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


app = supervisor.install(
    Starlette(
        routes=[
            Route("/flood", flood),
            Route("/idle", idle),
            Route("/slow", slow),
            Route("/count", count),
            Route("/page", page),
            Route("/metrics", metrics_app()),
        ]
    )
)
