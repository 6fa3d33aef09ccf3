"""Streams that know who they serve: the user (given, or the authenticated user of the request) and the
credential's expiry. At ``expires_at`` a stream ends with ``expired``: an ``expired`` event, a
``retry:`` hint and a proper end of body; a hub stream resumed with a fresh credential and
``Last-Event-ID`` loses nothing and repeats nothing (a real uvicorn)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import anyio
import httpx
import pytest
import structlog
import structlog.testing
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import Route

from procs import free_port, serve, uvicorn_argv
from servers import wait_until
from ssesup import CloseReason, Event, SupervisedStream, Supervisor, current_stream
from ssesup.deadlines import next_check
from ssesup.testing import AsyncSSEClient, EventStreamParser, SSEClient


@contextlib.contextmanager
def info_logs():
    """structlog's events of level info and above, captured (the suite's own configuration keeps warnings)."""
    config = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**config)


def app_of(make_stream, *, auth: bool = False, supervisor: Supervisor | None = None):
    supervisor = supervisor or Supervisor(metrics=False, reconnect=(0.1, 0.2))
    seen: list[SupervisedStream] = []

    async def route(request):
        async def gen():
            yield Event("tick", id="1")
            await anyio.sleep_forever()

        stream = make_stream(gen())
        seen.append(stream)
        return stream

    class Backend(AuthenticationBackend):
        async def authenticate(self, conn):
            name = conn.headers.get("x-user")
            return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None

    middleware = [Middleware(AuthenticationMiddleware, backend=Backend())] if auth else []
    app = Starlette(routes=[Route("/e", route)], middleware=middleware)
    supervisor.install(app)
    return app, seen


# -- the deadline -------------------------------------------------------------------------------------


def test_the_expiry_is_one_more_term_of_the_streams_one_deadline():
    assert next_check(100.0, 100.0, 15.0, 30.0, None, 30.0, None) == 115.0
    assert next_check(100.0, 100.0, 15.0, 30.0, None, 30.0, None, expires=103.5) == 103.5
    assert next_check(100.0, 100.0, 15.0, 30.0, None, 30.0, None, expires=900.0) == 115.0
    assert next_check(100.0, 100.0, 0.0, 0.0, None, 0.0, None, expires=101.0) == 101.0
    assert next_check(100.0, 100.0, 0.0, 0.0, None, 0.0, None) == math.inf


# -- in process -----------------------------------------------------------------------------------------


def test_at_its_expiry_a_stream_says_expired_gives_a_retry_hint_and_ends_its_body():
    expires_at = time.time() + 0.6
    app, seen = app_of(lambda gen: SupervisedStream(gen, user="alice", expires_at=expires_at))
    started = time.monotonic()
    response = SSEClient(app).stream("/e")
    took = time.monotonic() - started
    assert response.ended  # a proper end of body, not a cut connection
    assert [event.event for event in response.events] == ["message", "expired"]
    expired = response.events[-1]
    assert json.loads(expired.data) == {"reason": "expired", "expires_at": expires_at}
    assert response.retry is not None and 100 <= response.retry <= 200  # the supervisor's reconnect range
    assert response.last_event_id == "1"  # the farewell carries no id: the client resumes after its last
    assert 0.5 <= took < 1.6
    (stream,) = seen
    assert stream.close_reason is CloseReason.EXPIRED
    assert (stream.user, stream.expires_at) == ("alice", expires_at)


def test_expires_at_may_be_an_aware_datetime_and_a_past_one_ends_the_stream_at_once():
    soon = datetime.now(UTC) + timedelta(seconds=0.3)
    app, seen = app_of(lambda gen: SupervisedStream(gen, expires_at=soon))
    response = SSEClient(app).stream("/e")
    assert response.events[-1].event == "expired" and seen[0].expires_at == soon.timestamp()
    app, seen = app_of(lambda gen: SupervisedStream(gen, expires_at=time.time() - 5))
    started = time.monotonic()
    response = SSEClient(app).stream("/e")
    assert [event.event for event in response.events][-1] == "expired"
    assert time.monotonic() - started < 0.5
    assert seen[0].close_reason is CloseReason.EXPIRED


def test_a_stream_whose_credential_expired_already_never_starts_its_generator():
    """Expired when admitted: the farewell and the end of the body, and nothing asked of the generator
    (for a hub stream: no channel joined, no history read)."""
    pulled: list[str] = []

    async def route(request):
        async def gen():
            pulled.append("first")
            yield Event("never", id="1")

        return SupervisedStream(gen(), expires_at=time.time() - 5)

    response = SSEClient(Starlette(routes=[Route("/e", route)])).stream("/e")
    assert [event.event for event in response.events] == ["expired"] and response.ended
    assert pulled == []


def test_a_stream_without_expiry_or_timers_has_no_timer_entry():
    app, seen = app_of(lambda gen: SupervisedStream(gen, ping=0, send_timeout=0, dead_peer_timeout=0))
    SSEClient(app).stream("/e", count=1)
    assert seen[0]._timer is None


def test_the_user_defaults_to_the_authenticated_user_of_the_request():
    app, seen = app_of(lambda gen: SupervisedStream(gen), auth=True)
    SSEClient(app).stream("/e", count=1, headers={"x-user": "bob"})
    SSEClient(app).stream("/e", count=1)
    assert [stream.user for stream in seen] == ["bob", None]
    app, seen = app_of(lambda gen: SupervisedStream(gen, user="carol"), auth=True)
    SSEClient(app).stream("/e", count=1, headers={"x-user": "bob"})
    assert seen[0].user == "carol"  # given wins


def test_user_and_expires_at_are_checked_where_they_are_given():
    gen = iter(())
    with pytest.raises(TypeError, match="user is a str"):
        SupervisedStream(gen, user=42)
    with pytest.raises(ValueError, match="1 to 256 characters"):
        SupervisedStream(gen, user="")
    with pytest.raises(ValueError, match="1 to 256 characters"):
        SupervisedStream(gen, user="u" * 257)
    with pytest.raises(ValueError, match="aware datetime"):
        SupervisedStream(gen, expires_at=datetime.now())
    with pytest.raises(TypeError, match="UNIX time"):
        SupervisedStream(gen, expires_at="tomorrow")
    with pytest.raises(TypeError, match="UNIX time"):
        SupervisedStream(gen, expires_at=math.nan)


def test_a_wall_clock_set_back_after_admission_delays_the_expiry(monkeypatch):
    """The loop's clock carries the deadline; when it comes, the wall clock decides (set back: later)."""
    expires_at = time.time() + 0.3
    real = time.time
    app, _seen = app_of(lambda gen: SupervisedStream(gen, expires_at=expires_at))

    async def main():
        async with AsyncSSEClient(app) as client, client.connect("/e") as connection:
            await connection.next_event()
            monkeypatch.setattr(time, "time", lambda: real() - 0.5)  # the clock went back half a second
            started = time.monotonic()
            await connection.read()
            return time.monotonic() - started, connection.response

    took, response = anyio.run(main)
    assert response.events[-1].event == "expired"
    assert took >= 0.6


