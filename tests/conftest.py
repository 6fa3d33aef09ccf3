from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from apps.core import make_app
from redis_support import redis_server, redis_url, redis_workers  # noqa: F401 (fixtures of the hub's Redis tests)
from servers import UvicornThread
from ssesup import Supervisor

# The harness of sse-starlette's own tests: test_compat_upstream.py runs it in a subprocess of its own.
collect_ignore = ["upstream_compat"]


@pytest.fixture(scope="module")
def core_server():
    """The core app under uvicorn (httptools, asyncio), with its own supervisor."""
    supervisor = Supervisor(ping=15, send_timeout=30)
    app, recorder = make_app(supervisor)
    with UvicornThread(app, http="httptools", loop="asyncio") as server:
        server.recorder = recorder
        server.supervisor = supervisor
        yield server


@pytest.fixture(autouse=True, scope="session")
def _quiet_stream_logs():
    """Transition logs at info would flood captured output; tests that read logs set their own level."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.reset_defaults()


@pytest.fixture
def uvicorn_log(caplog):
    """caplog that sees uvicorn's own records, whatever an earlier server's logging config left."""
    import logging

    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error")]
    saved = [(logger, logger.propagate, logger.level) for logger in loggers]
    for logger in loggers:
        logger.propagate = True
        logger.setLevel(logging.INFO)
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    yield caplog
    for logger, propagate, level in saved:
        logger.propagate = propagate
        logger.setLevel(level)
