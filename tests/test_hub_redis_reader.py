"""The Redis engine's reader takes small events from the log of changes itself (one round trip per wake-up
of the loop's reader, not two): what it delivers must be exactly what a read of the channel gives, with
names, ids, comments, retry hints and multi-line data; events too big to be carried are read from their
channel; and a channel whose carried entries do not follow its cursor is read, never given a false gap.
Against a real redis-server; the publisher is another Hub (another process's clients)."""

from __future__ import annotations

import json

import anyio
import redis

from ssesup import Event, Hub
from ssesup.hub.redis import CARRIED_MAX, RedisBackend


def counting_channel_reads(hub: Hub) -> list[int]:
    """Count the channels the hub's reader reads from their streams (not from the log)."""
    backend = hub.backend
    assert isinstance(backend, RedisBackend)
    read = backend._read_channels
    counted = [0]

    async def counting(clients, cursors, channels):
        counted[0] += len(channels)
        return await read(clients, cursors, channels)

    backend._read_channels = counting  # type: ignore[method-assign]
    return counted


def test_small_events_come_from_the_log_and_big_ones_from_their_channel_each_exactly_as_published(redis_url):
    async def main() -> None:
        hub = Hub(redis_url, metrics=False)
        publisher = Hub(redis_url, metrics=False)
        async with hub.subscribe("orders", "news") as subscription:
            await subscription.__anext__()  # the position it starts from
            for channel in ("orders", "news"):  # (a channel's first entry follows no entry: read)
                await publisher.publish(channel, Event("warm-up"))
                assert (await subscription.__anext__()).data == "warm-up"
            reads = counting_channel_reads(hub)
            sent = []
            for n in range(200):
                channel = ("orders", "news")[n % 2]
                event = Event.json({"n": n}, event="order" if channel == "orders" else "headline")
                if n % 7 == 0:
                    event = Event(f"line one {n}\nline two\r\nline three", event="multi", retry=1500)
                if n % 11 == 0:
                    event = Event(comment=f"note {n}")
                sent.append((await publisher.publish(channel, event), event))
            got = [await subscription.__anext__() for _ in sent]
            assert [(e.event, e.data, e.comment, e.retry) for e in got] == [
                (ev.event, ev.data, ev.comment, ev.retry) for _, ev in sent
            ]
            assert len({e.id for e in got}) == len(sent)  # (ids of two channels' positions)
            assert reads[0] == 0, f"{reads[0]} channel reads for events the log carried"

            big = "x" * (CARRIED_MAX + 1)
            for _ in range(3):
                await publisher.publish("orders", Event(big, event="big"))
            await publisher.publish("orders", Event.json({"after": "big"}))
            got = [await subscription.__anext__() for _ in range(4)]
            assert [e.data for e in got[:3]] == [big] * 3 and json.loads(got[3].data) == {"after": "big"}
            assert reads[0] >= 1  # the big ones were read from their channel
        await hub.aclose()
        await publisher.aclose()

    anyio.run(main)


def test_carried_entries_after_a_hole_make_the_reader_read_the_channel_not_report_a_gap(redis_url):
    """An entry the log did not carry to this reader (as when a join raced the reader: the log named the
    channel before the loop followed it), written here straight into the channel's stream: the next
    carried entry does not follow the reader's cursor, so the channel is read and every event arrives
    once, in order, with no gap."""

    async def main() -> None:
        hub = Hub(redis_url, metrics=False)
        publisher = Hub(redis_url, metrics=False)
        raw = redis.asyncio.Redis.from_url(redis_url)
        async with hub.subscribe("orders") as subscription:
            await subscription.__anext__()
            await publisher.publish("orders", Event("zero"))
            assert (await subscription.__anext__()).data == "zero"
            key = "ssesup:ch:orders"
            ((before, _),) = await raw.xrevrange(key, "+", "-", count=1)
            await raw.xadd(key, {"p": before, "d": "one"})  # in the channel, not in the log
            for n in ("two", "three"):
                await publisher.publish("orders", Event(n))
            got = [await subscription.__anext__() for _ in range(3)]
            assert [(e.event, e.data) for e in got] == [(None, "one"), (None, "two"), (None, "three")]
        await raw.aclose()
        await hub.aclose()
        await publisher.aclose()

    anyio.run(main)
