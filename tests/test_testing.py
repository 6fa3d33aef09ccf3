"""ssesup.testing: the in-process client reads what a browser would, the parser follows the standard (and
agrees with httpx-sse, which we did not write), and the served app answers real sockets."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx_sse
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ssesup import CloseReason, Event, SupervisedStream, Supervisor
from ssesup.states import State
from ssesup.testing import (
    AsyncSSEClient,
    EventStreamParser,
    ServerSentEvent,
    SSEClient,
    StreamIncomplete,
    serve,
)

ROOT = Path(__file__).parent.parent


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


class Closes:
    """The close reasons a supervisor's observer heard, in order."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.reasons: list[CloseReason] = []
        supervisor.subscribe(self.transitioned)

    def transitioned(self, stream: Any, transition: Any) -> None:
        if transition.to_state is State.CLOSED:
            self.reasons.append(transition.close_reason)


def make_app(supervisor: Supervisor) -> tuple[Starlette, dict[str, Any]]:
    """Routes for each behaviour, and what happened inside them (``seen``)."""
    seen: dict[str, Any] = {"finally": [], "release": None}

    async def endless(request: Request) -> SupervisedStream:
        async def gen():
            try:
                yield Event("first", id="1", event="greeting")
                await seen["release"].wait()  # the test reads "first" before the second is made
                n = 2
                while True:
                    yield Event(f"n={n}", id=str(n))
                    n += 1
                    await anyio.sleep(0.005)
            finally:
                seen["finally"].append("endless")

        seen["release"] = anyio.Event()
        return SupervisedStream(gen())

    async def finite(request: Request) -> SupervisedStream:
        async def gen():
            try:
                yield Event("two\nlines\r\nand a CR\rend", event="multi", id="a")
                yield Event("ünïcödé ✓ 🚀", id="b")
                yield "no id: the last one carries over"
                yield {"data": '{"k": 1}', "event": "json", "retry": 2500}
            finally:
                seen["finally"].append("finite")

        return SupervisedStream(gen())

    async def resume(request: Request) -> SupervisedStream:
        after = int(request.headers.get("last-event-id", "0"))

        async def gen():
            for n in range(after + 1, 6):
                yield Event(f"item {n}", id=str(n))

        return SupervisedStream(gen())

    async def lingering(request: Request) -> SupervisedStream:
        async def gen():
            yield Event("hello")
            await anyio.sleep_forever()

        return SupervisedStream(gen())

    routes = [
        Route("/endless", endless),
        Route("/finite", finite),
        Route("/resume", resume),
        Route("/lingering", lingering),
        Route("/json", lambda request: JSONResponse({"ok": True}, status_code=418)),
    ]
    app = Starlette(routes=routes)
    supervisor.install(app)
    return app, seen


@pytest.fixture
def supervisor() -> Supervisor:
    return Supervisor(metrics=False, drain_on_signals=False, reconnect=(2, 3), drain_grace=4)


@pytest.fixture
def app_and_seen(supervisor: Supervisor) -> tuple[Starlette, dict[str, Any]]:
    return make_app(supervisor)


# -- the parser ------------------------------------------------------------------------------------------

# httpx-sse dispatches an empty event at every blank line once an id was set (a ping, say): the ping
# comes first here, and the test of the rules below shows the standard's way.
WIRE = (
    "\ufeff: a comment first\r\n"
    ": ping\n\n"
    "event: tick\r\nid: 1\r\ndata: one\r\n\r\n"
    "data: two\ndata:  lines, one space kept\n\n"
    "id: 7\rretry: 1500\rdata: CR only\r\r"
    "event: unicode\ndata: ünïcödé ✓ 🚀\n\n"
    "data\n\n"
    'data: {"k": [1, 2]}\r\nevent: json\r\n\r\n'
).encode()


def parse_all(chunks: list[bytes]) -> tuple[list[ServerSentEvent], EventStreamParser]:
    parser = EventStreamParser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    events += parser.close()
    return events, parser


def parse_with_httpx_sse(chunks: list[bytes]) -> list[ServerSentEvent]:
    response = httpx.Response(200, headers={"content-type": "text/event-stream; charset=utf-8"}, content=iter(chunks))
    return [
        ServerSentEvent(sse.data, sse.event, sse.id, sse.retry) for sse in httpx_sse.EventSource(response).iter_sse()
    ]


