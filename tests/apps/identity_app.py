"""An app whose streams answer to the credential that opened them, for the identity tests.

Credentials are stateless signed tokens (``base64(json).signature``, the same in every worker), carried
the three ways a browser or a client can: the ``token`` query parameter, ``Authorization: Bearer``, or
the ``token`` cookie. Starlette's ``AuthenticationMiddleware`` turns a valid one into ``request.user``
(its ``identity`` is the stream's user, with no argument); an invalid or expired one is a 401, which
stops an ``EventSource`` for good.

``make_app(hub, supervisor)`` serves:

* ``POST /token?user=alice&ttl=2`` — a token for ``alice`` that expires in ``ttl`` seconds (the app's
  "log in"; a real app authenticates this request);
* ``GET /events?channels=a,b`` — ``hub.stream(request, "a", "b", expires_at=...)`` (401 without a valid
  credential, or for a user logged out here);
* ``GET /plain`` — a stream of the app's own ticks (not the hub's), for the same user; ``GET /count?n=3``
  — three ticks, then the end; ``GET /flood`` — large events as fast as the client reads them (one that
  stops reading is closed by a send deadline of 0.5 s);
* ``GET /fail`` — a generator that fails, with the request's credentials in its local variables;
* ``POST /publish?channel=c&start=0&count=1`` — publishes ``{"n": start}``, ... named ``number``;
* ``POST /disconnect?user=alice`` — ``hub.disconnect(user)`` (every process), ``&local=1``:
  ``supervisor.disconnect(user)`` (this process), ``&logout=1`` also refuses the user's credentials here
  from now on;
* ``GET /presence?channel=c`` — ``hub.presence(channel)``;
* ``GET /metrics``, ``POST /drain`` (the drain endpoint, token :data:`DRAIN_TOKEN`), and ``GET /page``
  (the browser test's page, ``identity_page.html``).

``SSESUP_LOG=console|json`` calls ``configure_logging`` (else structlog stays unconfigured); uvicorn's
access log gets :class:`~ssesup.logs.RedactQueryStrings`, as docs/deploying.md advises.

``app`` is that app over ``Hub(SSESUP_HUB_URL)`` (in memory when unset), for uvicorn subprocesses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ssesup import Event, Hub, StreamLimits, SupervisedStream, Supervisor
from ssesup.logs import RedactQueryStrings, configure_logging
from ssesup.metrics import metrics_app

SECRET = b"identity-test-secret"
DRAIN_TOKEN = "identity-drain-token-0123456789abcdef"

if os.environ.get("SSESUP_LOG"):
    configure_logging(json=os.environ["SSESUP_LOG"] == "json")
logging.getLogger("uvicorn.access").addFilter(RedactQueryStrings())
PAGE = Path(__file__).with_name("identity_page.html")


def issue(user: str, ttl: float) -> tuple[str, float]:
    expires_at = time.time() + ttl
    body = base64.urlsafe_b64encode(json.dumps({"u": user, "x": expires_at}).encode()).decode().rstrip("=")
    signature = hmac.new(SECRET, body.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{body}.{signature}", expires_at


class TokenUser(SimpleUser):
    def __init__(self, username: str, expires_at: float) -> None:
        super().__init__(username)
        self.expires_at = expires_at


def verify(token: str) -> TokenUser:
    body, _, signature = token.partition(".")
    expected = hmac.new(SECRET, body.encode(), hashlib.sha256).hexdigest()[:32]
    if not hmac.compare_digest(signature, expected):
        raise AuthenticationError("bad token")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    if claims["x"] <= time.time():
        raise AuthenticationError("expired token")
    return TokenUser(claims["u"], claims["x"])


class TokenBackend(AuthenticationBackend):
    """The token from the query string, the Authorization header or the cookie, in that order."""

    def __init__(self, logged_out: set[str]) -> None:
        self.logged_out = logged_out

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, TokenUser] | None:
        if conn.url.path == "/drain":  # the drain endpoint's bearer token is its own
            return None
        token = conn.query_params.get("token")
        if token is None and conn.headers.get("authorization", "").startswith("Bearer "):
            token = conn.headers["authorization"][len("Bearer ") :]
        if token is None:
            token = conn.cookies.get("token")
        if token is None:
            return None
        user = verify(token)
        if user.identity in self.logged_out:
            raise AuthenticationError("logged out")
        return AuthCredentials(["authenticated"]), user


def unauthorized(conn: HTTPConnection, exc: Exception) -> Response:
    return PlainTextResponse("unauthorized\n", 401)


def make_app(hub: Hub, supervisor: Supervisor) -> Starlette:
    logged_out: set[str] = set()

    async def token(request: Request) -> JSONResponse:
        value, expires_at = issue(request.query_params["user"], float(request.query_params.get("ttl", "60")))
        return JSONResponse({"token": value, "expires_at": expires_at})

    def refused(request: Request) -> Response | None:
        if not request.user.is_authenticated:
            return PlainTextResponse("unauthorized\n", 401)
        return None

    async def events(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        channels = request.query_params.get("channels", "numbers").split(",")
        headers = {"x-worker": str(os.getpid())}
        return hub.stream(request, *channels, expires_at=request.user.expires_at, headers=headers)

    async def plain(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal

        async def ticks():
            n = 0
            while True:
                yield Event(str(n), event="tick")
                n += 1
                await anyio.sleep(0.2)

        return SupervisedStream(ticks(), expires_at=request.user.expires_at, headers={"x-worker": str(os.getpid())})

    async def count(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal

        async def ticks():
            for n in range(int(request.query_params.get("n", "3"))):
                yield Event(str(n), event="tick")

        return SupervisedStream(ticks())

    async def flood(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal

        async def large():
            while True:
                yield Event("f" * 65536)
                await anyio.sleep(0)

        return SupervisedStream(large(), send_timeout=0.5, ping=0)

    async def fail(request: Request) -> Response:
        async def failing():
            # What a failing generator holds in its frame: the credentials of the request.
            query_token = request.query_params.get("token")
            bearer = request.headers.get("authorization")
            cookie = request.cookies.get("token")
            yield Event("about to fail")
            await anyio.sleep(0.05)
            raise RuntimeError(f"the generator failed ({len(str(query_token) + str(bearer) + str(cookie))})")

        return SupervisedStream(failing())

    async def publish(request: Request) -> JSONResponse:
        channel = request.query_params.get("channel", "numbers")
        start = int(request.query_params.get("start", "0"))
        count = int(request.query_params.get("count", "1"))
        ids = [await hub.publish(channel, Event.json({"n": n}, event="number")) for n in range(start, start + count)]
        return JSONResponse({"ids": ids})

    async def disconnect(request: Request) -> JSONResponse:
        user = request.query_params["user"]
        if request.query_params.get("logout"):
            logged_out.add(user)
        if request.query_params.get("local"):
            closed = await supervisor.disconnect(user)
        else:
            closed = await hub.disconnect(user)
        return JSONResponse({"closed": closed, "pid": os.getpid()})

    async def login(request: Request) -> JSONResponse:
        logged_out.discard(request.query_params["user"])
        return JSONResponse({"ok": True})

    async def presence(request: Request) -> JSONResponse:
        return JSONResponse(await hub.presence(request.query_params["channel"]))

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    app = Starlette(
        routes=[
            Route("/token", token, methods=["POST"]),
            Route("/events", events),
            Route("/plain", plain),
            Route("/count", count),
            Route("/fail", fail),
            Route("/flood", flood),
            Route("/drain", supervisor.drain_endpoint(DRAIN_TOKEN), methods=["POST"]),
            Route("/publish", publish, methods=["POST"]),
            Route("/disconnect", disconnect, methods=["POST"]),
            Route("/login", login, methods=["POST"]),
            Route("/presence", presence),
            Route("/page", page),
            Route("/metrics", metrics_app()),
        ],
        middleware=[Middleware(AuthenticationMiddleware, backend=TokenBackend(logged_out), on_error=unauthorized)],
    )
    supervisor.install(app)
    return app


def _limits() -> Any:
    per_user = os.environ.get("SSESUP_MAX_PER_USER")
    return StreamLimits(max_streams_per_user=int(per_user), retry_after=3) if per_user else None


app = make_app(
    Hub(os.environ.get("SSESUP_HUB_URL") or None, history_size=20_000),
    Supervisor(reconnect=(0.2, 0.4), limits=_limits(), ping=1, drain_grace=2),
)
