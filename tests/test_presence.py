"""Presence: ``hub.presence(channel)`` is user -> open streams on that channel, across every process of
the engine (Redis: two uvicorn workers), anonymous streams left out; a worker killed with SIGKILL drops
out within the records' TTL (15 s); records are forgotten with the last stream."""

from __future__ import annotations

import os
import signal
import time

import anyio
import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Route

from servers import wait_until
from ssesup import Hub, SupervisedStream, Supervisor
from ssesup.hub import HubUnavailable, Subscription
from ssesup.hub import control as control_module
from ssesup.hub import presence as presence_module
from ssesup.hub import redis as redis_module
from ssesup.testing import AsyncSSEClient
from test_revocation import hold, on_both_workers


def test_presence_counts_each_users_open_streams_per_channel_and_forgets_them_in_memory():
    registry = CollectorRegistry()
    hub = Hub(metrics=registry)
    supervisor = Supervisor(metrics=False)

    async def events(request):
        return hub.stream(request, *request.query_params["c"].split(","), user=request.query_params.get("u"))

    app = Starlette(routes=[Route("/e", events)])
    supervisor.install(app)

    def gauge(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"backend": "memory", **labels}) or 0.0

    async def main():
        async with AsyncSSEClient(app) as client:
            async with (
                client.connect("/e?c=lobby,orders&u=alice"),
                client.connect("/e?c=lobby&u=alice"),
                client.connect("/e?c=lobby&u=bob"),
                client.connect("/e?c=lobby"),  # anonymous: not listed
            ):
                await anyio.sleep(0.05)
                assert await hub.presence("lobby") == {"alice": 2, "bob": 1}
                assert await hub.presence("orders") == {"alice": 1}
                assert await hub.presence("empty") == {}
                assert (gauge("ssesup_hub_presence_users"), gauge("ssesup_hub_presence_streams")) == (3, 3)
            await anyio.sleep(0.05)
            assert await hub.presence("lobby") == {}
            assert hub.loop_presence().counts == {} and hub.backend._members == {}  # nothing kept
            assert (gauge("ssesup_hub_presence_users"), gauge("ssesup_hub_presence_streams")) == (0, 0)
            # Removing the member is timed as an operation of its own, not as one more write.
            assert gauge("ssesup_hub_backend_seconds_count", operation="presence_leave") == 1
            assert gauge("ssesup_hub_backend_seconds_count", operation="presence_write") >= 1

    anyio.run(main)


def test_an_internal_subscription_of_a_stream_with_a_user_is_never_counted():
    """The hub's own subscriptions (``internal``: control messages) are not the user's presence, whatever
    names they follow: an internal subscription may name client channels too."""
    hub = Hub(metrics=False)

    async def generator():
        yield "x"

    async def main():
        stream = SupervisedStream(generator(), user="alice")
        own = Subscription(hub, ["lobby", "!control"], None, internal=True)
        theirs = hub.subscribe("lobby")
        own.stream = theirs.stream = stream
        async with own, theirs:
            await anext(own)
            await anext(theirs)
            assert own.internal and not theirs.internal
            assert await hub.presence("lobby") == {"alice": 1}
            assert hub.loop_presence().counts == {"lobby": {"alice": 1}}

    anyio.run(main)


def test_a_member_whose_heartbeats_stop_drops_out_after_its_ttl():
    hub = Hub(metrics=False)

    async def main():
        await hub.backend.presence_write("dead", {"lobby": {"carol": 2}}, 0.2, replace=True)
        await hub.backend.presence_write("live", {"lobby": {"dave": 1}}, 30, replace=True)
        assert await hub.presence("lobby") == {"carol": 2, "dave": 1}
        await anyio.sleep(0.3)
        assert await hub.presence("lobby") == {"dave": 1}

    anyio.run(main)


@pytest.fixture(params=["memory", "redis"])
def engine_hub(request):
    if request.param == "memory":
        return Hub(metrics=False)
    return Hub(request.getfixturevalue("redis_url"), metrics=False)


