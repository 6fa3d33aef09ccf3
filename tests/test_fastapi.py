"""FastAPI as its users expect: what its routes document, what they send, and dependencies with yield.

Everything runs under a real uvicorn and is read with httpx + httpx-sse, a parser we did not write.
What ssesup sends for an object is compared with what FastAPI's own ``fastapi.sse`` sends for the same
object, on the same server: the JSON values must be equal (ssesup writes them compact).
"""

from __future__ import annotations

import datetime
import enum
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Annotated, Any

import anyio
import httpx
import pytest
import structlog
from fastapi import Depends, FastAPI
from fastapi.sse import EventSourceResponse, ServerSentEvent
from httpx_sse import connect_sse
from pydantic import BaseModel, ConfigDict, Field

from apps.core import Recorder
from servers import UvicornThread, raw_request, read_response, recv_until, wait_until
from ssesup import Event, SupervisedStream, Supervisor

UTC = datetime.UTC


class Item(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str
    order_id: int = Field(alias="orderId")
    price: float
    ratio: float
    tags: list[str]
    placed: datetime.datetime


class Kind(enum.Enum):
    PARCEL = "parcel"


@dataclass
class Parcel:
    id: uuid.UUID
    weight: Decimal
    item: Item
    shipped: datetime.date
    eta: datetime.timedelta
    kind: Kind
    path: PurePosixPath
    labels: frozenset[str] = field(default_factory=lambda: frozenset({"fragile"}))


ITEM = Item(
    name="café ☕",
    orderId=7,
    price=2.5,
    ratio=float("nan"),
    tags=["a"],
    placed=datetime.datetime(2024, 5, 1, tzinfo=UTC),
)
PARCEL = Parcel(
    id=uuid.UUID(int=1),
    weight=Decimal("1.25"),
    item=ITEM,
    shipped=datetime.date(2024, 5, 2),
    eta=datetime.timedelta(hours=1),
    kind=Kind.PARCEL,
    path=PurePosixPath("/a/b"),
)

# What a generator yields; every one is JSON data, in fastapi.sse and in ssesup.
VALUES: dict[str, Any] = {
    "model": ITEM,
    "dataclass": PARCEL,
    "dict": {"a": 1, "nested": {"b": [1, 2.5, None, True]}, "ünï": "cödé", "line": "one\ntwo"},
    "list": [1, "two", {"three": 3.0}, (4, 5)],
    "int": 7,
    "float": 2.5,
    "none": None,
    "bool": False,
    "datetime": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
    "non-finite": {"nan": float("nan"), "inf": [float("inf"), -float("inf")], "in a model": ITEM},
    "models in a list": [ITEM, PARCEL],
}

# fastapi.sse's own event model, yielded to both.
FASTAPI_EVENTS = [
    ServerSentEvent(data=ITEM, event="item", id="1"),
    ServerSentEvent(data="quoted", retry=1500),
    ServerSentEvent(raw_data="as is\nin two lines", event="raw", comment="note"),
    ServerSentEvent(data={"x": [1, None]}, id="2"),
]


class Resource:
    """A stand-in for a database session: open until closed, and records both moments."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name, self.open = log, name, True
        log.append(f"{name} opened")

    def close(self) -> None:
        self.open = False
        self.log.append(f"{self.name} closed")


LOG: list[str] = []
"""What the resources and the generators that use them did, in order (the server's thread writes it)."""


async def request_resource() -> AsyncIterator[Resource]:
    resource = Resource(LOG, "request")
    try:
        yield resource
    finally:
        resource.close()


async def function_resource() -> AsyncIterator[Resource]:
    resource = Resource(LOG, "function")
    try:
        yield resource
    finally:
        resource.close()


def make_app(supervisor: Supervisor, log: list[str]) -> FastAPI:
    app = FastAPI()

    def stream(gen: AsyncIterator[Any]) -> SupervisedStream:
        return SupervisedStream(gen, supervisor=supervisor)

    @app.get("/fastapi-sse/{case}", response_class=EventSourceResponse)
    async def fastapi_sse(case: str):  # no item type: FastAPI serialises with jsonable_encoder
        yield VALUES[case]

    @app.get("/ssesup/{case}", response_class=SupervisedStream)
    async def ssesup(case: str) -> SupervisedStream:
        async def gen() -> AsyncIterator[Any]:
            if not isinstance(VALUES[case], dict):
                yield VALUES[case]  # a dict yielded is the fields of an event
            if case != "none":
                yield {"data": VALUES[case]}  # data None is no data

        return stream(gen())

    @app.get("/fastapi-sse-events", response_class=EventSourceResponse)
    async def fastapi_sse_events():
        for event in FASTAPI_EVENTS:
            yield event

    @app.get("/ssesup-events", response_class=SupervisedStream)
    async def ssesup_events() -> SupervisedStream:
        async def gen() -> AsyncIterator[Any]:
            for event in FASTAPI_EVENTS:
                yield event

        return stream(gen())

    @app.get("/named", response_class=SupervisedStream)
    async def named() -> SupervisedStream:
        async def gen() -> AsyncIterator[Any]:
            yield {"data": ITEM, "event": "item", "id": "1"}
            yield {"data": PARCEL, "event": "parcel", "id": "2", "retry": 2500}
            yield {"data": [1, 2], "id": "3"}
            yield {"data": "text stays text", "event": "note", "id": "4"}
            yield "a str stays text"
            yield Event.json({"status": "shipped"}, event="status", id="5")

        return stream(gen())

    @app.get("/unsendable/{case}", response_class=SupervisedStream)
    async def unsendable(case: str) -> SupervisedStream:
        class Opaque:
            secret = "password"

        bad: dict[str, Any] = {
            "object": Opaque(),
            "nested": {"data": {"fine": 1, "not": Opaque()}},
            "unknown-keys": {"message": "hi", "data": "x"},
        }

        async def gen() -> AsyncIterator[Any]:
            yield Event("fine")
            yield bad[case]
            yield Event("never sent")

        return stream(gen())

    async def watch(resource: Resource, forever: bool) -> AsyncIterator[Any]:
        try:
            for i in range(10**9 if forever else 3):
                yield {"data": {"i": i, "open": resource.open}}
                await anyio.sleep(0.02)
        finally:
            log.append(f"{resource.name} generator finally (open={resource.open})")

    @app.get("/dependency", response_class=SupervisedStream)
    async def dependency(
        resource: Annotated[Resource, Depends(request_resource)], forever: bool = False
    ) -> SupervisedStream:
        return stream(watch(resource, forever))

    @app.get("/dependency-function-scope", response_class=SupervisedStream)
    async def dependency_function_scope(
        resource: Annotated[Resource, Depends(function_resource, scope="function")],
    ) -> SupervisedStream:
        return stream(watch(resource, forever=False))

    @app.get("/in-generator", response_class=SupervisedStream)
    async def in_generator(forever: bool = False) -> SupervisedStream:
        async def gen() -> AsyncIterator[Any]:
            resource = Resource(log, "generator")
            try:
                async for item in watch(resource, forever):
                    yield item
            finally:
                resource.close()

        return stream(gen())

    return app


@pytest.fixture(scope="module")
def server():
    supervisor = Supervisor(ping=15, send_timeout=30, metrics=False)
    recorder = Recorder()
    supervisor.subscribe(recorder)
    app = make_app(supervisor, LOG)
    with UvicornThread(app, http="httptools", loop="asyncio") as running:
        running.app, running.recorder, running.log = app, recorder, LOG
        yield running


def sse_events(url: str) -> list[Any]:
    with httpx.Client(timeout=10) as client, connect_sse(client, "GET", url) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return list(source.iter_sse())


# --------------------------------------------------------------------------------------------------
# What is sent
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(VALUES))
def test_objects_are_sent_as_the_json_values_fastapi_sse_sends(server, case: str) -> None:
    (theirs,) = sse_events(f"{server.url}/fastapi-sse/{case}")
    ours = sse_events(f"{server.url}/ssesup/{case}")
    assert ours, "ssesup sent nothing"
    for event in ours:
        assert json.loads(event.data) == json.loads(theirs.data)
        assert event.data == json.dumps(json.loads(event.data), separators=(",", ":"), ensure_ascii=False)


def test_the_json_values_are_those_of_fastapi_not_of_python_repr(server) -> None:
    (model, wrapped) = sse_events(f"{server.url}/ssesup/model")
    assert model.data == wrapped.data
    assert json.loads(model.data) == {
        "name": "café ☕",
        "orderId": 7,  # by alias, as FastAPI's responses
        "price": 2.5,
        "ratio": None,  # NaN is null
        "tags": ["a"],
        "placed": "2024-05-01T00:00:00Z",
    }
    (parcel, _) = sse_events(f"{server.url}/ssesup/dataclass")
    decoded = json.loads(parcel.data)
    decoded.pop("item")
    assert decoded == {
        "id": "00000000-0000-0000-0000-000000000001",
        "weight": 1.25,
        "shipped": "2024-05-02",
        "eta": 3600.0,
        "kind": "parcel",
        "path": "/a/b",
        "labels": ["fragile"],
    }


def test_named_events_with_ids_carry_json_data_and_a_str_stays_text(server) -> None:
    events = sse_events(f"{server.url}/named")
    got = [(e.event, e.id, e.retry) for e in events]
    assert got == [
        ("item", "1", None),
        ("parcel", "2", 2500),
        ("message", "3", None),
        ("note", "4", None),
        ("message", "4", None),
        ("status", "5", None),
    ]
    assert json.loads(events[0].data)["orderId"] == 7
    assert json.loads(events[1].data)["item"]["name"] == "café ☕"
    assert [e.data for e in events[2:]] == ["[1,2]", "text stays text", "a str stays text", '{"status":"shipped"}']


def test_fastapi_server_sent_events_are_sent_as_fastapi_sse_sends_them(server) -> None:
    theirs = sse_events(f"{server.url}/fastapi-sse-events")
    ours = sse_events(f"{server.url}/ssesup-events")

    def seen(event: Any) -> tuple[Any, ...]:
        data = event.data if event.event == "raw" else json.loads(event.data)
        return (event.event, event.id, event.retry, data)

    assert [seen(e) for e in ours] == [seen(e) for e in theirs]
    assert ours[1].data == '"quoted"'  # fastapi.sse's data is always JSON, a str too
    assert ours[2].data == "as is\nin two lines"


@pytest.mark.parametrize("case", ["object", "nested", "unknown-keys"])
def test_what_cannot_be_sent_ends_the_stream_with_error_and_a_log_naming_it(server, case: str) -> None:
    captured = structlog.testing.LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[structlog.processors.format_exc_info, captured])
    try:
        before = len(server.recorder.reasons("/unsendable/{case}"))
        with raw_request(server.port, f"/unsendable/{case}") as sock:
            head, body = read_response(sock)
        wait_until(lambda: len(server.recorder.reasons("/unsendable/{case}")) > before)
    finally:
        structlog.configure(**saved)
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"data: fine\r\n\r\n"  # a clean end of body, and not a word of the error
    assert server.recorder.reasons("/unsendable/{case}")[-1] == "error"
    (failure,) = [entry for entry in captured.entries if entry["event"] == "stream.generator_failed"]
    named = {"object": "yielded Opaque;", "nested": "Opaque is not JSON-able", "unknown-keys": "['message']"}
    assert named[case] in failure["exception"]
    assert "password" not in failure["exception"]


