"""The hub on Redis Streams, against a real ``redis-server`` on 127.0.0.1 (scripts/install-redis.sh):
two uvicorn instances sharing history across a drain, ``uvicorn --workers 3``, a Redis restart, a
flushed Redis, trimming, publishing while Redis is down, and a subscription closed by another task while
it joins or reads history."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
import redis

from apps.hub_app import Reader
from procs import free_port, serve, uvicorn_argv
from servers import wait_until
from ssesup import Event, Hub
from ssesup.hub import HubUnavailable

TOTAL = 10_000
BATCH = 100


class RedisServer:
    """A redis-server of the test's own on a free port, persisting every write (appendfsync always), so
    a restart keeps every acknowledged publish."""

    def __init__(self, directory: Path) -> None:
        assert shutil.which("redis-server"), "redis-server is missing: run scripts/install-redis.sh"
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)]
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self._answers, timeout=10, interval=0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)

    def restart(self, down_for: float) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, (self.directory / "redis.log").read_text()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    return redis_server.url


def hub_server(url: str, port: int, tmp_path: Path, *extra: str):
    argv = uvicorn_argv("apps.hub_app:app", port, "--log-level", "warning", *extra)
    return serve(argv, port, tmp_path, env={"SSESUP_HUB_URL": url})


def publish_all(urls: Callable[[int], list[str]], on_batch: Callable[[int], None] = lambda batch: None) -> list[int]:
    """Publish 0..TOTAL-1 in batches, each through the first of ``urls(batch)`` that answers; returns
    the numbers acknowledged. A number whose publish failed is not published again (it may or may not
    have been stored), so an acknowledged number is stored once."""
    acknowledged: list[int] = []
    for batch in range(TOTAL // BATCH):
        on_batch(batch)
        start, end = batch * BATCH, (batch + 1) * BATCH
        while start < end:
            for url in urls(batch):
                try:
                    response = httpx.post(f"{url}/publish", params={"start": start, "count": end - start}, timeout=30)
                except httpx.TransportError:
                    continue
                done = len(response.json()["ids"])
                acknowledged += range(start, start + done)
                start += done if response.status_code == 200 else done + 1
                if response.status_code != 200:
                    assert "unreachable" in response.json()["error"]
                    time.sleep(0.05)
                break
            else:
                time.sleep(0.05)
    return acknowledged


def read_in_thread(reader: Reader, done: Callable[[list], bool]) -> threading.Thread:
    thread = threading.Thread(target=reader.run, args=(done, 120), daemon=True)
    thread.start()
    assert reader.subscribed.wait(20)
    return thread


def test_a_client_drained_off_one_instance_resumes_on_another_with_every_event_once(redis_url, tmp_path):
    port_a, port_b = free_port(), free_port()
    with hub_server(redis_url, port_a, tmp_path) as a, hub_server(redis_url, port_b, tmp_path) as b:
        reader = Reader([a.url, b.url])
        thread = read_in_thread(reader, lambda events: len(events) >= TOTAL)

        def drain_a_midway(batch: int) -> None:
            if batch == TOTAL // BATCH // 2:
                a.signal(signal.SIGTERM)

        acknowledged = publish_all(lambda batch: [a.url, b.url] if batch % 2 else [b.url], drain_a_midway)
        thread.join(120)
        assert reader.error is None, reader.error
        assert acknowledged == list(range(TOTAL))
        assert reader.numbers() == list(range(TOTAL)), f"{len(reader.numbers())} events"
        assert not reader.gaps and reader.connects >= 2
        assert a.process.wait(10) is not None  # A drained and exited


def test_through_uvicorn_workers_a_client_reconnects_to_whichever_worker_answers(redis_url, tmp_path):
    port = free_port()
    with hub_server(redis_url, port, tmp_path, "--workers", "3") as server:
        reader = Reader([server.url])
        thread = read_in_thread(reader, lambda events: len(events) >= TOTAL)
        drained = []

        def drain_the_readers_worker(batch: int) -> None:
            if batch in (30, 60) and reader.worker:
                drained.append(reader.worker)
                os.kill(int(reader.worker), signal.SIGTERM)

        acknowledged = publish_all(lambda batch: [server.url], drain_the_readers_worker)
        thread.join(120)
        assert reader.error is None, reader.error
        assert acknowledged == list(range(TOTAL))
        assert reader.numbers() == list(range(TOTAL)), f"{len(reader.numbers())} events"
        assert not reader.gaps and reader.connects >= 2 and drained


def test_through_a_redis_restart_every_acknowledged_publish_is_delivered_once(redis_server, redis_url, tmp_path):
    port = free_port()
    with hub_server(redis_url, port, tmp_path) as server:
        reader = Reader([server.url])
        finished = threading.Event()
        acknowledged: list[int] = []

        def done(events: list) -> bool:
            return finished.is_set() and reader.last_number >= acknowledged[-1]

        thread = read_in_thread(reader, done)
        readiness: list[int] = []

        def restart_midway(batch: int) -> None:
            if batch == 40:
                redis_server.stop()
                readiness.append(httpx.get(f"{server.url}/ready", timeout=10).status_code)
                time.sleep(0.5)
                redis_server.start()

        acknowledged += publish_all(lambda batch: [server.url], restart_midway)
        finished.set()
        thread.join(120)
        assert reader.error is None, reader.error
        got = reader.numbers()
        assert got == sorted(set(got)), "a duplicate or an event out of order"
        lost = sorted(set(acknowledged) - set(got))
        assert not lost, f"lost {len(lost)}: {lost[:3]}..{lost[-3:]}, gaps {reader.gaps}, connects {reader.connects}"
        assert len(acknowledged) > TOTAL * 0.9 and not reader.gaps
        assert reader.connects == 1  # the stream stayed open through the restart
        assert readiness == [503]
        wait_until(lambda: httpx.get(f"{server.url}/ready", timeout=10).status_code == 200, timeout=20)


def test_a_flushed_redis_is_a_new_epoch_and_ids_from_before_get_a_gap(redis_url):
    async def main() -> None:
        hub = Hub(redis_url, metrics=False)
        old = await hub.publish("orders", Event.json({"n": 0}))
        client = redis.asyncio.Redis.from_url(redis_url)
        await client.flushall()
        await client.aclose()
        other = Hub(redis_url, metrics=False)  # another process's view: it reads the new epoch
        await other.publish("orders", Event.json({"n": 1}))
        async with other.subscribe("orders", last_event_id=old) as subscription:
            gap = await subscription.__anext__()
        assert gap.event == "gap" and json.loads(gap.data)["reason"] == "epoch"
        await hub.aclose()
        await other.aclose()

    anyio.run(main)


def test_events_trimmed_from_the_stream_are_a_gap_and_what_is_left_follows(redis_url):
    async def main() -> None:
        hub = Hub(redis_url, history_size=10, metrics=False)
        ids = [await hub.publish("orders", Event.json({"n": n})) for n in range(500)]
        async with hub.subscribe("orders", last_event_id=ids[0]) as subscription:
            gap = await subscription.__anext__()
            first = await subscription.__anext__()
        assert json.loads(gap.data)["reason"] == "expired" and json.loads(first.data)["n"] > 1
        async with hub.subscribe("orders", last_event_id=ids[-3]) as subscription:
            events = [await subscription.__anext__() for _ in range(3)]
        assert events[0].data is None and [json.loads(e.data)["n"] for e in events[1:]] == [498, 499]
        await hub.aclose()

    anyio.run(main)


def test_publishing_while_redis_is_down_raises_a_clear_error_without_the_password():
    async def main() -> None:
        hub = Hub(f"redis://:secret@127.0.0.1:{free_port()}/0", metrics=False)
        with pytest.raises(HubUnavailable, match=r"Redis at 127\.0\.0\.1:\d+ is unreachable") as raised:
            await hub.publish("orders", Event("x"))
        assert "secret" not in str(raised.value)
        assert not await hub.healthy()
        await hub.aclose()

    anyio.run(main)


def test_a_subscription_closed_by_another_task_during_a_history_read_ends_there(redis_url):
    """A subscriber replaying more than a page of history from Redis is closed by another task while it
    waits for the next page: its iteration ends there (nothing of that page), and it has left the hub."""
    from ssesup.hub.subscription import PAGE

    async def main() -> None:
        hub = Hub(redis_url, history_size=PAGE * 4, metrics=False)
        ids = [await hub.publish("orders", Event.json({"n": n}, event="order")) for n in range(PAGE * 2 + 100)]
        subscription = hub.subscribe("orders", last_event_id=ids[0])
        got: list[Event] = []

        async def read() -> None:
            async for event in subscription:  # no await of its own: it waits only inside the subscription
                got.append(event)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(read)
                # The reader runs through the first page without yielding, then waits for the second.
                while not (len(got) == 1 + PAGE and subscription._items is not None and subscription._items.ag_running):
                    await anyio.sleep(0)
                await subscription.aclose()
        assert got[0].data is None and [json.loads(e.data)["n"] for e in got[1:]] == list(range(1, PAGE + 1))
        assert {e.event for e in got[1:]} == {"order"} and got[-1].id is not None
        assert not hub.loop_hub().subscriptions
        with pytest.raises(StopAsyncIteration):
            await subscription.__anext__()
        await hub.aclose()

    anyio.run(main)


def test_a_subscription_closed_by_another_task_while_it_joins_leaves_every_channel(redis_url):
    """Closed by another task while it waits for Redis to start (the epoch, its joins): its iteration
    ends, and it is left in no channel, not even those it joined after the close."""

    async def main() -> None:
        hub = Hub(redis_url, metrics=False)
        subscription = hub.subscribe("orders", "invoices")
        ended: list[str] = []

        async def read() -> None:
            with pytest.raises(StopAsyncIteration):
                await subscription.__anext__()
            ended.append("ended")

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(read)
                while not (subscription._items is not None and subscription._items.ag_running):
                    await anyio.sleep(0)
                await subscription.aclose()  # the reader is inside its start, waiting for Redis
        assert ended == ["ended"]
        loop_hub = hub.loop_hub()
        try:
            assert not loop_hub.subscriptions and not loop_hub.subscribers
        finally:
            loop_hub.leave(subscription)  # after a failure too: its reader ends, and the loop can close
            await hub.aclose()

    anyio.run(main)