def test_an_engine_writes_the_pairs_it_is_given_and_refuses_a_member_whose_ttl_ran_out(engine_hub):
    """The engines' contract: a write sets the (channel, user) pairs it names (0: gone) and leaves the
    others; a member's first write, and any after its TTL ran out, must replace its whole state."""
    backend = engine_hub.backend

    async def records(channel):
        return sorted(map(sorted, [record.items() for record in await backend.presence(channel)]))

    async def main():
        assert await backend.presence_write("m", {"lobby": {"a": 1}}, 30) is False  # never written
        assert await records("lobby") == []
        assert await backend.presence_write("m", {"lobby": {"a": 1, "b": 2}}, 30, replace=True) is True
        assert await backend.presence_write("m", {"lobby": {"a": 0, "c": 1, "zoë": 3}, "orders": {"a": 1}}, 30)
        assert await records("lobby") == [[("b", 2), ("c", 1), ("zoë", 3)]]
        assert await records("orders") == [[("a", 1)]]
        assert await backend.presence_write("m", {}, 30) is True  # a heartbeat
        assert await backend.presence_write("m", {"orders": {"z": 1}}, 30, replace=True) is True
        assert (await records("lobby"), await records("orders")) == ([], [[("z", 1)]])

        assert await backend.presence_write("short", {"lobby": {"d": 1}}, 0.1, replace=True) is True
        assert await records("lobby") == [[("d", 1)]]
        await anyio.sleep(0.2)
        assert await records("lobby") == []
        assert await backend.presence_write("short", {"lobby": {"d": 2}}, 30) is False  # its TTL ran out
        assert await backend.presence_write("short", {}, 30) is False
        assert await records("lobby") == []

        await backend.presence_leave("m")
        assert await records("orders") == []
        assert await backend.presence_write("m", {}, 30) is False  # it left: its next write is whole
        await engine_hub.aclose()

    anyio.run(main)


def test_a_flush_on_redis_writes_the_pairs_that_changed_not_the_channels_users(redis_url):
    """10 joins and 10 leaves on a channel of 2,000 users write 20 pairs, not the channel's users."""
    hub = Hub(redis_url, metrics=False)
    client = redis.Redis.from_url(redis_url)

    async def main():
        presence = hub.loop_presence()
        for n in range(2000):
            presence.join(("lobby",), f"user-{n:04d}")
        await presence.flush()
        sent = []
        for batch in range(5):
            before = client.info("stats")["total_net_input_bytes"]
            for n in range(10):
                presence.join(("lobby",), f"new-{batch}-{n}")
                presence.leave(("lobby",), f"user-{batch * 10 + n:04d}")
            await presence.flush()
            sent.append(client.info("stats")["total_net_input_bytes"] - before)
        expected = {f"user-{n:04d}": 1 for n in range(50, 2000)}
        expected.update({f"new-{batch}-{n}": 1 for batch in range(5) for n in range(10)})
        assert await hub.presence("lobby") == expected
        await hub.aclose()
        return sent

    sent = anyio.run(main)
    client.close()
    # 20 pairs (about 15 bytes each), the script's hash and the member: a few hundred bytes. The whole
    # channel, 2,000 users, would be some 30 KB.
    assert max(sent) < 2000, sent


def test_on_redis_a_dead_members_records_go_a_few_per_call_and_a_heartbeat_touches_none(redis_url, monkeypatch):
    """Whoever finds a member whose TTL ran out deletes its records, PRESENCE_SWEEP per call; a live
    member's heartbeat writes its own time only, and refreshes its records' safety expiry once in
    PRESENCE_REFRESH."""
    monkeypatch.setattr(redis_module, "PRESENCE_SWEEP", 2)
    hub = Hub(redis_url, metrics=False)
    backend = hub.backend
    client = redis.Redis.from_url(redis_url)

    async def main():
        await backend.presence_write("dead", {f"c{n}": {"u": 1} for n in range(5)}, 0.1, replace=True)
        await backend.presence_write("live", {"c0": {"v": 1}}, 30, replace=True)
        assert len(client.keys("ssesup:presence:dead:*")) == 5
        await anyio.sleep(0.2)
        left = []
        for _ in range(3):
            assert await backend.presence("c0") == [{"v": 1}]  # ignored at once, deleted a few at a time
            left.append(len(client.keys("ssesup:presence:dead:*")))
        assert left == [3, 1, 0]
        assert client.zrange("ssesup:presence:members", 0, -1) == [b"live"]
        assert not client.exists("ssesup:presence:dead")

        record = "ssesup:presence:live:c0"
        client.pexpire(record, 100_000)
        await backend.presence_write("live", {}, 30)
        assert 0 < client.pttl(record) <= 100_000  # a heartbeat touches no record
        monkeypatch.setattr(redis_module, "PRESENCE_REFRESH", 0.0)
        await backend.presence_write("live", {}, 30)
        assert client.pttl(record) > redis_module.PRESENCE_KEPT * 1000 - 10_000
        await hub.aclose()

    anyio.run(main)
    client.close()


