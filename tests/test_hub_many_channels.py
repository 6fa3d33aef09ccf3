"""A process that follows many channels (streams of up to 16 channels each): what the loop's reader looks
at per publish is what changed, not every channel the loop follows. Before, every read of the reader
covered every followed channel (Redis: an XREAD of 16,000 keys per event; memory: a look at 16,000
cursors), so 1,000 idle streams of 16 channels made 500 publishes take 40 s on Redis. Counted here as
the cursors the reader reads (no timing: the figures are in ``python -m bench --scenarios hub``)."""

from __future__ import annotations

import asyncio

import pytest

from ssesup import Event, Hub

STREAMS = 250
CHANNELS = 16  # the most a stream may follow
EVENTS = 200


class Looked(dict):
    """The loop's cursors, counting each cursor the reader reads (by key, or while iterating)."""

    looks = 0

    def __getitem__(self, key):
        Looked.looks += 1
        return super().__getitem__(key)

    def get(self, key, default=None):
        Looked.looks += 1
        return super().get(key, default)

    def __contains__(self, key):
        Looked.looks += 1
        return super().__contains__(key)

    def __iter__(self):
        for key in super().__iter__():
            Looked.looks += 1
            yield key

    def keys(self):
        return list(self.__iter__())

    def items(self):
        return [(key, super(Looked, self).__getitem__(key)) for key in self.__iter__()]


@pytest.fixture(params=["memory", "redis"])
def engine(request):
    return None if request.param == "memory" else request.getfixturevalue("redis_url")


def test_a_publish_costs_the_reader_what_it_delivers_not_every_channel_the_loop_follows(engine):
    async def main() -> tuple[int, int]:
        hub = Hub(engine, metrics=False)
        streams = []
        for stream in range(STREAMS):
            items = hub.subscribe(*(f"s{stream}.c{channel}" for channel in range(CHANNELS))).encoded()
            await anext(items)
            streams.append(items)
        received = 0
        done = asyncio.Event()

        async def take(items) -> None:
            nonlocal received
            async for _ in items:
                received += 1
                if received == EVENTS:
                    done.set()

        tasks = [asyncio.create_task(take(items)) for items in streams]
        await hub.publish("s0.c0", Event("first"))  # the reader has read every channel once
        while received < 1:
            await asyncio.sleep(0.01)
        received = 0
        loop_hub = hub.loop_hub()
        loop_hub.cursors = Looked(loop_hub.cursors)
        Looked.looks = 0
        for n in range(EVENTS):
            await hub.publish(f"s{n % STREAMS}.c{n % CHANNELS}", Event(str(n)))
            await asyncio.sleep(0.001)  # the reader runs between publishes, as in an app
        await asyncio.wait_for(done.wait(), 60)
        looks = Looked.looks
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await hub.aclose()
        return looks, received

    looks, received = asyncio.run(main())
    assert received == EVENTS
    # A few looks per event delivered (its channel's cursor), where each read looked at all 4,000.
    assert looks <= 10 * EVENTS, f"{looks} cursors read for {EVENTS} events ({STREAMS * CHANNELS} followed)"
