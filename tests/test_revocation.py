"""Revocation: ``supervisor.disconnect(user)`` ends every stream of that user in this process (every
event loop), ``hub.disconnect(user)`` in every process of the hub's engine (Redis: every worker) within
a second, hub streams or not, with a ``revoked`` event and a proper end of body; other users' streams
are untouched. After a logout the reconnect is refused (401), which stops an ``EventSource``."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from procs import free_port, serve, uvicorn_argv
from servers import UvicornThread, wait_until
from ssesup import CloseReason, Event, Hub, SupervisedStream, Supervisor
from ssesup.testing import EventStreamParser


@dataclass
class Held:
    """One stream read in a thread until its body ends."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    events: list = field(default_factory=list)
    status: int = 0
    worker: str = ""
    ended_at: float | None = None
    clean_end: bool = False
    started: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def start(self) -> Held:
        threading.Thread(target=self._run, daemon=True).start()
        assert self.started.wait(15), self.error
        return self

    def _run(self) -> None:
        parser = EventStreamParser()
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=httpx.Timeout(10, read=60)) as response:
                self.status = response.status_code
                self.worker = response.headers.get("x-worker", "")
                for chunk in response.iter_raw():
                    self.events.extend(parser.feed(chunk))
                    self.started.set()  # a first event, or a hub stream's first id
                self.clean_end = True  # httpx read the chunked body to its terminator
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.started.set()

    @property
    def names(self) -> list[str]:
        return [event.event for event in self.events]


def token(url: str, user: str, ttl: float = 60) -> str:
    return httpx.post(f"{url}/token", params={"user": user, "ttl": ttl}).json()["token"]


def hold(url: str, path: str, user: str) -> Held:
    return Held(f"{url}{path}", headers={"Authorization": f"Bearer {token(url, user)}"}).start()


# -- in process: every loop of the process -----------------------------------------------------------


def test_supervisor_disconnect_ends_that_users_streams_on_every_event_loop_of_the_process():
    """Two uvicorn servers in two threads (two event loops) of one process, one supervisor."""
    supervisor = Supervisor(metrics=False, ping=0)
    hub = Hub(metrics=False)

    async def events(request):
        user = request.query_params["user"]
        if request.query_params.get("hub"):
            return hub.stream(request, "news", user=user)

        async def gen():
            yield Event("hello")
            await anyio.sleep_forever()

        return SupervisedStream(gen(), user=user)

    app = Starlette(routes=[Route("/e", events)])
    supervisor.install(app)
    with UvicornThread(app) as one, UvicornThread(app) as two:
        held = {
            (server.port, user, kind): Held(f"{server.url}/e?user={user}{kind}").start()
            for server in (one, two)
            for user in ("alice", "bob")
            for kind in ("", "&hub=1")
        }
        wait_until(lambda: sum(len(s) for live in supervisor._with_users for s in live.users.values()) == 8, timeout=10)

        async def disconnect():
            return await supervisor.disconnect("alice")

        started = time.monotonic()
        assert anyio.run(disconnect) == 4
        alice = [h for (_, user, _), h in held.items() if user == "alice"]
        wait_until(lambda: all(h.ended_at for h in alice), timeout=5)
        assert max(h.ended_at for h in alice) - started < 1.0
        for h in alice:
            assert h.clean_end and h.names[-1] == "revoked", h
            assert json.loads(h.events[-1].data) == {"reason": "revoked"}
            assert h.events[-1].retry is None  # revoked carries no reconnect hint
        time.sleep(0.3)
        assert not any(h.ended_at for (_, user, _), h in held.items() if user == "bob")
        assert anyio.run(disconnect) == 0  # nothing of alice's is left


