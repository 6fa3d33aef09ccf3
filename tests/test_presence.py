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

from procs import free_port, serve, uvicorn_argv
from servers import wait_until
from ssesup import Hub, SupervisedStream, Supervisor
from ssesup.hub import Subscription
from ssesup.hub import presence as presence_module
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
        await hub.backend.presence_write("dead", {"lobby": {"carol": 2}}, 0.2)
        await hub.backend.presence_write("live", {"lobby": {"dave": 1}}, 30)
        assert await hub.presence("lobby") == {"carol": 2, "dave": 1}
        await anyio.sleep(0.3)
        assert await hub.presence("lobby") == {"dave": 1}

    anyio.run(main)


@pytest.fixture
def redis_workers(tmp_path, redis_url):
    port = free_port()
    argv = uvicorn_argv("apps.identity_app:app", port, "--workers", "2", "--log-level", "warning")
    with serve(argv, port, tmp_path, env={"SSESUP_HUB_URL": redis_url}) as server:
        yield server


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
    # The dead worker's records are gone from Redis too (its hash expired with its TTL).
    client = redis.Redis.from_url(redis_url)
    members = client.zrange("ssesup:presence", 0, -1)
    assert len(members) == 1 and client.exists(b"ssesup:presence:" + members[0])
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
