"""ssesup's hub on Redis, for the across-processes scenarios (bench/redis_hub.py): ``Hub($BENCH_REDIS_URL)``.

``/fanout``   ``hub.stream(request, "bench")``: what a publisher process puts on channel ``bench``.
``/proof``    ``hub.stream(request, "proof")``, resuming after ``Last-Event-ID``.
``POST /publish?n=``  publishes ``{"n": n, "pad": ...}`` (about 100 B of JSON) as an event named ``n``
              on ``proof`` through this process's hub; answers its id.

``BENCH_HUB_HISTORY`` is the hub's ``history_size`` (the default, unless set);
``BENCH_DRAIN_GRACE`` installs a ``Supervisor(drain_grace=..., reconnect=(0.05, 0.1))`` (a drain whose
farewell asks clients to come back within 100 ms), else the app runs on the default supervisor.
Owns no measuring: the client and the scenario do.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ssesup import Event, Hub, SupervisedStream, Supervisor

PAD = "x" * 80  # with {"n": ..., "pad": ...} about 100 B of data
_history = {"history_size": int(os.environ["BENCH_HUB_HISTORY"])} if "BENCH_HUB_HISTORY" in os.environ else {}
hub = Hub(os.environ["BENCH_REDIS_URL"], metrics=False, **_history)


async def fanout(request: Request) -> SupervisedStream:
    return hub.stream(request, "bench")


async def proof(request: Request) -> SupervisedStream:
    return hub.stream(request, "proof")


async def publish(request: Request) -> JSONResponse:
    n = int(request.query_params["n"])
    event_id = await hub.publish("proof", Event.json({"n": n, "pad": PAD}, event="n"))
    return JSONResponse({"id": event_id})


app = Starlette(routes=[Route("/fanout", fanout), Route("/proof", proof), Route("/publish", publish, methods=["POST"])])
if grace := os.environ.get("BENCH_DRAIN_GRACE"):
    Supervisor(drain_grace=float(grace), reconnect=(0.05, 0.1)).install(app)
