"""The hub on Redis Streams, against a real ``redis-server`` on 127.0.0.1 (scripts/install-redis.sh):
two uvicorn instances sharing history across a drain, ``uvicorn --workers 3``, a Redis restart, a
flushed Redis, trimming, publishing while Redis is down, and a subscription closed by another task while
it joins or reads history."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis

from apps.hub_app import Reader
from procs import free_port, serve, uvicorn_argv
from redis_support import RedisServer
from servers import wait_until
from ssesup import Event, Hub
from ssesup.hub import HubUnavailable
from ssesup.hub.redis import CALL_TIMEOUT
from ssesup.stream import StreamEnding

TOTAL = 10_000
BATCH = 100


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
        assert not hub.loop_hub().mailboxes
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
            assert not loop_hub.mailboxes and not loop_hub.subscribers
        finally:
            loop_hub.leave(subscription)  # after a failure too: its reader ends, and the loop can close
            await hub.aclose()

    anyio.run(main)


async def _cancelled_after(steps: int, call: Callable[[], Any]) -> str:
    """Start ``call()`` as a task, let the loop run ``steps`` steps, cancel the task and say how it
    ended: ``cancelled``, ``done`` (before the cancel), or ``returned`` (as if it had not been cancelled)."""
    task = asyncio.ensure_future(call())
    for _ in range(steps):
        await asyncio.sleep(0)
    if task.done():
        task.result()
        return "done"
    task.cancel()
    try:
        await asyncio.wait_for(asyncio.shield(task), 10)
    except asyncio.CancelledError:
        return "cancelled"
    return "returned"


@pytest.mark.parametrize("query", ["", "?socket_timeout=5"], ids=["url", "url asking for a socket timeout"])
def test_a_publish_or_a_join_cancelled_at_any_step_is_cancelled(redis_url, query):
    """A task cancelled while it publishes or joins (connecting, writing a command, reading its reply)
    ends cancelled, at every step of the loop: none returns as if it had not been cancelled. (redis-py,
    with a socket timeout, writes through ``asyncio.wait_for``, which before Python 3.12 swallows a
    cancellation that arrives as the write completes: a publish returned at 6 of these 40 steps. The
    hub sets its own deadlines, also when the URL's query asks for a socket timeout.)"""

    async def main() -> dict[str, dict[str, list[int]]]:
        warm = Hub(redis_url + query, metrics=False)
        await warm.publish("steps", "warm")
        outcomes: dict[str, dict[str, list[int]]] = {}
        for name in ("publish", "join", "publish on a new hub", "join on a new hub"):
            for steps in range(40):
                hub = Hub(redis_url + query, metrics=False) if "new" in name else warm

                async def call(hub: Hub = hub, name: str = name) -> None:
                    if name.startswith("publish"):
                        await hub.publish("steps", "x")
                        return
                    subscription = hub.subscribe("steps")
                    try:
                        await subscription.__anext__()
                    finally:
                        await subscription.aclose()

                outcome = await _cancelled_after(steps, call)
                outcomes.setdefault(name, {}).setdefault(outcome, []).append(steps)
                if hub is not warm:
                    await hub.aclose()
        await warm.aclose()
        return outcomes

    outcomes = asyncio.run(main())
    for name, by_outcome in outcomes.items():
        assert "returned" not in by_outcome, (name, by_outcome)
        assert len(by_outcome.get("cancelled", [])) >= 5, (name, by_outcome)  # the cancels hit the calls


def test_asyncio_run_returns_with_a_subscription_left_open(redis_url):
    """A subscription left open (neither iterated nor closed) keeps the loop's reader going; when
    ``asyncio.run`` ends, it cancels the reader wherever it is (reading, or writing its next XREAD after
    a publish woke it), and returns."""

    async def main(steps: int) -> None:
        hub = Hub(redis_url, metrics=False)
        subscription = hub.subscribe("left", "open")
        await subscription.__anext__()
        await hub.publish("left", "wakes the reader")
        for _ in range(steps):
            await asyncio.sleep(0)

    hung = []
    for steps in range(30):
        runner = threading.Thread(target=asyncio.run, args=(main(steps),), daemon=True)
        runner.start()
        runner.join(10)
        if runner.is_alive():
            hung.append(steps)
    assert not hung, f"asyncio.run did not return after {hung} steps"


def test_a_stuck_redis_is_unavailable_at_the_deadline_and_subscriptions_carry_on(tmp_path):
    """Redis stopped (SIGSTOP: its socket still accepts, nothing answers): a publish raises
    HubUnavailable at the call's deadline, not later and not never; once Redis goes on (SIGCONT), a
    subscription that waited through it gets what is published next."""
    server = RedisServer(tmp_path)
    server.start()
    assert server.process is not None

    async def main() -> list[str | None]:
        hub = Hub(server.url, metrics=False)
        subscription = hub.subscribe("stuck")
        await subscription.__anext__()  # the start
        await hub.publish("stuck", "before")
        got = [(await subscription.__anext__()).data]
        server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(HubUnavailable, match="unreachable"), anyio.fail_after(CALL_TIMEOUT + 10):
                await hub.publish("stuck", "unanswered")
            waited = time.monotonic() - started
            assert CALL_TIMEOUT - 0.5 <= waited <= CALL_TIMEOUT + 4, waited
        finally:
            server.process.send_signal(signal.SIGCONT)
        await hub.publish("stuck", "after")
        with anyio.fail_after(30):
            async for event in subscription:
                got.append(event.data)
                if event.data == "after":
                    break
        await subscription.aclose()
        await hub.aclose()
        return got

    try:
        got = asyncio.run(main())
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.stop()
    # A publish that failed may or may not have been stored (Redis reads the command once it goes on).
    assert got in (["before", "after"], ["before", "unanswered", "after"]), got


def publish_while_this_loop_waits(hub: Hub, channel: str, total: int, pad: str = "") -> None:
    """Publish ``pad + "0"`` .. ``pad + str(total - 1)`` to ``channel`` through ``hub`` on an event loop
    of another thread, this thread (its loop, and that loop's reader) blocked until it is done."""

    async def main() -> None:
        for number in range(total):
            await hub.publish(channel, pad + str(number))
        await hub.aclose()  # that loop's connections

    publisher = threading.Thread(target=anyio.run, args=(main,))
    publisher.start()
    publisher.join(60)
    assert not publisher.is_alive()


@pytest.mark.parametrize(
    ("total", "pad", "options"),
    [
        pytest.param(1000, "", {"mailbox_events": 100}, id="1,000 small events, mailboxes of 100"),
        pytest.param(300, "\N{GRINNING FACE}" * 4096, {}, id="300 events of 16 KiB, mailboxes of 1 MiB"),
    ],
)
def test_a_backlog_the_reader_reads_at_once_reaches_subscribers_that_keep_up_without_overflow(
    redis_url, total, pad, options, monkeypatch
):
    """The loop's reader falls behind Redis (here its loop is blocked while another loop publishes;
    after an outage it is the same): its next read returns the whole backlog at once, several
    times a mailbox (in events, or in bytes: 4.8 MiB of 4-byte characters). Two subscribers that keep
    up get every event, in order, with no gap, while a third on the same loop reads nothing (its
    mailbox drops its oldest events): the reader hands the backlog out in pieces that fit, each once the
    readers have taken the last, and does not wait for the one that stopped. (All in one step, the
    mailboxes overflowed before their subscribers could run.)"""
    # The cap on one batch's pacing is a safety valve, not what is tested: on a loaded machine the
    # pieces' steps may take longer than it.
    monkeypatch.setattr("ssesup.hub.fanout.BATCH_WAIT", 10.0)

    async def main() -> list[list[str | None]]:
        hub = Hub(redis_url, metrics=False, overflow="drop_oldest", **options)
        readers = [hub.subscribe("backlog") for _ in range(3)]
        for subscription in readers:
            await subscription.__anext__()  # the start: joined, the loop's reader waits on Redis
        publish_while_this_loop_waits(hub, "backlog", total, pad)
        got: list[list[str | None]] = [[], []]

        async def read(subscription: Any, into: list[str | None]) -> None:
            async for event in subscription:
                into.append(event.data if event.event != "gap" else "gap")
                if len(into) == total:
                    return

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                for subscription, into in zip(readers, got, strict=False):
                    tasks.start_soon(read, subscription, into)
        for subscription in readers:
            await subscription.aclose()
        await hub.aclose()
        return got

    expected = [pad + str(number) for number in range(total)]
    for got in asyncio.run(main()):
        assert got == expected, [value if value == "gap" else value[-5:] for value in got[:5]]


def test_a_subscriber_that_does_not_take_a_backlog_still_overflows_its_mailbox(redis_url):
    """The pieces wait for a subscriber only so long (PIECE_WAIT): one that reads nothing while the
    reader fans out a backlog of 1,000 events overflows its mailbox of 100 and ends as a slow consumer,
    and the reader's memory stays bounded."""

    async def main() -> None:
        hub = Hub(redis_url, metrics=False, mailbox_events=100)
        async with hub.subscribe("backlog") as subscription:
            await subscription.__anext__()
            publish_while_this_loop_waits(hub, "backlog", 1000)
            await anyio.sleep(5)  # not reading: the reader fans out meanwhile
            assert not hub.loop_hub().mailboxes  # it left the hub when its mailbox overflowed
            with pytest.raises(StreamEnding, match="overflowed"):
                await subscription.__anext__()
        await hub.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("engine", ["memory", "redis"])
def test_a_reader_behind_by_more_than_the_history_kept_says_so_with_an_expired_gap(redis_url, engine):
    """The loop's reader falls behind by more than the history the engine keeps (its loop blocked while
    another loop publishes 2,000 events into a history of 100): the events history dropped before the
    reader read them reach the subscriber as one ``expired`` gap, in their place, between the events
    before and after them, which arrive in order and end with the last. (They were skipped silently.)"""
    total = 2000

    async def main() -> list[str]:
        hub = Hub(None if engine == "memory" else redis_url, metrics=False, history_size=100)

        got: list[str] = []
        async with hub.subscribe("kept") as subscription:
            await subscription.__anext__()  # the start: joined, the loop's reader waits on the engine
            publish_while_this_loop_waits(hub, "kept", total)
            with anyio.fail_after(30):
                async for event in subscription:
                    if event.event == "gap":
                        gap = json.loads(event.data)
                        assert (gap["reason"], gap["channels"]) == ("expired", ["kept"]), gap
                        got.append("gap")
                    else:
                        got.append(event.data)
                    if event.data == str(total - 1):
                        break
        await hub.aclose()
        return got

    got = asyncio.run(main())
    assert got.count("gap") == 1, got[:5]
    at = got.index("gap")
    before, after = [int(n) for n in got[:at]], [int(n) for n in got[at + 1 :]]
    assert before == list(range(len(before))), before[:5]  # from the first, none skipped
    assert after == list(range(after[0], total)), after[:5]  # to the last, none skipped
    assert len(before) + len(after) < total  # history dropped the rest
