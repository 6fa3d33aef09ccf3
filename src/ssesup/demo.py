"""The embedded demo app: ``ssesup demo`` serves it; a browser shows its events at ``/``, ``curl -N`` too.

Owns: a small Starlette app with its own supervisor (a short drain and short reconnect hints, so a
restart of the demo is over in seconds), streams that exercise every kind of event, a hub channel
and the task that publishes on it, the browser page (``demo.html``, plain ``EventSource``),
``/metrics``, ``/ready``, ``/live`` and, when it is given a token, the drain endpoint; and
:data:`ENDPOINTS`, the one list of them that ``ssesup demo`` prints. Does not own: anything the
library does (the hub is ``ssesup.hub``), or the command line (``ssesup.cli``).

Every stream numbers its events (``id: 0``, ``1``, ...) and resumes after the ``Last-Event-ID`` a
reconnecting client sends, so a browser that reconnects to a restarted demo goes on where it was.
``/channel`` is the hub's: its ids are the hub's, and its history is this process's memory, or Redis
when ``$SSESUP_HUB_URL`` names one, so that a client drained from one demo resumes on another.
``/answers`` are runs of the hub (``Hub.start_run``): a fake model's answer, token by token, that goes
on whoever watches, and that a page reloaded mid-answer shows whole, once.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator
from importlib.resources import files

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ssesup import Event, Hub, SupervisedStream, Supervisor, metrics_app
from ssesup.hub import HubUnavailable, RunRefused

DRAIN_TOKEN_ENV = "SSESUP_DRAIN_TOKEN"
"""Where ``ssesup demo`` (and ``ssesup drain``) take the drain token from."""

supervisor = Supervisor(drain_grace=5, reconnect=(0.5, 2.0))
"""The demo's supervisor: a drain lasts at most 5 s, and farewells ask clients back within 0.5-2 s."""

HUB_URL_ENV = "SSESUP_HUB_URL"
"""Where the demo takes its hub's URL from (``redis://...``); unset: this process's memory."""

CHANNEL = "numbers"
"""The hub channel the demo publishes on and ``/channel`` streams."""

PUBLISH_EVERY = 0.5
"""Seconds between two numbers the demo publishes on :data:`CHANNEL`."""

LARGE_EVENT_LINES = 4096
"""The large event: this many data lines of 64 characters, 256 KiB."""

FAKE_ANSWER = (
    "Server-Sent Events stream text from a server to a browser over plain HTTP. "
    "With ssesup, a long answer like this one is a run: it goes on when the page reloads, the phone "
    "changes networks or a proxy cuts the connection, and the page that comes back gets what it missed "
    "from the hub's history, once, in order, until the event named end."
)
"""What the demo's fake model answers, whatever it is asked (``/answers``)."""

TOKEN_EVERY = 0.08
"""Seconds between two tokens of the fake model (``/answers?every=`` sets another)."""

MAX_ANSWERS = 100
"""Answers the demo's fake model writes at once (more: 429)."""

_ANSWER_ID = re.compile(r"[0-9a-f]{16}")


def fake_tokens(text: str = FAKE_ANSWER) -> list[str]:
    """The tokens of the fake model's answer: each word with the space before the next one."""
    return re.findall(r"\S+\s*", text)


def _large_data() -> str:
    filler = "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopq"
    return "\n".join(f"line {i:04d} {filler}" for i in range(LARGE_EVENT_LINES))


KINDS: tuple[Event, ...] = (
    Event("plain data: no event name, so the browser's onmessage gets it", id="0"),
    Event("héllo wörld · 你好世界 · Привет · مرحبا · emoji 🎉🚀 · maths ∑ ≠ ∞", event="unicode", id="1"),
    Event("line one\nline two after LF\r\nline three after CRLF\rline four after CR", event="multiline", id="2"),
    Event(" a leading space, a: colon\nevent: not-a-field\nid: 999\n\ndata: not an event", event="tricky", id="3"),
    Event.json({"kind": "json", "nested": {"ok": True, "n": [1, 2, 3]}, "text": "ünïcödé"}, event="json", id="4"),
    Event(_large_data(), event="large", id="5"),
    Event("this event carries retry: 1000, the reconnect delay from now on", event="retry", id="6", retry=1000),
)
"""What ``/kinds`` sends first, in order, with ids ``0`` to ``len(KINDS) - 1``; ticks follow."""

