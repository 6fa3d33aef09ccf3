"""Runs (``Hub.start_run``) under real uvicorn, in memory and on Redis: a viewer that leaves mid-run and
comes back with ``Last-Event-ID`` gets every token once, then ``end``, then a proper end of body; a
viewer that comes after the end gets the whole run; a run nobody watches completes; a failing source
ends ``failed`` with no error text on the wire; a cancel ends a run within a second, its ``finally``
run."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
import redis

from apps.runs_app import SECRET, make_app
from servers import UvicornThread, wait_until
from ssesup import CloseReason, Event, Hub, Supervisor
from ssesup.hub import RunActive, RunStatus
from ssesup.testing import EventStreamParser, ServerSentEvent

TOKENS = 300


@dataclass
class Watched:
    """What a viewer read: its events with the time each arrived, whether the body ended properly (the
    chunked body's last chunk: httpx raises on a connection closed before it), and its last id."""

    events: list[tuple[ServerSentEvent, float]] = field(default_factory=list)
    completed: bool = False
    last_event_id: str = ""

    def tokens(self) -> list[str]:
        return [event.data for event, _ in self.events if event.event == "token"]

    def ends(self) -> list[dict]:
        return [json.loads(event.data) for event, _ in self.events if event.event == "end"]


def watch(url: str, last_event_id: str = "", tokens: int | None = None, timeout: float = 30) -> Watched:
    """Read a run's stream like an EventSource that closes on ``end`` (or leaves after ``tokens``)."""
    watched = Watched()
    parser = EventStreamParser()
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(10, read=timeout)) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_raw():
            for event in parser.feed(chunk):
                watched.events.append((event, time.monotonic()))
            watched.last_event_id = parser.last_event_id
            if tokens is not None and len(watched.tokens()) >= tokens:
                return watched
    watched.completed = True
    return watched


@pytest.fixture(params=["memory", "redis"])
def hub_url(request):
    return None if request.param == "memory" else request.getfixturevalue("redis_url")


@pytest.fixture
def server(hub_url):
    hub = Hub(hub_url, metrics=False)
    supervisor = Supervisor(ping=0.5, drain_on_signals=False, metrics=False)
    closes: list[CloseReason] = []  # the close reason of each viewer's stream

    def closed(stream, transition) -> None:
        if transition.close_reason is not None:
            closes.append(transition.close_reason)

    supervisor.subscribe(closed)
    # lifespan on: the app's shutdown closes the hub's connections on the server's loop.
    with UvicornThread(make_app(hub, supervisor), lifespan="on") as running:
        running.hub = hub
        running.closes = closes
        yield running


