"""The harness of sse-starlette's published tests, which its sdist ships without their ``conftest.py``.

tests/test_compat_upstream.py copies this file, with ``anyio_compat.py``, beside the tests it downloads,
and names the library under test in ``SSE_UNDER_TEST``: ``ssesup.compat`` (through the alias package,
first on ``sys.path``) or ``sse_starlette`` (the installed release, to show the harness passes it).

What the tests expect of their harness: async tests without a marker run on asyncio (the project runs
them under pytest-asyncio's auto mode; here anyio's plugin runs them), ``AppStatus`` starts every test
reset, and nothing a test leaves behind reaches the next.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
import sse_starlette
import sse_starlette.sse

import ssesup

UNDER_TEST = os.environ["SSE_UNDER_TEST"]

# The ssesup of the test that started this run, not another install of it.
assert Path(ssesup.__file__).resolve() == Path(os.environ["SSE_SSESUP"]), ssesup.__file__
_origin = Path(sse_starlette.__file__).resolve()
if UNDER_TEST == "ssesup.compat":
    import ssesup.compat.sse

    # The installed sse_starlette must not be what the tests import.
    assert _origin.parent.parent == Path(os.environ["SSE_ALIAS"]).resolve(), _origin
    assert sse_starlette.sse is ssesup.compat.sse
    assert sse_starlette.EventSourceResponse is ssesup.compat.sse.EventSourceResponse
else:
    assert UNDER_TEST == "sse_starlette", UNDER_TEST
    assert "site-packages" in _origin.parts, _origin
    assert not hasattr(sse_starlette.sse, "SupervisedStream")
_ORIGINAL_HANDLER = sse_starlette.sse.AppStatus.original_handler
# What was imported, for the runner to check (pytest captures what a conftest prints).
Path(os.environ["SSE_SEEN"]).write_text(f"{UNDER_TEST} {_origin}")


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """An async test without a marker is an anyio test (pytest-asyncio's auto mode, upstream)."""
    marks = getattr(obj, "pytestmark", [])
    if (
        collector.istestfunction(obj, name)
        and inspect.iscoroutinefunction(obj)
        and not any(mark.name == "anyio" for mark in marks)
    ):
        pytest.mark.anyio(obj)
    return (yield)


@pytest.fixture
def anyio_backend():
    """asyncio only, as the tests were written for."""
    return "asyncio"


def _reset_app_status() -> None:
    status = sse_starlette.sse.AppStatus
    status.should_exit = False
    status.enable_automatic_graceful_drain = True
    status.original_handler = _ORIGINAL_HANDLER
    thread_state = getattr(sse_starlette.sse, "_thread_state", None)  # the release's watcher per thread
    if thread_state is not None and hasattr(thread_state, "shutdown_state"):
        del thread_state.shutdown_state


@pytest.fixture(autouse=True)
def _app_status_reset():
    """Every test starts with ``AppStatus`` as after import, and leaves it so."""
    _reset_app_status()
    yield
    _reset_app_status()
