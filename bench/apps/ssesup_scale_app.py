"""ssesup at scale (bench/scale.py): every stream follows its own user's channel and one broadcast channel.

``GET /s/{uid}``   ``hub.stream(request, f"user:{uid}", "broadcast", ping=15)`` on ``Hub($BENCH_REDIS_URL)``,
                   resuming after ``Last-Event-ID``.

Every worker process of the scenario runs this app with ssesup's defaults (its Prometheus metrics and
structlog logs on, as an application has them), except: ``BENCH_SCALE_PING`` sets the streams' ``ping``
(15 s unless set); ``BENCH_DRAIN_GRACE`` and ``BENCH_SCALE_RECONNECT`` (``"low,high"`` seconds) install a
``Supervisor(drain_grace=..., reconnect=(low, high))`` when either is set (the smoke run's short drain);
``BENCH_SCALE_HUB_METRICS=0`` turns the hub's metrics off. Owns no measuring: bench/scale.py does.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from bench.apps.common import raise_nofile
from ssesup import Hub, SupervisedStream, Supervisor

PING = float(os.environ.get("BENCH_SCALE_PING", "15"))
hub = Hub(os.environ["BENCH_REDIS_URL"], metrics=os.environ.get("BENCH_SCALE_HUB_METRICS", "1") != "0")


async def stream(request: Request) -> SupervisedStream:
    return hub.stream(request, f"user:{request.path_params['uid']}", "broadcast", ping=PING)


app = Starlette(routes=[Route("/s/{uid:int}", stream)])
grace, reconnect = os.environ.get("BENCH_DRAIN_GRACE"), os.environ.get("BENCH_SCALE_RECONNECT")
if grace or reconnect:
    settings: dict = {}
    if grace:
        settings["drain_grace"] = float(grace)
    if reconnect:
        low, high = (float(part) for part in reconnect.split(","))
        settings["reconnect"] = (low, high)
    Supervisor(**settings).install(app)
raise_nofile()