def start(server, name: str, **query: object) -> dict:
    response = httpx.post(f"{server.url}/runs/{name}", params=query, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def status(server, name: str) -> dict:
    return httpx.get(f"{server.url}/runs/{name}/status", timeout=10).json()


def test_a_viewer_that_leaves_mid_run_and_comes_back_gets_every_token_once_then_end(server):
    start(server, "answer", tokens=TOKENS, every=0.005)
    first = watch(f"{server.url}/runs/answer", tokens=100)
    assert first.tokens()[:100] == [str(i) for i in range(100)] and not first.completed
    time.sleep(0.2)  # the run goes on without its only viewer
    assert status(server, "answer")["status"] == "active"
    rest = watch(f"{server.url}/runs/answer", first.last_event_id)
    assert first.tokens() + rest.tokens() == [str(i) for i in range(TOKENS)]
    assert rest.ends() == [{"status": "completed"}]
    assert rest.events[-1][0].event == "end"
    assert rest.completed  # after end, the body ended properly
    wait_until(lambda: len(server.closes) == 2)
    # The viewer that left, then the one that read the end: its stream completed.
    assert server.closes == [CloseReason.CLIENT_DISCONNECT, CloseReason.COMPLETED]


def test_a_viewer_that_comes_after_the_end_gets_the_whole_run_and_one_that_comes_back_gets_the_end(server):
    start(server, "report", tokens=50, every=0)
    wait_until(lambda: status(server, "report")["status"] == "completed", timeout=10)
    late = watch(f"{server.url}/runs/report")
    assert late.tokens() == [str(i) for i in range(50)]
    assert late.ends() == [{"status": "completed"}] and late.completed
    # A page that did not close its EventSource on end reconnects after it: the end again, nothing more.
    again = watch(f"{server.url}/runs/report", late.last_event_id)
    assert again.tokens() == [] and again.ends() == [{"status": "completed"}] and again.completed


def test_a_run_nobody_watches_completes(server):
    start(server, "unwatched", tokens=100, every=0.02)
    time.sleep(1.0)
    assert status(server, "unwatched")["status"] == "active"
    wait_until(lambda: status(server, "unwatched")["status"] == "completed", timeout=10)
    whole = watch(f"{server.url}/runs/unwatched")
    assert whole.tokens() == [str(i) for i in range(100)] and whole.completed


def test_a_failing_source_ends_failed_with_no_error_text_on_the_wire(server):
    start(server, "broken", tokens=100, every=0.001, fail_at=40)
    watched = watch(f"{server.url}/runs/broken")
    assert watched.tokens() == [str(i) for i in range(40)]
    assert watched.ends() == [{"status": "failed"}] and watched.completed
    wire = " ".join(event.data for event, _ in watched.events)
    assert SECRET not in wire and "RuntimeError" not in wire and "Traceback" not in wire
    assert status(server, "broken") == {"status": "failed", "cleaned": True}


def test_a_second_start_on_an_active_run_is_refused_and_a_cancel_ends_it_within_a_second(server):
    start(server, "job", tokens=100_000, every=0.01, cleanup=0.2)
    assert httpx.post(f"{server.url}/runs/job", timeout=10).status_code == 409
    seen = watch(f"{server.url}/runs/job", tokens=5)
    cancelled_at = time.monotonic()
    assert httpx.post(f"{server.url}/runs/job/cancel", timeout=10).json() == {"cancelled": True}
    rest = watch(f"{server.url}/runs/job", seen.last_event_id)
    assert rest.ends() == [{"status": "cancelled"}] and rest.completed
    assert rest.events[-1][1] - cancelled_at < 1.0
    assert status(server, "job") == {"status": "cancelled", "cleaned": True}  # its finally ran (0.2 s)
    assert httpx.post(f"{server.url}/runs/job/cancel", timeout=10).json() == {"cancelled": False}
    start(server, "job", tokens=1)  # ended: the channel takes a new run


def test_viewers_never_cancel_a_run(server):
    start(server, "shared", tokens=60, every=0.02)
    for _ in range(3):  # viewers come and go, all of them leave at times
        watch(f"{server.url}/runs/shared", tokens=3)
    wait_until(lambda: status(server, "shared")["status"] == "completed", timeout=10)
    assert watch(f"{server.url}/runs/shared").tokens() == [str(i) for i in range(60)]


# -- the hub's run API in one process ------------------------------------------------------------------


def test_a_source_yields_what_a_stream_generator_may_and_ids_are_the_hubs():
    async def main() -> None:
        hub = Hub(metrics=False)

        async def source():
            yield "plain"
            yield Event("named", event="step", id="7")  # its own id: left out
            yield {"data": {"progress": 0.5}, "event": "progress", "id": "x"}
            yield b"event: raw\r\ndata: from bytes\r\n\r\n"
            yield {"data": "last"}

        run = await hub.start_run("kinds", source())
        assert await run.wait() is RunStatus.COMPLETED and run.events == 5
        async with hub.subscribe("kinds") as viewer:
            got = [(event.event, event.data, event.id) async for event in viewer]
        assert [(name, data) for name, data, _ in got[1:]] == [
            (None, "plain"),
            ("step", "named"),
            ("progress", '{"progress":0.5}'),
            ("raw", "from bytes"),
            (None, "last"),
            ("end", '{"status":"completed"}'),
        ]
        ids = [event_id for _, _, event_id in got]
        assert len(set(ids)) == len(ids) and "7" not in ids and "x" not in ids
        with pytest.raises(TypeError):
            await hub.start_run("kinds", ["not", "async"])  # type: ignore[arg-type]

    anyio.run(main)


def test_starting_on_an_active_run_raises_and_closes_the_source():
    async def main() -> None:
        hub = Hub(metrics=False)
        closed = []

        async def forever():
            while True:
                yield "x"
                await anyio.sleep(0.01)

        async def second():
            try:
                yield "never"
            finally:
                closed.append(True)

        run = await hub.start_run("busy", forever())
        refused = second()
        await anext(refused)  # started, so that its finally has something to run
        with pytest.raises(RunActive):
            await hub.start_run("busy", refused)
        assert closed == [True]
        run.cancel()
        assert await run.wait() is RunStatus.CANCELLED

    anyio.run(main)


def test_on_redis_a_runs_record_lives_while_its_process_renews_it_and_lapses_when_it_stops(redis_url):
    """An active run's record expires unless its process renews it (RUN_LEASE, 15 s; here 0.6 s): a
    process that died without a drain leaves no active run behind for longer. The run's end is then not
    written over another run's channel."""
    from structlog.testing import capture_logs

    client = redis.Redis.from_url(redis_url)

    async def forever():
        while True:
            yield "x"
            await anyio.sleep(0.05)

    async def main() -> None:
        hub = Hub(redis_url, metrics=False)
        hub.backend.run_lease = 0.6
        first = await hub.start_run("leased", forever())
        await anyio.sleep(1.5)  # 2.5 leases: renewed every 0.2 s
        assert await hub.run_status("leased") == "active"
        assert 0 < client.pttl("ssesup:run:leased") <= 600
        with capture_logs() as logs:
            client.delete("ssesup:run:leased")  # lost (a Redis that lost the key, or a renewal too late)
            await anyio.sleep(0.5)
        assert [entry["channel"] for entry in logs if entry["event"] == "run.lease_lost"] == ["leased"]
        other = Hub(redis_url, metrics=False)
        second = await other.start_run("leased", forever())  # the channel is free
        with capture_logs() as logs:
            first.cancel()
            assert await first.wait() is RunStatus.CANCELLED
        assert [entry["status"] for entry in logs if entry["event"] == "run.end_lost"] == ["cancelled"]
        assert await hub.run_status("leased") == "active"  # the second's, untouched by the first's end
        second.cancel()
        assert await second.wait() is RunStatus.CANCELLED
        assert await hub.run_status("leased") == "cancelled"
        await other.aclose()  # (their connections closed on their loop, not at exit)
        await hub.aclose()

    anyio.run(main)
    client.close()


def test_viewers_of_a_channel_followed_before_its_run_started_get_the_whole_run(hub_url):
    """A loop that follows a channel remembers that it has no run at its cursor (no lookup per viewer);
    a run that starts afterwards starts after that cursor, so a viewer that joins then gets all of it,
    and one that joins after its first tokens reads its record again and starts at its first token."""

    async def main() -> None:
        hub = Hub(hub_url, metrics=False)
        release = anyio.Event()

        async def gated():
            await release.wait()
            for i in range(30):
                yield Event(str(i), event="token")
                await anyio.sleep(0.005)

        async def read(viewer) -> list[str]:
            return [event.data async for event in viewer if event.event == "token"]

        async with hub.subscribe("later") as before:  # follows the channel: no run yet
            assert (await anext(before)).data is None
            run = await hub.start_run("later", gated())
            async with hub.subscribe("later") as joined_at_start, anyio.create_task_group() as group:
                first: list[list[str]] = []

                async def first_viewer() -> None:
                    first.append(await read(joined_at_start))

                group.start_soon(first_viewer)
                await anyio.sleep(0.05)
                release.set()
                while run.events < 10:
                    await anyio.sleep(0.005)
                async with hub.subscribe("later") as joined_mid_run:
                    assert await read(joined_mid_run) == [str(i) for i in range(30)]
            assert first == [[str(i) for i in range(30)]]
            assert await run.wait() is RunStatus.COMPLETED
        await hub.aclose()

    anyio.run(main)
