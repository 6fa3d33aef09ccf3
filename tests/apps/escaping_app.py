"""The app the log-escaping and drain-endpoint tests run under real servers as a subprocess.

It logs through :func:`ssesup.logs.configure_logging` (console text on stderr; ``SSESUP_LOG_JSON=1``:
JSON), at ``SSESUP_LOG_LEVEL`` (default ``INFO``). Routes: ``/once`` (one event, then the stream
completes), ``/ops/drain/`` (the drain endpoint, token ``SSESUP_TEST_TOKEN``, back-off settings from
``SSESUP_TEST_BACKOFF="free,global_free,first,longest"``), ``/metrics``.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.routing import Mount, Route

from ssesup import Event, SupervisedStream, Supervisor
from ssesup.endpoints import DrainEndpoint
from ssesup.logs import configure_logging
from ssesup.metrics import metrics_app

TOKEN = os.environ.get("SSESUP_TEST_TOKEN", "test-token-0123456789abcdef")
FREE, GLOBAL_FREE, FIRST, LONGEST = os.environ.get("SSESUP_TEST_BACKOFF", "3,30,1,60").split(",")

configure_logging(json=os.environ.get("SSESUP_LOG_JSON") == "1", level=os.environ.get("SSESUP_LOG_LEVEL", "INFO"))
supervisor = Supervisor(ping=0)


async def once(request):
    async def gen():
        yield Event("hello")

    return SupervisedStream(gen())


drain = DrainEndpoint(
    supervisor,
    TOKEN,
    free_failures=int(FREE),
    global_free_failures=int(GLOBAL_FREE),
    backoff=(float(FIRST), float(LONGEST)),
)
app = Starlette(routes=[Route("/once", once), Mount("/ops/drain", drain), Route("/metrics", metrics_app())])
supervisor.install(app)