EVENT_NAMES: tuple[str, ...] = (
    "tick",
    "number",
    "gap",
    "token",
    "end",
    *sorted({kind.event for kind in KINDS if kind.event is not None}),
)
"""Every event name the demo sends: the page listens for each (``EventSource`` dispatches named events
only to listeners of that name)."""

ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("/", "the browser page: events as they arrive, connection state, reconnects, last id (?src=PATH)"),
    ("/kinds?every=1", "every kind of event once (unicode, multi-line, 256 KiB, named, JSON, retry:), then ticks"),
    ("/ticks?every=1&count=0&retry=MS", "a tick every `every` s; `count` per connection (0: no end); `retry:` hint"),
    ("/users/{user_id}/ticks", "a tick a second for one user (metrics label it by the route template)"),
    ("/channel", "hub channel `numbers`: a number every 0.5 s; resumes from history ($SSESUP_HUB_URL: Redis)"),
    ("/answers", "POST: a fake model starts an answer, a run of the hub (?every=0.08 s a token); its id"),
    ("/answers/{id}", "the answer's tokens from the first, then `end` (a run: it goes on whoever watches)"),
    ("/answers/{id}/cancel", "POST: cancel the answer (its viewers get `end` with the status cancelled)"),
    ("/metrics", "Prometheus metrics"),
    ("/ready", "readiness: 200, or 503 from the first moment of a drain"),
    ("/live", "liveness: 200 while the process runs"),
    ("/drain", "POST with Authorization: Bearer TOKEN drains the demo (ssesup drain URL --token TOKEN)"),
)
"""Each endpoint of the demo, with one line on what it does (``ssesup demo`` lists them)."""


class BadQuery(ValueError):
    """A query parameter the demo cannot use."""