# -- a real server: a hub stream expires and resumes with a fresh credential ------------------------------


class TokenClient:
    """An ``EventSource`` with a credential: on ``expired`` it gets a fresh token and reconnects with its
    ``Last-Event-ID``; ``how`` carries the token in the query string, a header or a cookie."""

    def __init__(self, url: str, user: str, ttl: float, how: str = "header") -> None:
        self.url, self.user, self.ttl, self.how = url, user, ttl, how
        self.events: list = []
        self.farewells: list = []
        self.last_event_id = ""
        self.connects = 0
        self.statuses: list[int] = []
        self.stop = threading.Event()

    def token(self) -> str:
        return httpx.post(f"{self.url}/token", params={"user": self.user, "ttl": self.ttl}).json()["token"]

    def request(self, path: str, token: str) -> dict:
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        params, cookies = {}, {}
        if self.how == "query":
            params["token"] = token
        elif self.how == "header":
            headers["Authorization"] = f"Bearer {token}"
        else:
            cookies["token"] = token
        return {"url": httpx.URL(self.url + path).copy_merge_params(params), "headers": headers, "cookies": cookies}

    def numbers(self) -> list[int]:
        return [json.loads(event.data)["n"] for event in self.events if event.event == "number"]

    def read(self, path: str, until, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not until(self) and not self.stop.is_set():
            assert time.monotonic() < deadline, (self.numbers()[-3:], self.connects, self.statuses)
            self.connects += 1
            parser = EventStreamParser()
            with (
                httpx.Client(timeout=httpx.Timeout(10, read=30)) as client,
                client.stream("GET", **self.request(path, self.token())) as response,
            ):
                self.statuses.append(response.status_code)
                if response.status_code != 200:
                    return
                for chunk in response.iter_raw():
                    for event in parser.feed(chunk):
                        (self.farewells if event.event in ("expired", "revoked") else self.events).append(event)
                    self.last_event_id = parser.last_event_id
                    if until(self) or self.stop.is_set():
                        return


@pytest.fixture
def memory_server(tmp_path):
    port = free_port()
    with serve(uvicorn_argv("apps.identity_app:app", port, "--log-level", "warning"), port, tmp_path) as server:
        yield server


def publish_forever(url: str, stop: threading.Event, every: float = 0.02) -> list[int]:
    published: list[int] = []

    def run() -> None:
        n = 0
        while not stop.is_set():
            httpx.post(f"{url}/publish", params={"channel": "orders", "start": n, "count": 1})
            published.append(n)
            n += 1
            time.sleep(every)

    threading.Thread(target=run, daemon=True).start()
    return published


def test_a_hub_stream_that_expires_resumes_with_a_fresh_credential_and_nothing_lost(memory_server):
    stop = threading.Event()
    client = TokenClient(memory_server.url, "alice", ttl=1.0)
    published = publish_forever(memory_server.url, stop)
    try:
        client.read("/events?channels=orders", until=lambda c: len(c.farewells) >= 3 and len(c.numbers()) > 100)
    finally:
        stop.set()
    numbers = client.numbers()
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # no gap, no duplicate
    assert len(published) >= len(numbers)
    assert all(json.loads(event.data)["reason"] == "expired" for event in client.farewells)
    assert client.connects >= 4 and set(client.statuses) == {200}
    log = memory_server.log()
    assert log.count("close_reason=expired") >= 3 and "user=alice" in log


def test_a_credential_that_expired_is_refused_and_ends_the_event_source(memory_server):
    token = httpx.post(f"{memory_server.url}/token", params={"user": "alice", "ttl": 0.2}).json()["token"]
    time.sleep(0.3)
    response = httpx.get(f"{memory_server.url}/events?channels=orders", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_the_log_names_the_user_escaped():
    app, _ = app_of(lambda gen: SupervisedStream(gen, user="eve\x1b[2J", expires_at=time.time() + 0.2))
    with info_logs() as logs:
        SSEClient(app).stream("/e")
    (closed,) = [line for line in logs if line["event"] == "stream.closed"]
    assert closed["user"] == "eve\\x1b[2J" and closed["close_reason"] == "expired"


# -- the per-user cap ------------------------------------------------------------------------------------


def test_over_the_per_user_cap_a_stream_is_refused_with_429_and_retry_after(tmp_path):
    port = free_port()
    argv = uvicorn_argv("apps.identity_app:app", port, "--log-level", "warning")
    with serve(argv, port, tmp_path, env={"SSESUP_MAX_PER_USER": "2"}) as server:
        url = server.url

        def open_stream(user: str):
            token = httpx.post(f"{url}/token", params={"user": user}).json()["token"]
            client = httpx.Client(timeout=10)
            response = client.send(
                client.build_request("GET", f"{url}/plain", headers={"Authorization": f"Bearer {token}"}), stream=True
            )
            return client, response

        alice = [open_stream("alice") for _ in range(2)]
        assert [response.status_code for _, response in alice] == [200, 200]
        client, refused = open_stream("alice")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
        assert refused.read() == b"too many streams for this user: reconnect later\n"
        client.close()
        bob = open_stream("bob")  # another user is not counted with alice
        assert bob[1].status_code == 200
        alice[0][1].close()
        alice[0][0].close()

        def reopened() -> bool:
            client, response = open_stream("alice")
            alice.append((client, response))
            return response.status_code == 200

        wait_until(reopened, timeout=5)  # her closed stream no longer counts
        assert "reason=max_streams_per_user" in server.log() and "user=alice" in server.log()
        for client, response in [*alice, bob]:
            response.close()
            client.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize(("identity", "expected"), [(42, "42"), ("", None), ("u" * 300, None), ("alice", "alice")])
def test_a_user_inferred_from_the_scope_never_fails_the_request(identity, expected):
    """An app's identity may be a primary key (an int, a UUID), empty or long: the stream gets the user as
    text where it can be one, else none, and the request is answered either way."""

    class Identified(SimpleUser):
        @property
        def identity(self):
            return identity

    users = []

    async def route(request):
        async def gen():
            users.append(current_stream().user)
            yield Event("hello", id="1")

        return SupervisedStream(gen())

    async def app(scope, receive, send):
        if scope["type"] == "http":
            scope["user"] = Identified("someone")
        await Starlette(routes=[Route("/s", route)])(scope, receive, send)

    response = SSEClient(app).stream("/s")
    assert response.status == 200 and response.data() == ["hello"]
    assert users == [expected]
