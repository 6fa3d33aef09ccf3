"""The in-memory hub: ids, history, resume, gaps and bounded mailboxes; in one process, through
``subscribe`` and through a real uvicorn and a real client across reconnects."""

from __future__ import annotations

import gc
import json
import socket
import sys
import threading
import time

import anyio
import httpx
import pytest

from apps.hub_app import Reader, make_app
from servers import UvicornThread, recv_until, wait_until
from ssesup import CloseReason, Event, Hub, Supervisor, Trigger
from ssesup.hub.backend import Entry
from ssesup.hub.ids import MAX_ID_BYTES
from ssesup.hub.mailbox import Mailbox, Overflow
from ssesup.hub.memory import MemoryBackend
from ssesup.stream import StreamEnding


async def take(subscription, count: int, timeout: float = 10) -> list[Event]:
    events = []
    with anyio.fail_after(timeout):
        async for event in subscription:
            events.append(event)
            if len(events) == count:
                break
    return events


def numbers(events: list[Event]) -> list[int]:
    return [json.loads(event.data)["n"] for event in events if event.data is not None and event.event != "gap"]


def test_publishing_an_event_with_an_id_raises_value_error():
    async def main() -> None:
        hub = Hub(metrics=False)
        with pytest.raises(ValueError, match="the hub sets event ids"):
            await hub.publish("orders", Event("x", id="7"))

    anyio.run(main)


def test_ids_increase_per_channel_and_one_id_resumes_every_channel_of_a_subscription():
    async def main() -> None:
        hub = Hub(metrics=False)
        ids = [await hub.publish("orders", Event.json({"n": n})) for n in range(3)]
        assert len(set(ids)) == 3
        async with hub.subscribe("orders", "alerts") as subscription:
            (start,) = await take(subscription, 1)
            assert start.data is None and start.id  # the first event: where the subscription starts
            await hub.publish("orders", Event.json({"n": 3}))
            await hub.publish("alerts", Event.json({"n": 100}, event="alert"))
            first = await take(subscription, 2)
        assert [(event.event, numbers([event])) for event in first] == [(None, [3]), ("alert", [100])]
        await hub.publish("alerts", Event.json({"n": 101}, event="alert"))
        await hub.publish("orders", Event.json({"n": 4}))
        async with hub.subscribe("orders", "alerts", last_event_id=first[-1].id) as subscription:
            resumed = await take(subscription, 3)
        assert resumed[0].data is None  # nothing lost: no gap, the id first
        assert sorted(numbers(resumed)) == [4, 101]
        assert len(resumed[-1].id) <= MAX_ID_BYTES

    anyio.run(main)