def test_a_revoked_stream_closes_with_reason_revoked_and_its_user_index_is_emptied():
    supervisor = Supervisor(metrics=False, ping=0)
    closed: list[tuple[str | None, CloseReason | None]] = []
    supervisor.subscribe(lambda stream, t: closed.append((stream.user, t.close_reason)) if t.close_reason else None)

    async def events(request):
        async def gen():
            yield Event("hello")
            await anyio.sleep_forever()

        return SupervisedStream(gen(), user=request.query_params["user"])

    app = Starlette(routes=[Route("/e", events)])
    supervisor.install(app)
    with UvicornThread(app) as server:
        alice, bob = Held(f"{server.url}/e?user=alice").start(), Held(f"{server.url}/e?user=bob").start()
        wait_until(lambda: len(supervisor._with_users) == 1, timeout=5)
        (live,) = supervisor._with_users
        assert set(live.users) == {"alice", "bob"}

        async def disconnect():
            return await supervisor.disconnect("alice")

        assert anyio.run(disconnect) == 1
        wait_until(lambda: alice.ended_at is not None, timeout=5)
        wait_until(lambda: set(live.users) == {"bob"}, timeout=5)
        assert closed == [("alice", CloseReason.REVOKED)] and bob.ended_at is None
        assert anyio.run(supervisor.disconnect, "bob") == 1
        wait_until(lambda: not supervisor._with_users, timeout=5)  # a loop with no user's stream is not kept


# -- a real server: memory, one process ------------------------------------------------------------------


@pytest.fixture
def memory_server(tmp_path):
    port = free_port()
    with serve(uvicorn_argv("apps.identity_app:app", port, "--log-level", "warning"), port, tmp_path) as server:
        yield server


def test_hub_disconnect_on_memory_ends_the_users_streams_and_a_logout_refuses_the_reconnect(memory_server):
    url = memory_server.url
    alice = [hold(url, "/events?channels=orders", "alice"), hold(url, "/plain", "alice")]
    bob = [hold(url, "/events?channels=orders", "bob"), hold(url, "/plain", "bob")]
    started = time.monotonic()
    answer = httpx.post(f"{url}/disconnect", params={"user": "alice", "logout": 1}).json()
    assert answer["closed"] == 2
    wait_until(lambda: all(h.ended_at for h in alice), timeout=5)
    assert max(h.ended_at for h in alice) - started < 1.0
    assert all(h.clean_end and h.names[-1] == "revoked" for h in alice)
    assert not any(h.ended_at for h in bob)
    # The reconnect: the route refuses the logged-out user's credential, which stops an EventSource.
    again = httpx.get(f"{url}/plain", headers=alice[1].headers, timeout=5)
    assert again.status_code == 401
    assert "close_reason=revoked" in memory_server.log() and "user=alice" in memory_server.log()


# -- a real server: Redis, two workers -------------------------------------------------------------------


def on_both_workers(url: str, path: str, user: str, each: int = 2) -> list[Held]:
    """Streams of ``user`` until ``each`` are held on each of the two workers (extra ones are closed)."""
    held: dict[str, list[Held]] = {}
    deadline = time.monotonic() + 30
    while len(held) < 2 or any(len(streams) < each for streams in held.values()):
        assert time.monotonic() < deadline, {worker: len(streams) for worker, streams in held.items()}
        stream = hold(url, path, user)
        held.setdefault(stream.worker, []).append(stream)
    return [stream for streams in held.values() for stream in streams]


def test_hub_disconnect_on_redis_ends_the_users_streams_on_both_workers_within_a_second(redis_workers):
    url = redis_workers.url
    alice = on_both_workers(url, "/events?channels=orders", "alice") + on_both_workers(url, "/plain", "alice")
    bob = on_both_workers(url, "/events?channels=orders", "bob") + on_both_workers(url, "/plain", "bob")
    assert len({h.worker for h in alice}) == 2
    time.sleep(0.5)  # every worker's follower of the control channel has joined (it starts with the first stream)
    started = time.monotonic()
    answer = httpx.post(f"{url}/disconnect", params={"user": "alice"}).json()
    wait_until(lambda: all(h.ended_at for h in alice), timeout=5)
    latency = max(h.ended_at for h in alice) - started
    here = [h for h in alice if h.worker == str(answer["pid"])]
    assert answer["closed"] == len(here)  # the worker that was asked counts its own
    assert latency < 1.0, latency
    assert all(h.clean_end and h.names[-1] == "revoked" for h in alice)
    time.sleep(0.3)
    assert not any(h.ended_at for h in bob)
    print(f"revocation across 2 workers: the last of {len(alice)} streams ended {latency * 1000:.0f} ms after the call")
