"""Resume at ids within one millisecond, and history sized for ssesup's own drains.

Redis gives events published in the same millisecond (batched, concurrent) ids with a sequence above 0
(``ms-seq``): positions ``major-minor``, whose order, encoding and resume must match Redis's. And the
defaults: a client drained with the default reconnect range, away for its top (10 s) while a channel
gets 300 events a second (under the documented 333), loses nothing when it resumes on another
instance."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procs import free_port, serve, uvicorn_argv
from ssesup import Hub
from ssesup.drain import DrainSettings
from ssesup.hub import RATE_COVERED
from ssesup.hub.ids import MAX_PART, format_id, parse_id, parse_token, position_token
from ssesup.hub.redis import parse_redis_id, redis_id
from ssesup.testing import EventStreamParser

parts = st.integers(0, 5) | st.integers(0, MAX_PART) | st.integers(MAX_PART - 5, MAX_PART)
positions = st.tuples(parts, parts)


@given(position=positions)
def test_a_position_round_trips_through_its_token_and_redis_id(position):
    assert parse_token(position_token(position)) == position
    assert parse_redis_id(redis_id(position)) == position
    raw = format_id("k3v9x2aq", "1c0f9e2b", [position, (position[0], 0)])
    assert parse_id(raw, "k3v9x2aq", "1c0f9e2b", 2) == [position, (position[0], 0)]


def test_the_tokens_of_positions_formatted_lately_are_kept_within_their_bound():
    from ssesup.hub import ids

    first = [(1_700_000_000_000 + n, n % 3) for n in range(ids.TOKENS_KEPT + 500)]
    tokens = [position_token(position) for position in first]
    assert len(ids._tokens) <= ids.TOKENS_KEPT
    assert [parse_token(token) for token in tokens] == first
    assert [position_token(position) for position in first[:10]] == tokens[:10]  # (made again, the same)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chosen=st.lists(
        st.tuples(st.integers(1, 2**64 - 1), st.integers(0, 3) | parts), min_size=2, max_size=30, unique=True
    )
)
def test_the_order_of_positions_is_redis_order(redis_url, chosen):
    """Positions sorted as the hub sorts them (tuples) are in Redis's order: XADD takes them in that order
    (it refuses an id not above the last), XRANGE gives them back so, and a read after any one of them
    (``(id``) gives exactly those the hub counts as after it."""
    ordered = sorted(chosen)
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete("order")
        for position in ordered:
            client.xadd("order", {"p": position_token(position)}, id=redis_id(position))
        assert [parse_redis_id(raw) for raw, _ in client.xrange("order")] == ordered
        for pivot in ordered[:-1]:  # nothing follows the largest id: the engine does not ask
            after = [parse_redis_id(raw) for raw, _ in client.xrange("order", f"({redis_id(pivot)}", "+")]
            assert after == [position for position in ordered if position > pivot]
    finally:
        client.close()


@pytest.fixture(params=["memory", "redis"])
def engine(request):
    return None if request.param == "memory" else request.getfixturevalue("redis_url")


def test_a_resume_at_any_id_of_a_concurrent_burst_gives_exactly_what_followed(engine):
    """300 events published at once (on Redis most share a millisecond: ids ``ms-seq`` with seq > 0); a
    resume after each id gets exactly the events after it, in order, no gap."""

    async def main() -> tuple[list[str], list[list[str]]]:
        hub = Hub(engine, metrics=False)
        ids = await asyncio.gather(*(hub.publish("burst", str(n)) for n in range(300)))
        order = {event_id: n for n, event_id in enumerate(ids)}
        published = sorted(ids, key=lambda event_id: parse_token(event_id.rsplit(".", 1)[1]))
        resumed = []
        for event_id in published[::7]:
            async with hub.subscribe("burst", last_event_id=event_id) as subscription:
                first = await subscription.__anext__()
                assert first.event != "gap", first.data
                expected = len(published) - published.index(event_id) - 1
                resumed.append([(await subscription.__anext__()).data for _ in range(expected)])
        await hub.aclose()
        return [str(order[event_id]) for event_id in published], resumed

    published, resumed = asyncio.run(main())
    for n, got in enumerate(resumed):
        assert got == published[n * 7 + 1 :]


def test_concurrent_publishes_on_redis_give_ids_within_one_millisecond(redis_url):
    async def main() -> list[str]:
        hub = Hub(redis_url, metrics=False)
        ids = await asyncio.gather(*(hub.publish("burst", str(n)) for n in range(300)))
        await hub.aclose()
        return ids

    ids = asyncio.run(main())
    assert sum("-" in event_id.rsplit(".", 1)[1] for event_id in ids) > 0  # seq > 0: the case above is real


def test_a_drain_with_the_default_reconnect_range_at_the_documented_rate_loses_nothing(redis_url, tmp_path):
    """Two uvicorns with the hub's defaults on one Redis. A client streams from A while 300 events a
    second are published through A and B; A gets SIGTERM; the client waits the top of the default
    reconnect range (10 s, the longest a drain sends it away) and resumes on B; once there it also cuts
    its connection right after an event whose id has a sequence part (``ms-seq``) and resumes at that
    id. Every event arrives once, in order, with no gap. (With the default of 1,000 events, 10 s at 300
    a second lost about 2,000 of them: ``expired``.)"""
    rate = 300
    assert rate <= RATE_COVERED
    away = DrainSettings().reconnect[1]
    port_a, port_b = free_port(), free_port()
    env = {"SSESUP_HUB_DEFAULTS": "1"}
    argv_a = uvicorn_argv("apps.hub_app:app", port_a, "--log-level", "warning")
    argv_b = uvicorn_argv("apps.hub_app:app", port_b, "--log-level", "warning")
    with (
        serve(argv_a, port_a, tmp_path, env={"SSESUP_HUB_URL": redis_url, **env}) as a,
        serve(argv_b, port_b, tmp_path, env={"SSESUP_HUB_URL": redis_url, **env}) as b,
    ):
        stop = threading.Event()
        published: list[int] = []

        subscribed = threading.Event()

        def publisher() -> None:
            """``rate`` a second, in ten requests a second, each through A or B in turn (B once A is gone)."""
            assert subscribed.wait(20)
            batch, tick, next_at = rate // 10, 0, time.monotonic()
            while not stop.is_set():
                url = (a.url, b.url)[tick % 2] if a.process.poll() is None else b.url
                start = len(published)
                try:
                    response = httpx.post(f"{url}/publish", params={"start": start, "count": batch}, timeout=10)
                except httpx.TransportError:
                    url = b.url
                    response = httpx.post(f"{url}/publish", params={"start": start, "count": batch}, timeout=10)
                assert response.status_code == 200, response.text
                published.extend(range(start, start + batch))
                tick += 1
                next_at += 0.1
                time.sleep(max(0.0, next_at - time.monotonic()))

        numbers: list[int] = []
        gaps: list[dict] = []
        resumed_at: list[str] = []
        last_id = ""

        def read(url: str, until: object) -> str:
            """Read ``url`` after ``last_id`` until the stream ends or ``until(event)``; the reason."""
            nonlocal last_id
            parser = EventStreamParser()
            headers = {"Last-Event-ID": last_id} if last_id else {}
            if last_id:
                resumed_at.append(last_id)
            with httpx.stream("GET", f"{url}/events", headers=headers, timeout=httpx.Timeout(10, read=30)) as response:
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    subscribed.set()
                    for event in parser.feed(chunk):  # (the parser's last id is the chunk's: the event's own)
                        if event.event == "gap":
                            gaps.append(json.loads(event.data))
                        elif event.event == "number":
                            numbers.append(event.json()["n"])
                        last_id = event.id
                        if until(event):
                            return "cut"
            last_id = parser.last_event_id or last_id  # the stream's end: every event of it was read
            return "ended"

        publishing = threading.Thread(target=publisher, daemon=True)
        reading_started = time.monotonic()
        publishing.start()

        def drain_a_after_a_second(event: object) -> bool:
            if time.monotonic() - reading_started > 1 and a.process.poll() is None:
                a.signal(signal.SIGTERM)
            return False

        assert read(a.url, drain_a_after_a_second) == "ended"
        drained_at = len(numbers)
        time.sleep(away)
        published_while_away = len(published) - drained_at

        def seq_id(event: object) -> bool:
            return "-" in last_id.rsplit(".", 1)[1] and len(numbers) > drained_at

        assert read(b.url, seq_id) == "cut"
        stop.set()
        publishing.join(30)
        last = published[-1]
        assert read(b.url, lambda event: bool(numbers) and numbers[-1] == last) == "cut"
        assert a.process.wait(10) is not None

    assert gaps == []
    missing = sorted(set(range(last + 1)) - set(numbers))
    assert numbers == list(range(last + 1)), f"{len(numbers)} of {last + 1}, missing {missing[:3]}..{missing[-3:]}"
    # The client was away while more than the old default history (1,000 events) was published.
    assert published_while_away > 2000, published_while_away
    assert "-" in resumed_at[-1].rsplit(".", 1)[1]  # the last resume was at an id within a millisecond