def test_a_member_whose_ttl_ran_out_writes_its_whole_state_again(redis_url, monkeypatch):
    """A loop stalled (or an engine away) for longer than the TTL: another process finds its TTL run out
    and deletes its records; the member's next heartbeat is refused, and it writes its whole state."""
    monkeypatch.setattr(presence_module, "BEAT_EVERY", 0.1)
    hub = Hub(redis_url, metrics=False)
    other = Hub(redis_url, metrics=False)
    client = redis.Redis.from_url(redis_url)

    async def main():
        presence = hub.loop_presence()
        presence.join(("lobby", "orders"), "alice")
        presence.join(("lobby",), "bob")
        assert await hub.presence("lobby") == {"alice": 1, "bob": 1}
        client.zadd("ssesup:presence:members", {presence.member: 1})  # its time passed long ago
        assert await other.presence("lobby") == {}
        assert not client.keys(f"ssesup:presence:{presence.member}*")
        with anyio.fail_after(5):
            while await other.presence("lobby") != {"alice": 1, "bob": 1}:
                await anyio.sleep(0.02)
        assert await other.presence("orders") == {"alice": 1}
        await hub.aclose()
        await other.aclose()

    anyio.run(main)
    client.close()


def test_while_the_engine_is_away_the_changes_kept_stay_bounded_and_the_whole_state_is_written_back(monkeypatch):
    """Joins and leaves of client-chosen channels while writes fail: past DIRTY_KEPT changed pairs the
    loop keeps none and writes its whole state when the engine is back (what left meanwhile is gone)."""
    monkeypatch.setattr(presence_module, "DIRTY_KEPT", 50)
    monkeypatch.setattr(presence_module, "RETRY_EVERY", 0.01)
    hub = Hub(metrics=False)
    backend = hub.backend
    write = backend.presence_write
    down = False

    async def flaky(*args, **kwargs):
        if down:
            raise HubUnavailable("the engine is away")
        return await write(*args, **kwargs)

    monkeypatch.setattr(backend, "presence_write", flaky)

    async def main():
        nonlocal down
        presence = hub.loop_presence()
        presence.join(("lobby",), "alice")
        presence.join(("gone",), "bob")
        await presence.flush()
        down = True
        presence.leave(("gone",), "bob")
        most = 0
        for n in range(200):
            presence.join((f"room-{n}",), f"user-{n}")
            presence.leave((f"room-{n}",), f"user-{n}")
            most = max(most, len(presence.dirty))
        await anyio.sleep(0.05)  # the loop's task tries, and fails
        assert most <= 50 and presence.rewrite and not presence.dirty
        down = False
        assert await hub.presence("lobby") == {"alice": 1}
        assert await hub.presence("gone") == {}
        assert backend._members[presence.member][1] == {"lobby": {"alice": 1}}

    anyio.run(main)


