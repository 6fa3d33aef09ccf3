"""What a stream has encoded and not yet handed to the server: its outbox.

Owns: the queued chunks, their byte and ping counts, the high-water mark, taking everything queued as
one body chunk, slicing a chunk larger than the mark, and the producer's wait for room (back-pressure).
Does not own: sending (the actor's sender), deciding who sends (the producer sends what arrived alone
itself), or the wake-up primitive (the loop's, handed in).

Memory per stream stays bounded with events of any size: the producer stops pulling once
:data:`HIGH_WATER` bytes are queued; it gets room again when the sender takes a chunk of at most the
mark (it fills the next one while this one goes out), else once that chunk is out, so a large event in
flight holds the producer and the next one is not pulled and encoded beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ssesup._loop import wait, wake

HIGH_WATER = 64 * 1024
"""Bytes queued at which the producer stops pulling; also the size of the slices a larger chunk goes
out in, each under the send deadline."""


class Outbox:
    """One stream's queued bytes. The producer's per-event path appends to ``chunks`` and adds to
    ``size`` itself (one method call less per event of a burst); everything else goes through the
    methods."""

    __slots__ = ("chunks", "pings", "room", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.pings = 0
        self.room: Any = None
        """The producer's wait for room, while it waits."""

    def put(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)

    def put_ping(self, chunk: bytes) -> None:
        self.put(chunk)
        self.pings += 1

    @property
    def full(self) -> bool:
        return self.size >= HIGH_WATER

    def take(self) -> tuple[bytes, int, int]:
        """Everything queued as one chunk, with its count of events and pings; the outbox emptied. A
        producer waiting for room is woken now when the chunk is at most the high-water mark."""
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        events, pings = len(chunks) - self.pings, self.pings
        chunks.clear()
        self.size = self.pings = 0
        if self.room is not None and len(body) <= HIGH_WATER:
            self.wake_producer()
        return body, events, pings

    def sent(self) -> None:
        """The chunk taken last is out: a producer still waiting (the chunk was larger than the mark)
        gets room, unless the outbox filled up again meanwhile."""
        if self.room is not None and self.size < HIGH_WATER:
            self.wake_producer()

    async def wait_for_room(self, wakeup: Callable[[], Any]) -> None:
        self.room = room = wakeup()
        await wait(room)

    def wake_producer(self) -> None:
        wake(self.room)
        self.room = None


def slices(body: bytes) -> Iterator[bytes]:
    """``body`` in pieces of at most :data:`HIGH_WATER` bytes."""
    view = memoryview(body)
    for start in range(0, len(body), HIGH_WATER):
        yield bytes(view[start : start + HIGH_WATER])
