"""ssesup at scale (bench/scale.py): every stream follows its own user's channel and one broadcast channel.

``GET /s/{uid}``   ``hub.stream(request, f"user:{uid}", "broadcast", ping=15)`` on ``Hub($BENCH_REDIS_URL)``,
                   resuming after ``Last-Event-ID``.

Every worker process of the scenario runs this app with ssesup's defaults (its Prometheus metrics and
structlog logs on, as an application has them), except: ``BENCH_SCALE_PING`` sets the streams' ``ping``
(15 s unless set); ``BENCH_DRAIN_GRACE`` and ``BENCH_SCALE_RECONNECT`` (``"low,high"`` seconds) install a
``Supervisor(drain_grace=..., reconnect=(low, high))`` when either is set (the smoke run's short drain);
``BENCH_SCALE_HUB_METRICS=0`` turns the hub's metrics off; ``BENCH_SCALE_TRACE=1`` adds
``/debug/memory`` (bench/scale_memory.py). Owns no measuring: bench/scale.py does.
"""

from __future__ import annotations

import gc
import os
import tracemalloc

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.apps.common import raise_nofile
from ssesup import Hub, SupervisedStream, Supervisor

PING = float(os.environ.get("BENCH_SCALE_PING", "15"))
hub = Hub(os.environ["BENCH_REDIS_URL"], metrics=os.environ.get("BENCH_SCALE_HUB_METRICS", "1") != "0")


async def stream(request: Request) -> SupervisedStream:
    return hub.stream(request, f"user:{request.path_params['uid']}", "broadcast", ping=PING)


async def memory(request: Request) -> JSONResponse:
    """``BENCH_SCALE_TRACE=1`` with ``PYTHONTRACEMALLOC``: ``?mark`` keeps a snapshot and the count of
    live objects per type; without it, what was allocated since, by line (``top`` lines, KiB and
    blocks), and the objects per type added (bench/scale_memory.py)."""
    global _mark
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
    types = _types()
    if "mark" in request.query_params:
        _mark = (snapshot, types)
        return JSONResponse({"marked": True})
    before, before_types = _mark
    top = int(request.query_params.get("top", "30"))
    stats = snapshot.compare_to(before, "lineno")
    lines = [
        {"where": f"{stat.traceback[0].filename}:{stat.traceback[0].lineno}", "kib": stat.size_diff / 1024,
         "blocks": stat.count_diff}
        for stat in stats[:top]
    ]  # fmt: skip
    added = {name: count - before_types.get(name, 0) for name, count in types.items()}
    total = sum(stat.size_diff for stat in stats) / 1024
    objects = sorted(((n, c) for n, c in added.items() if c > 0), key=lambda item: -item[1])[:top]
    return JSONResponse({"traced_kib": total, "lines": lines, "objects": objects})


def _types() -> dict[str, int]:
    counts: dict[str, int] = {}
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] = counts.get(name, 0) + 1
    return counts


_mark: tuple = ()
routes = [Route("/s/{uid:int}", stream)]
if os.environ.get("BENCH_SCALE_TRACE") == "1":
    routes.append(Route("/debug/memory", memory))
app = Starlette(routes=routes)
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
