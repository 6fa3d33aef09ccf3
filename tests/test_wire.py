"""Property test over a real socket: what a generator yields is what httpx-sse reads from uvicorn."""

from __future__ import annotations

import itertools
import re
import threading

import httpx
import pytest
from httpx_sse import connect_sse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Route

from servers import UvicornThread
from ssesup import Event, SupervisedStream

_batches: dict[str, list[Event]] = {}
_keys = itertools.count()
_lock = threading.Lock()


async def echo(request):
    with _lock:
        events = _batches.pop(request.query_params["key"])

    async def gen():
        for event in events:
            yield event

    return SupervisedStream(gen(), sep=request.query_params["sep"])


@pytest.fixture(scope="module")
def echo_server():
    with UvicornThread(Starlette(routes=[Route("/echo", echo)])) as server:
        yield server


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
line = text.filter(lambda s: "\r" not in s and "\n" not in s)
event_strategy = st.builds(
    Event,
    data=text,
    event=st.none() | line.filter(bool),
    id=st.none() | line.filter(lambda s: "\0" not in s),
    retry=st.none() | st.integers(min_value=0, max_value=10**9),
    comment=st.none() | text,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(event_strategy, min_size=1, max_size=5), sep=st.sampled_from(["\r\n", "\n", "\r"]))
def test_arbitrary_events_cross_a_real_socket_intact(echo_server, events, sep):
    key = str(next(_keys))
    with _lock:
        _batches[key] = events
    with (
        httpx.Client(timeout=10) as client,
        connect_sse(client, "GET", echo_server.url + "/echo", params={"key": key, "sep": sep}) as source,
    ):
        received = list(source.iter_sse())
    assert len(received) == len(events)
    last_id = ""
    for sent, got in zip(events, received, strict=True):
        last_id = sent.id if sent.id is not None else last_id
        # A client reads every line break in data as LF (WHATWG: lines are joined with U+000A).
        assert got.data == re.sub(r"\r\n|\r", "\n", sent.data)
        assert got.event == (sent.event or "message")
        assert got.id == last_id
        assert got.retry == sent.retry