def test_parser_agrees_with_httpx_sse_on_every_split_of_the_body() -> None:
    wire = WIRE.replace(b"\xef\xbb\xbf", b"")  # httpx-sse reads a BOM as part of the first field name
    expected = parse_with_httpx_sse([wire])
    assert [event.data for event in expected] == [
        "one",
        "two\n lines, one space kept",
        "CR only",
        "ünïcödé ✓ 🚀",
        "",
        '{"k": [1, 2]}',
    ]
    for cut in range(1, len(wire)):
        chunks = [wire[:cut], wire[cut:]]
        assert parse_all(chunks)[0] == expected == parse_with_httpx_sse(chunks), cut
    assert parse_all([bytes([byte]) for byte in wire])[0] == expected


def test_parser_keeps_ids_retry_and_comments_as_the_standard_says() -> None:
    events, parser = parse_all([WIRE])
    assert events[0] == ServerSentEvent("one", "tick", "1")
    assert events[1].id == "1"  # the last event id carries over
    assert events[2] == ServerSentEvent("CR only", "message", "7", 1500)
    assert events[3].id == "7"
    assert events[3].retry is None  # retry belongs to the lines of its own event
    assert events[5].json() == {"k": [1, 2]}
    assert parser.comments == ["a comment first", "ping"]
    assert parser.retry == 1500
    assert parser.last_event_id == "7"


@pytest.mark.parametrize(
    ("wire", "data", "retry", "last_event_id"),
    [
        (b"retry: 3000\r\n\r\n", [], 3000, ""),  # a farewell: no data line, no event, but the hint counts
        (b"id: 5\nevent: x\n\n", [], None, "5"),  # no data: not dispatched, the id is still set
        (b"retry: -1\ndata: a\n\nretry: 1e3\ndata: b\n\nretry: \xd9\xa3\ndata: c\n\n", ["a", "b", "c"], None, ""),
        (b"id: 1\ndata: a\n\nid: x\x00y\ndata: b\n\n", ["a", "b"], None, "1"),  # an id with NUL is ignored
        (b"data: a\n\ndata: incomplete at the end", ["a"], None, ""),
        (b"data: \xff\xfe ok\n\n", ["\ufffd\ufffd ok"], None, ""),  # invalid UTF-8 is replaced
        (b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n", [], None, ""),  # only one BOM is skipped
        (b"data:no space\ndata:\ndat\nunknown: x\n\n", ["no space\n"], None, ""),
        (b"id: 1\ndata: a\n\n: ping\n\n", ["a"], None, "1"),  # a ping after an id is no event
        (b"data: a\r\rdata: b\rretry: 9\r", ["a"], 9, ""),  # a CR at the very end ends its line
        (b"data: a\r\r", ["a"], None, ""),
    ],
)
def test_parser_rules_httpx_sse_does_not_follow(
    wire: bytes, data: list[str], retry: int | None, last_event_id: str
) -> None:
    for chunks in ([wire], [bytes([byte]) for byte in wire]):
        events, parser = parse_all(chunks)
        assert [event.data for event in events] == data
        assert parser.retry == retry
        assert parser.last_event_id == last_event_id


def test_a_cr_at_the_end_of_a_chunk_waits_for_a_possible_lf() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == []  # CRLF was one line end; the next CR may be half of another
    assert parser.feed(b"\n") == [ServerSentEvent("a")]


# -- the in-process client -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_endless_stream_is_read_event_by_event_and_ends_with_client_disconnect(
    supervisor: Supervisor, app_and_seen: tuple[Starlette, dict[str, Any]]
) -> None:
    app, seen = app_and_seen
    closes = Closes(supervisor)
    async with AsyncSSEClient(app) as client, client.connect("/endless") as connection:
        first = await connection.next_event()  # only this event exists until the test says so
        assert first == ServerSentEvent("first", "greeting", "1")
        assert connection.response.stream is not None
        assert connection.response.stream.state is State.STREAMING
        seen["release"].set()
        more = await connection.read(count=3)
    assert [event.data for event in more] == ["n=2", "n=3", "n=4"]
    response = connection.response
    assert not response.ended
    assert response.close_reason is CloseReason.CLIENT_DISCONNECT
    assert closes.reasons == [CloseReason.CLIENT_DISCONNECT]
    assert seen["finally"] == ["endless"]  # the generator was closed before the client returned