# --------------------------------------------------------------------------------------------------
# What is documented
# --------------------------------------------------------------------------------------------------


def test_response_class_documents_the_200_as_an_event_stream() -> None:
    app = FastAPI()

    @app.get("/events", response_class=SupervisedStream)
    async def events() -> SupervisedStream:
        raise NotImplementedError

    content = app.openapi()["paths"]["/events"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]


def test_a_return_annotation_alone_documents_the_200_as_json() -> None:
    """Why the README uses ``response_class``: FastAPI reads the media type from the response class only."""
    app = FastAPI()

    @app.get("/events")
    async def events() -> SupervisedStream:
        raise NotImplementedError

    content = app.openapi()["paths"]["/events"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["application/json"]


# --------------------------------------------------------------------------------------------------
# Dependencies with yield (fastapi #11143)
# --------------------------------------------------------------------------------------------------


def read_events(server, path: str, count: int | None = None) -> list[dict[str, Any]]:
    """``count`` events of ``path`` (all of them when None); leaves when it has them."""
    got: list[dict[str, Any]] = []
    with httpx.Client(timeout=10) as client, connect_sse(client, "GET", server.url + path) as source:
        for event in source.iter_sse():
            got.append(json.loads(event.data))
            if len(got) == count:
                break
    return got


def ends(log: list[str], name: str) -> list[str]:
    return [line for line in log if line.startswith(name)]


@pytest.mark.parametrize("name, path", [("request", "/dependency"), ("generator", "/in-generator")])
def test_the_resource_is_open_while_events_stream_and_closed_after_the_stream_completes(
    server, name: str, path: str
) -> None:
    server.log.clear()
    events = read_events(server, path)
    assert events == [{"i": i, "open": True} for i in range(3)]
    wait_until(lambda: f"{name} closed" in server.log)
    assert ends(server.log, name) == [f"{name} opened", f"{name} generator finally (open=True)", f"{name} closed"]
    assert server.recorder.reasons(path)[-1] == "completed"


@pytest.mark.parametrize("name, path", [("request", "/dependency"), ("generator", "/in-generator")])
def test_the_resource_is_closed_when_the_client_disconnects(server, name: str, path: str) -> None:
    server.log.clear()
    with raw_request(server.port, f"{path}?forever=true") as sock:
        recv_until(sock, b'"i":3,"open":true')
        assert f"{name} closed" not in server.log
    wait_until(lambda: f"{name} closed" in server.log)
    assert ends(server.log, name) == [f"{name} opened", f"{name} generator finally (open=True)", f"{name} closed"]
    assert server.recorder.reasons(path)[-1] == "client_disconnect"


def test_a_function_scoped_dependency_is_closed_before_the_stream_starts(server) -> None:
    """The pitfall the docs warn of: ``Depends(..., scope="function")`` ends before the response is sent."""
    server.log.clear()
    events = read_events(server, "/dependency-function-scope")
    assert events == [{"i": i, "open": False} for i in range(3)]
    wait_until(lambda: any("generator finally" in line for line in server.log))
    assert server.log == ["function opened", "function closed", "function generator finally (open=False)"]
