"""What the hub keeps, and what a resume is told when history is gone: channels that come and go (per
user, per request) cost nothing once their history has aged out, in memory and in Redis; an ``expired``
gap says up to which id events were lost; ``expired`` and ``unknown`` stay honest after a channel was
forgotten."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time

import pytest
import redis
from starlette.applications import Starlette
from starlette.routing import Route

from ssesup import Event, Hub, SupervisedStream, Supervisor
from ssesup.hub.ids import TOKENS_KEPT
from ssesup.hub.memory import HORIZON_BUCKETS, MemoryBackend
from ssesup.testing import AsyncSSEClient

CHANNELS = 100_000
AT_ONCE = 50  # publishes and subscriptions in flight at once (within redis-py's pool)


@pytest.fixture(params=["memory", "redis"])
def engine(request):
    return None if request.param == "memory" else request.getfixturevalue("redis_url")


def test_an_expired_gap_says_up_to_which_id_events_were_lost(engine):
    """A resume after an id whose successors history trimmed: the gap's ``resumed`` is the id of the last
    event lost (the stream goes on with the one after it), not the id asked for, so a client can tell
    what it lost: the events after ``requested`` up to and including ``resumed``."""

    async def main() -> None:
        hub = Hub(engine, history_size=10, metrics=False)
        ids = [await hub.publish("orders", Event.json({"n": n})) for n in range(500)]
        async with hub.subscribe("orders", last_event_id=ids[0]) as subscription:
            gap = await subscription.__anext__()
            first = await subscription.__anext__()
        await hub.aclose()
        data = json.loads(gap.data)
        kept = json.loads(first.data)["n"]
        assert (data["reason"], data["requested"]) == ("expired", ids[0])
        assert 1 < kept < 500 and data["resumed"] == ids[kept - 1] == gap.id != ids[0]

    asyncio.run(main())


def test_a_resume_from_the_start_of_a_channel_that_had_no_history_loses_nothing(engine):
    """The id a subscriber of a channel with no history gets (nothing kept about it) still resumes
    exactly: what was published since follows, with no gap; an id after anything given is ``unknown``."""

    async def main() -> None:
        hub = Hub(engine, metrics=False)
        async with hub.subscribe("fresh") as subscription:
            start = await subscription.__anext__()
        for n in range(3):
            await hub.publish("fresh", str(n))
        async with hub.subscribe("fresh", last_event_id=start.id) as subscription:
            events = [await subscription.__anext__() for _ in range(4)]
        assert [event.data for event in events] == [None, "0", "1", "2"]
        epoch, digest, _ = start.id.split(".")
        future = f"{epoch}.{digest}.{'z' * 12}"
        async with hub.subscribe("fresh", last_event_id=future) as subscription:
            gap = await subscription.__anext__()
        assert json.loads(gap.data)["reason"] == "unknown"
        await hub.aclose()

    asyncio.run(main())


def test_in_memory_100k_channels_published_and_subscribed_are_forgotten_once_their_age_bound_passed():
    """Subscribing alone keeps nothing; a channel's record lives while it has history; once its newest
    event is older than ``history_ttl`` the hub's sweeper forgets it, with no call to the hub. What the
    process holds (its allocated blocks) goes back near where it started. (Before: 9.6 MiB per 10k
    channels subscribed, 13.3 MiB per 10k published to, kept for the life of the process.) The engine's
    clock is the test's: the age bound passes when the test says so, however slow the machine."""
    now = [0.0]
    ttl = 1.0

    async def main() -> tuple[int, int, int, int, int]:
        backend = MemoryBackend(1000, ttl, clock=lambda: now[0])
        hub = Hub(metrics=False, backend=backend)
        gc.collect()
        start = sys.getallocatedblocks()

        async def subscribe(name: str) -> None:
            async with hub.subscribe(name) as subscription:
                await subscription.__anext__()

        for n in range(0, CHANNELS, 1000):
            await asyncio.gather(*(subscribe(f"user:{m}:{'x' * 150}") for m in range(n, n + 1000)))
        subscribed = backend.channels()
        for n in range(CHANNELS):
            await hub.publish(f"user:{n}:{'x' * 150}", Event("x" * 100))
        gc.collect()
        held = sys.getallocatedblocks() - start
        published = backend.channels()
        now[0] += 2 * ttl  # the age bound passes for every channel; no call to the hub from here on
        await asyncio.sleep(2 * ttl + 1.0)  # the sweeper looks again within ttl and its slack
        gc.collect()
        left = sys.getallocatedblocks() - start
        return subscribed, published, held, left, backend.channels()

    subscribed, published, held, left, channels = asyncio.run(main())
    assert (subscribed, published, channels) == (0, CHANNELS, 0)
    assert held > 3 * CHANNELS  # what 100k channels with an event each hold (the measure is not blind)
    # What is left: the horizons of forgotten channels, a position per bucket, however many channels;
    # and the tokens of the positions formatted last (a position and its token each).
    assert left < 2 * HORIZON_BUCKETS + 2 * TOKENS_KEPT + 1000, f"{left} blocks still held of {held}"