def test_hub_aclose_stops_the_presence_task_and_the_control_follower(redis_url, monkeypatch):
    """hub.aclose() ends the loop's tasks before it closes the engine's connections: presence removes
    the member's records, the follower of !control leaves its subscription; a later change starts the
    presence task again, with the whole state."""
    monkeypatch.setattr(control_module, "identified_here", lambda: True)
    hub = Hub(redis_url, metrics=False)
    client = redis.Redis.from_url(redis_url)

    async def main():
        presence = hub.loop_presence()
        presence.join(("lobby",), "alice")
        assert await hub.presence("lobby") == {"alice": 1}
        hub._identified()
        control = hub._control.get()
        with anyio.fail_after(5):
            while not hub.loop_hub().subscribers.get("!control"):
                await anyio.sleep(0.01)
        await hub.aclose()
        assert presence._task is None and control.scope is None and control._ended.is_set()
        assert not hub.loop_hub().subscribers.get("!control")
        assert not client.keys(f"ssesup:presence:{presence.member}*")
        assert client.zscore("ssesup:presence:members", presence.member) is None
        presence.join(("lobby",), "bob")
        assert await hub.presence("lobby") == {"alice": 1, "bob": 1}
        presence.leave(("lobby",), "alice")
        presence.leave(("lobby",), "bob")
        await hub.aclose()
        assert not client.keys("ssesup:presence:*")

    anyio.run(main)
    client.close()


def presence(url: str, channel: str) -> dict[str, int]:
    return httpx.get(f"{url}/presence", params={"channel": channel}, timeout=10).json()


def test_presence_across_two_workers_on_redis_and_a_killed_worker_drops_out(redis_workers, redis_url):
    url = redis_workers.url
    alice = on_both_workers(url, "/events?channels=lobby", "alice", each=1)
    bob = on_both_workers(url, "/events?channels=lobby,orders", "bob", each=1)
    anonymous = httpx.Client(timeout=10)
    anonymous.send(anonymous.build_request("GET", f"{url}/events?channels=lobby"), stream=True)  # 401: never counted
    workers = {h.worker for h in alice}
    assert len(workers) == 2
    expected = {"alice": len(alice), "bob": len(bob)}
    wait_until(lambda: presence(url, "lobby") == expected, timeout=5)
    for _ in range(6):  # whichever worker answers, the same sum
        assert presence(url, "lobby") == expected
    assert presence(url, "orders") == {"bob": len(bob)}

    victim = sorted(workers)[0]
    left = {
        "alice": sum(h.worker != victim for h in alice),
        "bob": sum(h.worker != victim for h in bob),
    }
    os.kill(int(victim), signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: all(h.ended_at for h in alice + bob if h.worker == victim), timeout=10)

    def dropped() -> bool:
        try:
            return presence(url, "lobby") == left
        except httpx.HTTPError:
            return False

    wait_until(dropped, timeout=presence_module.TTL + 10, interval=0.25)
    drop_out = time.monotonic() - killed_at
    assert drop_out <= presence_module.TTL + 1, drop_out
    print(f"presence: a SIGKILLed worker dropped out {drop_out:.1f} s after the kill (TTL {presence_module.TTL} s)")
    # The dead worker's records are gone from Redis too (deleted by the first call that found its TTL run out).
    client = redis.Redis.from_url(redis_url)
    members = client.zrange("ssesup:presence:members", 0, -1)
    assert len(members) == 1 and client.smembers(b"ssesup:presence:" + members[0]) == {b"lobby", b"orders"}
    assert set(client.keys("ssesup:presence:*")) == {
        b"ssesup:presence:members",
        b"ssesup:presence:" + members[0],
        b"ssesup:presence:" + members[0] + b":lobby",
        b"ssesup:presence:" + members[0] + b":orders",
    }
    # The last streams leave: the member's records are removed at once, not after the TTL.
    survivors = [h for h in alice + bob if h.worker != victim]
    httpx.post(f"{url}/disconnect", params={"user": "alice"})
    httpx.post(f"{url}/disconnect", params={"user": "bob"})
    wait_until(lambda: all(h.ended_at for h in survivors), timeout=5)
    wait_until(lambda: presence(url, "lobby") == {} and not client.keys("ssesup:presence*"), timeout=5)
    client.close()
    anonymous.close()


def test_presence_follows_a_stream_that_opens_and_closes_on_another_worker(redis_workers):
    url = redis_workers.url
    held = [hold(url, "/events?channels=room", "erin") for _ in range(4)]
    wait_until(lambda: presence(url, "room") == {"erin": 4}, timeout=5)
    started = time.monotonic()
    httpx.post(f"{url}/disconnect", params={"user": "erin"})
    wait_until(lambda: presence(url, "room") == {}, timeout=5, interval=0.02)
    assert time.monotonic() - started < 1.0
    assert all(h.ended_at for h in held)