@pytest.mark.anyio
async def test_stream_stops_at_a_predicate(supervisor: Supervisor, app_and_seen: tuple[Starlette, Any]) -> None:
    app, seen = app_and_seen
    async with AsyncSSEClient(app) as client:
        async with client.connect("/endless") as connection:
            await connection.next_event()
            seen["release"].set()
            read = await connection.read(until=lambda event: event.id == "6")
        assert [event.id for event in read] == ["2", "3", "4", "5", "6"]
        assert connection.response.close_reason is CloseReason.CLIENT_DISCONNECT


def test_a_finite_stream_is_read_to_its_end(app_and_seen: tuple[Starlette, dict[str, Any]]) -> None:
    app, seen = app_and_seen
    response = SSEClient(app).stream("/finite")
    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.events == [
        ServerSentEvent("two\nlines\nand a CR\nend", "multi", "a"),
        ServerSentEvent("ünïcödé ✓ 🚀", "message", "b"),
        ServerSentEvent("no id: the last one carries over", "message", "b"),
        ServerSentEvent('{"k": 1}', "json", "b", 2500),
    ]
    assert response.events[-1].json() == {"k": 1}
    assert response.ended
    assert response.retry == 2500
    assert response.close_reason is CloseReason.COMPLETED
    assert seen["finally"] == ["finite"]


def test_a_timeout_before_the_count_says_what_arrived(supervisor: Supervisor) -> None:
    app, _ = make_app(supervisor)
    closes = Closes(supervisor)
    with pytest.raises(StreamIncomplete) as caught:
        SSEClient(app).stream("/lingering", count=2, timeout=1.5)
    message = str(caught.value)
    assert message.startswith("timed out after 1.5 s; status 200, 1 events read:")
    assert "ServerSentEvent(data='hello'" in message
    assert caught.value.response is not None
    assert caught.value.response.data() == ["hello"]
    assert caught.value.response.close_reason is CloseReason.CLIENT_DISCONNECT
    assert closes.reasons == [CloseReason.CLIENT_DISCONNECT]


def test_a_body_that_ends_before_the_count_is_an_error(app_and_seen: tuple[Starlette, Any]) -> None:
    app, _ = app_and_seen
    with pytest.raises(StreamIncomplete, match=r"the body ended before the stop condition was met.*4 events"):
        SSEClient(app).stream("/finite", count=5)


def test_resume_sends_last_event_id(app_and_seen: tuple[Starlette, Any]) -> None:
    app, _ = app_and_seen
    with SSEClient(app) as client:
        first = client.stream("/resume", count=2)
        assert first.data() == ["item 1", "item 2"]
        rest = client.stream("/resume", last_event_id=first.last_event_id)
    assert rest.data() == ["item 3", "item 4", "item 5"]


def test_the_request_carries_headers_params_and_the_client_address() -> None:
    async def echo(request: Request) -> SupervisedStream:
        async def gen():
            seen = {
                "accept": request.headers["accept"],
                "token": request.headers["x-token"],
                "trace": request.headers["x-trace"],
                "query": sorted(request.query_params.multi_items()),
                "client": [request.client.host, request.client.port],
                "name": request.path_params["name"],
                "raw_path": request.scope["raw_path"].decode(),
                "host": request.url.netloc,
            }
            yield Event.json(seen)

        return SupervisedStream(gen())

    app = Starlette(routes=[Route("/echo/{name}", echo)])
    client = SSEClient(app, base_url="http://example.test:8080", headers={"x-token": "t"}, client=("10.0.0.1", 4242))
    response = client.stream("/echo/caf%C3%A9?a=1", params=[("b", "2"), ("b", "3")], headers=[("X-Trace", "on")])
    assert response.events[0].json() == {
        "accept": "text/event-stream",
        "token": "t",
        "trace": "on",
        "query": [["a", "1"], ["b", "2"], ["b", "3"]],
        "client": ["10.0.0.1", 4242],
        "name": "café",
        "raw_path": "/echo/caf%C3%A9",
        "host": "example.test:8080",
    }


def test_pings_are_kept_as_comments() -> None:
    async def quiet(request: Request) -> SupervisedStream:
        async def gen():
            yield Event("a")
            await anyio.sleep(0.5)
            yield Event("b")

        return SupervisedStream(gen(), ping=0.05)

    response = SSEClient(Starlette(routes=[Route("/", quiet)])).stream("/")
    assert response.data() == ["a", "b"]
    assert response.comments
    assert set(response.comments) == {"ping"}
    assert b"\r\n: ping\r\n" in response.body


