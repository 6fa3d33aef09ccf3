"""An in-memory hub inside one process: a stream of a channel drained on its own (``Trigger.DRAIN`` then
``DRAIN_CLOSE``, as the supervisor's drain does for each stream) while numbers are published all along,
and its client's reconnect with ``Last-Event-ID`` to the same process, which goes on serving: every
number once, in order, no gap, the seam filled from history. Real uvicorn on 127.0.0.1, a real client
(``apps.hub_app.Reader``)."""

from __future__ import annotations

import itertools
import threading
import time

import httpx
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apps.hub_app import Reader
from servers import UvicornThread, wait_until
from ssesup import CloseReason, Event, Hub, SupervisedStream, Supervisor, Trigger

DRAINS = 3


def make_app(hub: Hub, supervisor: Supervisor, streams: list[SupervisedStream]) -> Starlette:
    numbers = itertools.count()

    async def events(request: Request) -> SupervisedStream:
        stream = hub.stream(request, "numbers")
        streams.append(stream)
        return stream

    async def publish(request: Request) -> JSONResponse:
        n = -1
        for _ in range(int(request.query_params.get("count", "1"))):
            n = next(numbers)
            await hub.publish("numbers", Event.json({"n": n}, event="number"))
        return JSONResponse({"last": n})

    async def drain_latest(request: Request) -> JSONResponse:
        """Drain the newest stream only, then publish while its client is away."""
        stream = streams[-1]
        stream.trigger(Trigger.DRAIN)
        stream.trigger(Trigger.DRAIN_CLOSE)
        await publish(request)
        return JSONResponse({"drained": len(streams)})

    app = Starlette(
        routes=[
            Route("/events", events),
            Route("/publish", publish, methods=["POST"]),
            Route("/drain-latest", drain_latest, methods=["POST"]),
        ]
    )
    return supervisor.install(app)


def test_a_stream_drained_alone_resumes_on_the_same_process_with_every_number_once_in_order():
    registry = CollectorRegistry()
    hub = Hub(metrics=registry)
    # Pings every 0.2 s: a reader waiting for the next chunk sees that it is done.
    supervisor = Supervisor(ping=0.2, drain_on_signals=False, metrics=False, reconnect=(0.05, 0.1))
    streams: list[SupervisedStream] = []
    with UvicornThread(make_app(hub, supervisor, streams)) as server:
        stop = threading.Event()
        published = threading.Event()  # the publisher is done: last[0] is the last number
        last = [-1]

        def publisher() -> None:
            while not stop.is_set():
                last[0] = httpx.post(f"{server.url}/publish?count=3", timeout=10).json()["last"]
                time.sleep(0.02)

        reader = Reader([server.url], path="/events")

        def done(_events: object) -> bool:
            return published.is_set() and reader.last_number == last[0]

        reading = threading.Thread(target=reader.run, args=(done,))
        publishing = threading.Thread(target=publisher)
        reading.start()
        assert reader.subscribed.wait(10)
        publishing.start()
        try:
            for drain in range(DRAINS):
                seen = len(reader.numbers())
                wait_until(lambda s=seen: len(reader.numbers()) >= s + 10, timeout=20, interval=0.01)
                connects = reader.connects
                assert httpx.post(f"{server.url}/drain-latest?count=5", timeout=10).json() == {"drained": drain + 1}
                wait_until(lambda c=connects, d=drain: reader.connects > c and len(streams) > d + 1, timeout=20)
        finally:
            stop.set()
            publishing.join(20)
            # The last number comes after every drain's five (a drain may publish after the
            # publisher's last round): the reader is done when it has this one.
            last[0] = httpx.post(f"{server.url}/publish?count=3", timeout=10).json()["last"]
            published.set()
        reading.join(30)
    assert reader.error is None, reader.error
    assert not reading.is_alive()

    assert reader.numbers() == list(range(last[0] + 1))  # each once, in order, across every reconnect
    assert reader.gaps == []
    assert [stream.close_reason for stream in streams[:DRAINS]] == [CloseReason.DRAINED] * DRAINS
    assert reader.statuses == [200] * reader.connects and reader.connects == DRAINS + 1
    replayed = registry.get_sample_value("ssesup_hub_replayed_total", {"backend": "memory", "channel": ""})
    assert replayed is not None and replayed >= DRAINS * 5  # what each drain published came from history
