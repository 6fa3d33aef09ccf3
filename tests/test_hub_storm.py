"""A join storm on Redis: what follows every drain (thousands of clients come back within the ``retry:``
window, each resuming after its ``Last-Event-ID``). 2,000 streams join one uvicorn at once over 20
channels while 100 events a second are published through it: every publish succeeds, every stream gets
its channel's events after its id exactly once, and the process never holds more Redis connections than
its bound (``redis_connections`` and the loop's reader). Before, redis-py's pool raised
``MaxConnectionsError`` past 100 connections and publishes failed."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import redis

from procs import free_port, serve, uvicorn_argv
from ssesup.hub.redis import CONNECTIONS
from ssesup.testing import EventStreamParser

STREAMS = 2000
CHANNELS = 20
BEFORE = 30  # events per channel published before the storm (the ids the streams resume after)
RATE = 100  # events a second, published while the streams join
LIVE = 300  # events published during the storm


class ConnectionsSeen:
    """Polls Redis's count of connected clients, less its own, every few milliseconds: the peak."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.baseline = self._count()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _count(self) -> int:
        return int(self.client.info("clients")["connected_clients"])

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._count() - self.baseline)
            time.sleep(0.002)

    def __enter__(self) -> ConnectionsSeen:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def test_2000_streams_joining_at_once_while_publishing_each_get_their_events_once_within_the_connection_bound(
    redis_url, tmp_path
):
    port = free_port()
    argv = uvicorn_argv("apps.hub_app:app", port, "--log-level", "warning")
    with ConnectionsSeen(redis_url) as seen, serve(argv, port, tmp_path, env={"SSESUP_HUB_URL": redis_url}) as server:
        asyncio.run(storm(server.url))
        assert "MaxConnectionsError" not in server.log()
    assert 0 < seen.peak <= CONNECTIONS + 1, seen.peak  # the pool's bound and the loop's reader


async def storm(url: str) -> None:
    limits = httpx.Limits(max_connections=STREAMS + 50, max_keepalive_connections=50)
    timeout = httpx.Timeout(30, read=60)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        # Numbers are global: channel c gets n where n % CHANNELS == c.
        ids: dict[int, str] = {}
        for n in range(BEFORE * CHANNELS):
            response = await client.post("/publish", params={"channel": f"ch{n % CHANNELS}", "start": n})
            ids[n] = response.json()["ids"][0]
        last = BEFORE * CHANNELS + LIVE - 1
        streams = []
        for index in range(STREAMS):
            channel = index % CHANNELS
            resume_after = channel + CHANNELS * (index // CHANNELS % BEFORE)  # one of its channel's ids
            expected = list(range(resume_after + CHANNELS, last + 1, CHANNELS))
            streams.append((channel, ids[resume_after], expected))

        published: list[int] = []

        async def publish() -> None:
            next_at = time.monotonic()
            for n in range(BEFORE * CHANNELS, last + 1):
                response = await client.post("/publish", params={"channel": f"ch{n % CHANNELS}", "start": n})
                assert response.status_code == 200, response.text  # every publish succeeds
                published.append(n)
                next_at += 1 / RATE
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        async def read(channel: int, last_event_id: str, expected: list[int]) -> list[int]:
            got: list[int] = []
            parser = EventStreamParser()
            headers = {"Last-Event-ID": last_event_id}
            async with client.stream(
                "GET", "/events", params={"channels": f"ch{channel}"}, headers=headers
            ) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_raw():
                    for event in parser.feed(chunk):
                        assert event.event == "number", event  # no gap
                        got.append(event.json()["n"])
                    if len(got) >= len(expected):
                        return got
            return got

        publishing = asyncio.create_task(publish())
        results = await asyncio.wait_for(asyncio.gather(*(read(*stream) for stream in streams)), 120)
        await publishing
    assert published == list(range(BEFORE * CHANNELS, last + 1))
    for (channel, _, expected), got in zip(streams, results, strict=True):
        assert got == expected, f"ch{channel}: {len(got)} of {len(expected)}"  # each once, in order