def test_other_responses_are_read_whole(app_and_seen: tuple[Starlette, Any]) -> None:
    app, _ = app_and_seen
    with SSEClient(app) as client:
        response = client.stream("/json", count=3)
        missing = client.stream("/nowhere")
    assert (response.status, response.headers["content-type"]) == (418, "application/json")
    assert response.body == b'{"ok":true}'
    assert response.events == []
    assert response.stream is None
    assert response.ended
    assert missing.status == 404


@pytest.mark.anyio
async def test_a_drain_while_reading_gives_the_farewell_and_drained(supervisor: Supervisor) -> None:
    supervisor.farewell = lambda stream: Event("bye", event="last")
    app, _ = make_app(supervisor)
    closes = Closes(supervisor)
    async with AsyncSSEClient(app) as client:
        async with client.connect("/lingering") as connection:
            assert (await connection.next_event()).data == "hello"
            supervisor.begin_drain()
            refused = await client.stream("/lingering")  # a new stream during the drain
            await supervisor.drain()
            rest = await connection.read()
        response = connection.response
    assert (refused.status, refused.headers["retry-after"], refused.text) == (503, "5", "draining: reconnect later\n")
    assert refused.stream is None
    assert rest == [ServerSentEvent("bye", "last")]
    assert response.retry is not None
    assert 2000 <= response.retry <= 3000
    assert response.ended
    assert response.close_reason is CloseReason.DRAINED
    assert closes.reasons == [CloseReason.DRAINED]


def test_sync_client_drains_on_its_loop(supervisor: Supervisor) -> None:
    app, _ = make_app(supervisor)
    with SSEClient(app, backend="trio") as client, client.connect("/lingering") as connection:
        assert connection.next_event().data == "hello"
        summary = client.call(supervisor.drain)
        assert summary["done"]
        assert list(connection) == []
    assert connection.response.close_reason is CloseReason.DRAINED
    assert connection.response.retry is not None


def test_fastapi_app_with_lifespan_state() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield {"greeting": "hello from the lifespan"}

    app = FastAPI(lifespan=lifespan)

    @app.get("/orders/{order_id}/events")
    async def order_events(order_id: int, request: Request) -> SupervisedStream:
        async def gen():
            yield Event.json({"order": order_id, "greeting": request.state.greeting}, event="status")

        return SupervisedStream(gen())

    with SSEClient(app, lifespan=True) as client:
        response = client.stream("/orders/7/events", params={"verbose": "1"})
    assert response.events[0].json() == {"order": 7, "greeting": "hello from the lifespan"}
    assert response.close_reason is CloseReason.COMPLETED
    with pytest.raises(RuntimeError, match="`async with` it first"):
        SSEClient(app, lifespan=True).stream("/orders/7/events")


def test_a_plain_streaming_response_ends_when_the_client_leaves() -> None:
    ended = []

    async def ticks(request: Request) -> StreamingResponse:
        async def body():
            try:
                while True:
                    yield b"data: tick\n\n"
                    await anyio.sleep(0.01)
            finally:
                ended.append(True)

        return StreamingResponse(body(), media_type="text/event-stream")

    response = SSEClient(Starlette(routes=[Route("/", ticks)])).stream("/", count=2)
    assert response.data() == ["tick", "tick"]
    assert response.stream is None
    assert ended == [True]