def test_on_redis_100k_channels_published_and_subscribed_expire_with_their_age_bound(redis_url):
    """Every publish sets the stream's expiry to the age bound (``PEXPIRE``): once it has passed, the keys
    of 100k channels published to once (and subscribed on) are gone and Redis's memory is back near
    where it started. (Before: no expiry, ``PTTL -1``, 41.5 MiB per 10k channels, forever.)"""
    ttl = 3.0
    client = redis.Redis.from_url(redis_url)

    def used() -> int:
        return int(client.info("memory")["used_memory"])

    async def main() -> tuple[int, int, int, int]:
        hub = Hub(redis_url, metrics=False, history_ttl=ttl)
        await hub.publish("warm", "x")  # the epoch key and the script, made before the baseline
        await asyncio.sleep(ttl + 0.5)
        keys_before, memory_before = client.dbsize(), used()
        most_keys, most_memory = 0, 0

        async def subscribe(name: str) -> None:
            async with hub.subscribe(name) as subscription:
                await subscription.__anext__()

        for n in range(0, CHANNELS, AT_ONCE):
            names = [f"user:{m}" for m in range(n, n + AT_ONCE)]
            await asyncio.gather(*(hub.publish(name, Event("x" * 100)) for name in names))
            if n % 1000 == 0:
                await asyncio.gather(*(subscribe(name) for name in names))
                assert 0 < client.pttl(f"ssesup:ch:{names[-1]}") <= ttl * 1000
                most_keys, most_memory = max(most_keys, client.dbsize()), max(most_memory, used())
        await hub.aclose()
        return keys_before, memory_before, most_keys - keys_before, most_memory - memory_before

    keys_before, memory_before, most_keys, most_memory = asyncio.run(main())
    assert most_keys > 1000 and most_memory > 2**20  # what the channels held at most (the measure is not blind)
    deadline = time.monotonic() + ttl + 30
    while client.dbsize() > keys_before and time.monotonic() < deadline:
        time.sleep(0.2)  # Redis expires keys as it samples them: a few seconds for 100k
    assert client.dbsize() <= keys_before
    assert used() - memory_before < 2**20
    client.close()


def test_loops_that_ended_leave_no_reader_and_no_identified_supervision_behind():
    """Each event loop that subscribed had a reader the in-memory engine tells of every publish, and each
    loop with a user's stream is where a revocation goes: loops that ended (asyncio.run after
    asyncio.run, as scripts and tests do) must not be walked, or kept, for the process's life."""
    hub = Hub(metrics=False)
    supervisor = Supervisor(metrics=False, drain_on_signals=False)

    async def route(request):
        subscription = hub.subscribe("c", last_event_id=request.headers.get("last-event-id"))
        return SupervisedStream(subscription, user="alice", supervisor=supervisor)

    app = Starlette(routes=[Route("/s", route)])

    async def one_loop() -> None:
        first = await hub.publish("c", Event("x"))
        await hub.publish("c", Event("y"))
        async with AsyncSSEClient(app) as client, client.connect("/s", last_event_id=first) as connection:
            assert (await connection.next_event()).data == "y"  # joined (its loop's reader runs), then replayed
            assert hub.backend._readers

    for _ in range(3):
        asyncio.run(one_loop())

    async def publish() -> None:
        await hub.publish("c", Event("y"))

    asyncio.run(publish())
    assert len(hub.backend._readers) == 0
    assert not supervisor._with_users