def test_resume_is_exactly_once_at_the_seam_while_another_thread_publishes():
    """Subscribers resume after ids taken while a publisher in another thread (its own event loop)
    publishes as fast as it can: each gets every later event once, in order."""
    total = 6000
    hub = Hub(history_size=total, mailbox_events=total, mailbox_bytes=total * 100, metrics=False)
    ids: list[str] = []
    started = threading.Event()

    async def publish_all() -> None:
        for n in range(total):
            ids.append(await hub.publish("numbers", Event.json({"n": n})))
            if n == 200:
                started.set()
            if n % 7 == 0:
                await anyio.sleep(0)

    publisher = threading.Thread(target=anyio.run, args=(publish_all,))
    publisher.start()
    assert started.wait(10)

    async def resume_after(k: int) -> list[int]:
        async with hub.subscribe("numbers", last_event_id=ids[k]) as subscription:
            events = await take(subscription, 1 + total - (k + 1), timeout=30)
        return numbers(events)

    async def main() -> list[tuple[int, list[int]]]:
        results = []

        async def one(k: int) -> None:
            results.append((k, await resume_after(k)))

        async with anyio.create_task_group() as group:
            for _ in range(12):
                k = len(ids) - 1 - (len(ids) // 3)  # behind the publisher: history, then the seam, then live
                group.start_soon(one, k)
                await anyio.sleep(0.01)
        return results

    results = anyio.run(main)
    publisher.join(30)
    assert len(results) == 12
    for k, got in results:
        assert got == list(range(k + 1, total)), f"after {k}: {len(got)} events"


def test_an_id_that_cannot_be_honoured_gets_a_gap_event_then_the_stream_goes_on():
    async def main() -> None:
        hub = Hub(history_size=5, metrics=False, gap_event="lost")
        other = Hub(metrics=False)
        ids = [await hub.publish("orders", Event.json({"n": n})) for n in range(20)]
        other_id = await other.publish("orders", Event.json({"n": 0}))
        alerts_id = await hub.publish("alerts", Event.json({"n": 0}))
        cases = {
            "expired": ids[2],
            "unknown": alerts_id,  # another channel's id
            "malformed": "42",
            "too_long": "x" * (MAX_ID_BYTES + 1),
            "epoch": other_id,
        }
        for reason, asked in cases.items():
            async with hub.subscribe("orders", last_event_id=asked) as subscription:
                (gap,) = await take(subscription, 1)
                assert gap.event == "lost", reason
                data = json.loads(gap.data)
                assert data["reason"] == reason
                assert data["requested"] == asked[:MAX_ID_BYTES]
                assert data["resumed"] == gap.id and data["channels"] == ["orders"]
                if reason == "expired":  # what history still has follows
                    assert numbers(await take(subscription, 5)) == list(range(15, 20))
                await hub.publish("orders", Event.json({"n": 99}))
                (event,) = await take(subscription, 1)
                assert numbers([event]) == [99]
            ids.append(event.id)

    anyio.run(main)


def test_history_is_bounded_by_age():
    now = [0.0]

    async def main() -> None:
        hub = Hub(metrics=False, backend=MemoryBackend(1000, 0.2, clock=lambda: now[0]))
        first = await hub.publish("orders", Event.json({"n": 0}))
        await hub.publish("orders", Event.json({"n": 1}))
        now[0] += 0.3
        await hub.publish("orders", Event.json({"n": 2}))
        async with hub.subscribe("orders", last_event_id=first) as subscription:
            gap, event = await take(subscription, 2)
        assert json.loads(gap.data)["reason"] == "expired" and numbers([event]) == [2]

    anyio.run(main)


def test_a_subscriber_that_never_reads_100k_events_stays_within_its_mailbox_bound():
    """Policy drop_oldest: the mailbox holds at most its bound while 100,000 events are published, memory
    (objects alive) does not grow with the number published, and the subscriber then gets a gap and the
    newest events."""

    async def main() -> None:
        hub = Hub(overflow="drop_oldest", mailbox_events=500, mailbox_bytes=64 * 1024, metrics=False)
        subscription = hub.subscribe("ticks")
        await take(subscription, 1)  # subscribed: from now on its mailbox fills
        peak_depth = peak_bytes = 0
        for n in range(100_000):
            await hub.publish("ticks", Event.json({"n": n, "pad": "x" * 100}))
            if n % 1000 == 999:
                await anyio.sleep(0)  # the reader fans out
                peak_depth = max(peak_depth, subscription.mailbox.held)
                peak_bytes = max(peak_bytes, subscription.mailbox.size)
                if n == 9_999:
                    gc.collect()
                    baseline = len(gc.get_objects())
        await anyio.sleep(0.01)
        gc.collect()
        grown = len(gc.get_objects()) - baseline
        assert peak_depth <= 500 and peak_bytes <= 64 * 1024
        assert grown < 2000, f"{grown} more objects after 100k events than after 10k"
        gap, *events = await take(subscription, 1 + subscription.mailbox.held)
        assert gap.event == "gap" and json.loads(gap.data)["reason"] == "dropped"
        assert numbers(events)[-1] == 99_999
        await subscription.aclose()

    anyio.run(main)


def test_a_mailbox_list_stays_within_twice_its_bound_and_frees_its_storage_once_taken():
    """The mailbox's list read from ``head``: drop_oldest moves ``head`` past what it drops and compacts
    the list, so what it keeps alive stays within twice its bound; ``dropped_upto`` is ``None`` until
    something is dropped; a subscriber that takes everything leaves an empty list (its storage freed)."""
    mailbox = Mailbox(("a", "b"), "\n", 100, 1 << 30, Overflow.DROP_OLDEST, lambda: None)
    empty = sys.getsizeof(mailbox.items)
    assert mailbox.held == 0 and mailbox.dropped_upto is None
    for n in range(1, 1001):
        mailbox.offer(("a" if n % 2 else "b", Entry((n, 0), Event(str(n)))))
        assert mailbox.held <= 100 and len(mailbox.items) <= 200
    assert mailbox.dropped == 900 and mailbox.dropped_upto == {"a": (899, 0), "b": (900, 0)}
    assert [entry.position[0] for _, entry in mailbox.items[mailbox.head :]] == list(range(901, 1001))
    assert mailbox.size == sum(len(entry.body("\n")) for _, entry in mailbox.items[mailbox.head :])

    async def main() -> None:
        hub = Hub(overflow="drop_oldest", mailbox_events=100, metrics=False)
        subscription = hub.subscribe("a", "b")
        await take(subscription, 1)
        for n in range(300):
            await hub.publish("a" if n % 2 else "b", Event.json({"n": n}))
        await anyio.sleep(0.01)  # the reader fans out
        assert subscription.mailbox.held == 100 and subscription.mailbox.dropped == 200
        gap, *events = await take(subscription, 1 + 100)
        assert json.loads(gap.data)["reason"] == "dropped" and numbers(events) == list(range(200, 300))
        mailbox = subscription.mailbox
        assert mailbox.held == mailbox.head == mailbox.size == 0 and mailbox.dropped_upto is None
        assert sys.getsizeof(mailbox.items) == empty
        await subscription.aclose()

    anyio.run(main)


# -- through a real server -------------------------------------------------------------------------------


class Closes:
    """The close reasons of the streams a supervisor ran."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.reasons: list[CloseReason] = []
        supervisor.subscribe(self._transitioned)

    def _transitioned(self, stream, transition) -> None:
        if transition.close_reason is not None:
            self.reasons.append(transition.close_reason)


@pytest.fixture
def hub_server():
    hub = Hub(history_size=10_000, metrics=False)
    supervisor = Supervisor(ping=0.5, send_timeout=5, drain_on_signals=False, metrics=False)
    closes = Closes(supervisor)
    with UvicornThread(make_app(hub, supervisor)) as server:
        server.hub = hub
        server.closes = closes
        yield server


def publish(url: str, start: int, count: int, channel: str = "numbers") -> list[str]:
    response = httpx.post(f"{url}/publish", params={"channel": channel, "start": start, "count": count}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["ids"]


@pytest.mark.parametrize("header", [True, False], ids=["last-event-id-header", "last_event_id-query"])
def test_a_client_that_reconnects_gets_every_event_once_in_order(hub_server, header):
    reader = Reader([hub_server.url], header=header)
    thread = threading.Thread(target=reader.run, args=(lambda events: len(events) >= 150,))
    thread.start()
    assert reader.subscribed.wait(10)
    publish(hub_server.url, 0, 200)
    thread.join(30)
    assert reader.numbers()[:150] == list(range(150))
    publish(hub_server.url, 200, 300)  # while the client is away
    reader.run(lambda events: len(events) >= 500)
    assert reader.numbers() == list(range(500))
    assert reader.connects == 2 and not reader.gaps


def test_a_first_connect_that_got_no_event_resumes_from_where_it_subscribed(hub_server):
    reader = Reader([hub_server.url])
    reader.run(lambda events: reader.last_event_id != "")  # only the subscription's first id
    assert reader.events == []
    publish(hub_server.url, 0, 5)
    reader.run(lambda events: len(events) >= 5)
    assert reader.numbers() == [0, 1, 2, 3, 4]


def test_one_connection_of_two_channels_resumes_both_after_one_id(hub_server):
    reader = Reader([hub_server.url], path="/events?channels=orders,alerts")
    thread = threading.Thread(target=reader.run, args=(lambda events: len(events) >= 20,))
    thread.start()
    assert reader.subscribed.wait(10)
    for start in range(0, 40, 10):
        publish(hub_server.url, start, 10, channel="orders")
        publish(hub_server.url, 1000 + start, 10, channel="alerts")
    thread.join(30)
    reader.run(lambda events: len(events) >= 80)
    got = reader.numbers()
    assert sorted(got) == list(range(40)) + list(range(1000, 1040))
    assert [n for n in got if n < 1000] == list(range(40)) and not reader.gaps


def test_a_stream_that_never_reads_is_closed_slow_consumer_and_its_mailbox_freed(hub_server):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", hub_server.port))
    sock.sendall(b"GET /events?channels=flood&send_timeout=60 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    recv_until(sock, b"id: ")
    hub = hub_server.hub
    loop_hub = hub_server.call(hub.loop_hub)
    wait_until(lambda: loop_hub.subscribers.get("flood"), timeout=5)

    async def publish_all() -> None:
        for n in range(100_000):
            await hub.publish("flood", Event.json({"n": n, "pad": "x" * 200}))
            if n % 2000 == 0:
                await anyio.sleep(0.001)
                assert hub_server.call(loop_hub.mailbox_depth) <= hub.mailbox_events

    started = time.monotonic()
    anyio.run(publish_all)
    wait_until(lambda: CloseReason.SLOW_CONSUMER in hub_server.closes.reasons, timeout=10)
    assert hub_server.call(loop_hub.mailbox_depth) == 0 and not loop_hub.subscribers
    assert time.monotonic() - started < 120
    sock.close()


def test_hub_metrics_count_published_delivered_replayed_gaps_and_slow_consumers():
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"backend": "memory", **labels}) or 0.0

    async def main() -> None:
        hub = Hub(metrics=registry, mailbox_events=10)
        first = await hub.publish("orders", Event.json({"n": 0}))
        await hub.publish("orders", Event.json({"n": 1}))
        async with hub.subscribe("orders", last_event_id=first) as subscription:
            await take(subscription, 2)  # the id, then one replayed
            assert value("ssesup_hub_subscribers") == 1
            await hub.publish("orders", Event.json({"n": 2}))
            await take(subscription, 1)
        async with hub.subscribe("orders", last_event_id="nonsense") as subscription:
            await take(subscription, 1)
        slow = hub.subscribe("orders")
        await take(slow, 1)
        for n in range(20):
            await hub.publish("orders", Event.json({"n": n}))
        await anyio.sleep(0.01)
        assert registry.get_sample_value("ssesup_hub_mailbox_events") == 0  # the slow one's was freed
        with pytest.raises(StreamEnding, match="overflowed") as ended:
            await take(slow, 1)
        assert ended.value.trigger is Trigger.SLOW_CONSUMER

    anyio.run(main)
    assert value("ssesup_hub_published_total", channel="") == 23
    assert value("ssesup_hub_replayed_total", channel="") == 1
    assert value("ssesup_hub_delivered_total", channel="") >= 1
    assert value("ssesup_hub_gaps_total", reason="malformed") == 1
    assert value("ssesup_hub_slow_consumer_closes_total") == 1
    assert value("ssesup_hub_subscribers") == 0
    assert value("ssesup_hub_backend_seconds_count", operation="append") == 23


def test_a_subscriptions_start_and_end_move_the_gauges_children_kept_from_the_start(monkeypatch):
    """Every join and leave moves ``ssesup_hub_subscribers`` and the presence gauges: the labelled
    children are made once, with the hub's counters, not looked up (a lock and a key) on each change."""
    from prometheus_client import CollectorRegistry

    from ssesup.hub.metrics import HubCounters, hub_metrics

    registry = CollectorRegistry()
    metrics = hub_metrics(registry)
    counters = HubCounters(metrics, "memory", by_channel=False)

    def looked_up(*labels: str) -> None:
        raise AssertionError(f"labels{labels} looked up on a join or leave")

    for gauge in (metrics.subscribers, metrics.presence_users, metrics.presence_streams, metrics.slow_consumers):
        monkeypatch.setattr(gauge, "labels", looked_up)
    counters.subscribers(1)
    counters.presence(2, 1)
    counters.presence(-1, 1)
    counters.slow_consumer()

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, {"backend": "memory"})

    assert value("ssesup_hub_subscribers") == 1
    assert (value("ssesup_hub_presence_users"), value("ssesup_hub_presence_streams")) == (1, 2)
    assert value("ssesup_hub_slow_consumer_closes_total") == 1
