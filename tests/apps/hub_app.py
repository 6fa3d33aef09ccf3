"""A hub app for the channel tests, and an EventSource-like client that reads it across reconnects.

``make_app(hub, supervisor)`` serves:

* ``GET /events?channels=a,b`` — ``hub.stream(request, "a", "b")`` (``ping`` and ``send_timeout``
  settable by query);
* ``POST /publish?channel=c&start=0&count=1`` — publishes ``{"n": start}``, ... as events named
  ``number``; answers the ids, or 503 with the numbers not published when the engine is down;
* ``GET /ready`` — ``hub.readiness()``.

``app`` is that app over ``Hub(SSESUP_HUB_URL)`` (in memory when unset), for server subprocesses
(``uvicorn apps.hub_app:app``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ssesup import Event, Hub, Supervisor
from ssesup.hub import HubUnavailable
from ssesup.testing import EventStreamParser, ServerSentEvent


def make_app(hub: Hub, supervisor: Supervisor | None = None) -> Starlette:
    async def events(request: Request):
        channels = request.query_params.get("channels", "numbers").split(",")
        query = request.query_params
        options = {name: float(query[name]) for name in ("ping", "send_timeout") if name in query}
        return hub.stream(request, *channels, headers={"x-worker": str(os.getpid())}, **options)

    async def publish(request: Request) -> JSONResponse:
        channel = request.query_params.get("channel", "numbers")
        start = int(request.query_params.get("start", "0"))
        count = int(request.query_params.get("count", "1"))
        ids = []
        for n in range(start, start + count):
            try:
                ids.append(await hub.publish(channel, Event.json({"n": n}, event="number")))
            except HubUnavailable as exc:
                return JSONResponse({"ids": ids, "error": str(exc)}, 503)
        return JSONResponse({"ids": ids})

    app = Starlette(
        routes=[
            Route("/events", events),
            Route("/publish", publish, methods=["POST"]),
            Route("/ready", hub.readiness(supervisor)),
        ]
    )
    if supervisor is not None:
        supervisor.install(app)
    return app


# History for every event a test publishes (10,000), so that a client slowed by a loaded machine resumes
# without a gap whatever its lag; the mailbox is the default. SSESUP_HUB_DEFAULTS=1: the hub's defaults
# and the supervisor's reconnect range (what the sizing of the defaults is tested against).
if os.environ.get("SSESUP_HUB_DEFAULTS"):
    app = make_app(Hub(os.environ.get("SSESUP_HUB_URL") or None), Supervisor(drain_grace=2))
else:
    app = make_app(
        Hub(os.environ.get("SSESUP_HUB_URL") or None, history_size=20_000),
        Supervisor(drain_grace=2, reconnect=(0.05, 0.1)),
    )


# -- the client ----------------------------------------------------------------------------------------


@dataclass
class Reader:
    """Reads ``/events`` like an ``EventSource``: on each end it reconnects with ``Last-Event-ID``
    (to the next of ``urls`` it is given, round robin), until ``done(events)`` or ``timeout``."""

    urls: list[str]
    path: str = "/events?channels=numbers"
    header: bool = True
    events: list[ServerSentEvent] = field(default_factory=list)
    last_event_id: str = ""
    connects: int = 0
    statuses: list[int] = field(default_factory=list)
    worker: str = ""  # the pid of the server process of the current connection
    last_number: int = -1
    error: BaseException | None = None  # what ended run() in a thread, if it failed
    gaps: list[ServerSentEvent] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)  # the first id came
    stop: threading.Event = field(default_factory=threading.Event)

    def numbers(self) -> list[int]:
        return [event.json()["n"] for event in self.events if event.event == "number"]

    def run(self, done: Callable[[list[ServerSentEvent]], bool], timeout: float = 60) -> None:
        try:
            self._run(done, timeout)
        except BaseException as exc:
            self.error = exc
            raise

    def _run(self, done: Callable[[list[ServerSentEvent]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.events) and not self.stop.is_set():
            if time.monotonic() > deadline:
                raise AssertionError(f"not done in {timeout} s: {len(self.events)} events, {self.connects} connects")
            url = self.urls[self.connects % len(self.urls)] + self.path
            self.connects += 1
            try:
                self._read_once(url, done)
            except httpx.HTTPError:
                time.sleep(0.05)

    def _read_once(self, url: str, done: Callable[[list[ServerSentEvent]], bool]) -> None:
        headers, params = {}, {}
        if self.last_event_id:
            if self.header:
                headers["Last-Event-ID"] = self.last_event_id
            else:
                params["last_event_id"] = self.last_event_id
        parser = EventStreamParser()
        target = httpx.URL(url).copy_merge_params(params)
        with httpx.stream("GET", target, headers=headers, timeout=httpx.Timeout(10, read=30)) as response:
            self.statuses.append(response.status_code)
            if response.status_code != 200:
                time.sleep(0.05)
                return
            self.worker = response.headers.get("x-worker", "")
            for chunk in response.iter_raw():
                for event in parser.feed(chunk):
                    if event.event == "gap":
                        self.gaps.append(event)
                    else:
                        self.events.append(event)
                        if event.event == "number":
                            self.last_number = event.json()["n"]
                self.last_event_id = parser.last_event_id
                if self.last_event_id:
                    self.subscribed.set()
                if done(self.events) or self.stop.is_set():
                    return