def _number(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadQuery(f"{name} must be a number") from None
    if not 0 <= value <= 86400:
        raise BadQuery(f"{name} must be between 0 and 86400")
    return value


def _resume_from(request: Request) -> int:
    """The number of the first event to send: one after the client's ``Last-Event-ID``, else 0."""
    last = request.headers.get("last-event-id", "")
    return int(last) + 1 if last.isdecimal() and len(last) < 19 else 0


def _bad_query(error: BadQuery) -> Response:
    return PlainTextResponse(f"{error}\n", status_code=400)


async def page(request: Request) -> Response:
    """``/``: the page that shows a stream (``?src=/ticks``; ``/kinds`` by default)."""
    return HTMLResponse(PAGE, headers={"cache-control": "no-store"})


async def kinds(request: Request) -> Response:
    """``/kinds?every=1``: each of :data:`KINDS`, then a tick every ``every`` seconds."""
    try:
        every = _number(request, "every", 1.0)
    except BadQuery as error:
        return _bad_query(error)

    async def gen() -> AsyncIterator[Event]:
        for i in itertools.count(_resume_from(request)):
            if i < len(KINDS):
                yield KINDS[i]
            else:
                await anyio.sleep(every)
                yield Event.json({"tick": i - len(KINDS)}, id=str(i), event="tick")

    return SupervisedStream(gen())


async def ticks(request: Request) -> Response:
    """``/ticks?every=1&count=10&retry=MS``: one event a tick; count 0 streams until the client leaves."""
    try:
        every = _number(request, "every", 1.0)
        count = int(_number(request, "count", 0))
        retry_ms = int(_number(request, "retry", 0)) if "retry" in request.query_params else None
    except BadQuery as error:
        return _bad_query(error)
    start = _resume_from(request)

    async def gen() -> AsyncIterator[Event]:
        numbers = itertools.count(start) if count <= 0 else range(start, start + count)
        for n, i in enumerate(numbers):
            yield Event.json({"tick": i}, id=str(i), event="tick", retry=retry_ms if n == 0 else None)
            await anyio.sleep(every)

    return SupervisedStream(gen())


async def user_ticks(request: Request) -> Response:
    """``/users/{user_id}/ticks``: ticks for one user (the metrics label it by the route template)."""
    user_id = request.path_params["user_id"]
    start = _resume_from(request)

    async def gen() -> AsyncIterator[Event]:
        for i in itertools.count(start):
            yield Event.json({"user": user_id, "tick": i}, id=str(i), event="tick")
            await anyio.sleep(1)

    return SupervisedStream(gen())


async def _publish_numbers(hub: Hub) -> None:
    """Publish ``{"n": 0, "publisher": PID}``, ``{"n": 1, ...}``, ... on :data:`CHANNEL`, for good."""
    log = logging.getLogger("ssesup.demo")
    for n in itertools.count():
        try:
            await hub.publish(CHANNEL, Event.json({"n": n, "publisher": os.getpid()}, event="number"))
        except HubUnavailable:
            log.warning("the demo's hub is unavailable: number %d was not published", n)
        await anyio.sleep(PUBLISH_EVERY)


def _page() -> str:
    template = files("ssesup").joinpath("demo.html").read_text(encoding="utf-8")
    return template.replace("/*EVENT_NAMES*/[]", json.dumps(list(EVENT_NAMES)))


PAGE = _page()


def build_app(drain_token: str | None = None, hub_url: str | None = None) -> Starlette:
    """The demo app; with ``drain_token`` (16 characters or more) it serves ``POST /drain`` too. Its
    hub is ``Hub(hub_url)``, by default ``$SSESUP_HUB_URL`` (unset: in memory)."""
    hub = Hub(hub_url or os.environ.get(HUB_URL_ENV) or None)

    async def channel(request: Request) -> Response:
        """``/channel``: :data:`CHANNEL` from the hub, resumed after the client's ``Last-Event-ID``."""
        return hub.stream(request, CHANNEL)

    answering: set[str] = set()

    async def ask(request: Request) -> Response:
        """``POST /answers?every=0.08``: start the fake model's answer as a run; its id and stream."""
        try:
            every = _number(request, "every", TOKEN_EVERY)
        except BadQuery as error:
            return _bad_query(error)
        if len(answering) >= MAX_ANSWERS:
            return PlainTextResponse("the fake model is busy: ask again later\n", status_code=429)
        answer_id = secrets.token_hex(8)

        async def model() -> AsyncIterator[Event]:
            answering.add(answer_id)
            try:
                for token in fake_tokens():
                    await anyio.sleep(every)  # thinking
                    yield Event(token, event="token")
            finally:
                answering.discard(answer_id)

        try:
            await hub.start_run(f"answer:{answer_id}", model())
        except RunRefused as refused:
            return PlainTextResponse(f"{refused}\n", status_code=503)
        return JSONResponse({"id": answer_id, "stream": f"/answers/{answer_id}"}, status_code=201)

    async def answer(request: Request) -> Response:
        """``/answers/{id}``: the answer's run, from its first token (or after ``Last-Event-ID``)."""
        answer_id = request.path_params["answer_id"]
        if not _ANSWER_ID.fullmatch(answer_id):
            return PlainTextResponse("no such answer\n", status_code=404)
        return hub.stream(request, f"answer:{answer_id}")

    async def cancel(request: Request) -> Response:
        """``POST /answers/{id}/cancel``: cancel the answer, wherever it runs."""
        answer_id = request.path_params["answer_id"]
        if not _ANSWER_ID.fullmatch(answer_id):
            return PlainTextResponse("no such answer\n", status_code=404)
        return JSONResponse({"cancelled": await hub.cancel_run(f"answer:{answer_id}")})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_publish_numbers, hub)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
        await hub.aclose()

    routes = [
        Route("/", page),
        Route("/kinds", kinds),
        Route("/ticks", ticks),
        Route("/users/{user_id}/ticks", user_ticks),
        Route("/channel", channel),
        Route("/answers", ask, methods=["POST"]),
        Route("/answers/{answer_id}", answer),
        Route("/answers/{answer_id}/cancel", cancel, methods=["POST"]),
        Route("/metrics", metrics_app()),
        Route("/ready", supervisor.readiness()),
        Route("/live", supervisor.liveness()),
    ]
    if drain_token is not None:
        routes.append(Route("/drain", supervisor.drain_endpoint(drain_token)))
    return supervisor.install(Starlette(routes=routes, lifespan=lifespan))


app = build_app()
"""The demo for ``uvicorn ssesup.demo:app``, without the drain endpoint: ``ssesup demo`` serves that,
with the token it prints."""