def test_an_app_that_ignores_the_disconnect_fails_the_test_in_bounded_time() -> None:
    async def stubborn(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
        assert (await receive())["type"] == "http.request"
        assert (await receive())["type"] == "http.disconnect"
        with anyio.CancelScope(shield=True):
            await anyio.sleep(1.5)  # then deaf to the disconnect, and to the client's cancellation

    with pytest.raises(AssertionError, match=r"the app did not end within 0\.2 s of the disconnect"):
        SSEClient(stubborn, close_timeout=0.2).stream("/", count=1)


def test_an_app_that_never_answers_is_reported_as_such() -> None:
    async def silent(request: Request) -> JSONResponse:
        await anyio.sleep_forever()
        raise AssertionError("not reached")

    with pytest.raises(StreamIncomplete, match=r"^no response within 0\.2 s$"):
        SSEClient(Starlette(routes=[Route("/", silent)]), timeout=0.2).stream("/")


def test_a_failing_lifespan_startup_is_raised() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        raise OSError("database unreachable")
        yield

    client = SSEClient(Starlette(lifespan=lifespan), lifespan=True)
    with pytest.raises(RuntimeError, match=r"(?s)lifespan startup failed: .*OSError: database unreachable"), client:
        raise AssertionError("not reached")


def test_app_errors_are_raised() -> None:
    async def broken(request: Request) -> JSONResponse:
        raise LookupError("boom")

    app = Starlette(routes=[Route("/", broken)])
    with pytest.raises(LookupError, match="boom"):
        SSEClient(app).stream("/")
    assert SSEClient(app, raise_app_exceptions=False).stream("/").status == 500


# -- a real server ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sep", ["\r\n", "\n", "\r"])
def test_served_app_gives_httpx_sse_the_events_the_in_process_client_reads(supervisor: Supervisor, sep: str) -> None:
    supervisor.stream_settings = dataclasses.replace(supervisor.stream_settings, sep=sep)
    app, _ = make_app(supervisor)
    in_process = SSEClient(app).stream("/finite")
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
        with httpx_sse.connect_sse(http, "GET", "/finite") as source:
            assert source.response.status_code == 200
            received = [ServerSentEvent(sse.data, sse.event, sse.id, sse.retry) for sse in source.iter_sse()]
    assert received == in_process.events


FIXTURE_TESTS = """
import socket

import httpx
import httpx_sse
from starlette.applications import Starlette
from starlette.routing import Route

from ssesup import Event, SupervisedStream

PORTS = []


async def ticks(request):
    async def gen():
        for n in range(3):
            yield Event(f"tick {n}", id=str(n))

    return SupervisedStream(gen())


app = Starlette(routes=[Route("/ticks", ticks)])


def test_two_servers(sse_server):
    servers = [sse_server(app), sse_server(app, http="h11")]
    for server in servers:
        PORTS.append(server.port)
        with httpx.Client(base_url=server.url) as http, httpx_sse.connect_sse(http, "GET", "/ticks") as source:
            assert [sse.id for sse in source.iter_sse()] == ["0", "1", "2"]
    assert PORTS[0] != PORTS[1]


def test_the_servers_were_stopped():
    for port in PORTS:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            continue
        raise AssertionError(f"port {port} still accepts")
"""


def test_sse_server_fixture_serves_apps_and_stops_them(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["ssesup.testing"]\n')
    (tmp_path / "test_fixture.py").write_text(FIXTURE_TESTS)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout


def test_served_app_drains_while_httpx_reads(supervisor: Supervisor) -> None:
    app, _ = make_app(supervisor)
    closes = Closes(supervisor)
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        with httpx_sse.connect_sse(http, "GET", "/lingering") as source:
            events = source.iter_sse()
            assert next(events).data == "hello"
            server.call(supervisor.drain)
            rest = list(events)
        assert [sse.retry for sse in rest] == [rest[0].retry]  # httpx-sse yields the retry-only farewell
        assert 2000 <= rest[0].retry <= 3000
        assert http.get("/lingering").status_code == 503
    assert closes.reasons == [CloseReason.DRAINED]


def test_serve_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'ssesup\[uvicorn\]'"), serve(Starlette()):
        pass


def test_importing_the_module_loads_neither_pytest_nor_uvicorn() -> None:
    code = "import sys, ssesup.testing; print(sorted({'pytest', 'uvicorn', 'httpx'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


# -- the documentation -----------------------------------------------------------------------------------


def documented_tests() -> list[str]:
    """The blocks of docs/testing.md that hold pytest tests (tests/test_doc_snippets.py runs every block
    as a script; this runs these under pytest too)."""
    text = (ROOT / "docs" / "testing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    return [block for block in blocks if re.search(r"^(async )?def test_", block, flags=re.MULTILINE)]


@pytest.mark.parametrize("block", documented_tests(), ids=lambda block: re.search(r"def (test_\w+)", block)[1])
def test_documented_tests_pass_under_pytest_with_the_plugin_enabled_as_documented(block: str, tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["ssesup.testing"]\n')
    (tmp_path / "test_example.py").write_text(block)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^\d+ passed in", run.stdout, flags=re.MULTILINE), run.stdout
    assert "skipped" not in run.stdout


def test_the_docs_show_the_examples_users_expect() -> None:
    text = (ROOT / "docs" / "testing.md").read_text()
    for heading in ("## Assert the events of an endpoint", "## Test a resume", "## Test a drain"):
        assert heading in text
    assert len(documented_tests()) >= 2
