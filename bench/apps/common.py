"""What every bench app shares: payloads, the fan-out broadcaster, the file limit, ``/stats``."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

SIZE = int(os.environ.get("BENCH_SIZE", "100"))
TICK = float(os.environ.get("BENCH_TICK", "0.2"))


def raise_nofile() -> None:
    """Allow as many open sockets as the hard limit does (thousands of idle streams)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def loop_stats(timers: int | None = None) -> dict:
    """What ``/stats`` answers (the churn scenario): the loop's asyncio tasks, and the library's pending
    timers where it has any (``None`` else)."""
    return {"tasks": len(asyncio.all_tasks()), "timers": timers}


async def stats(request: Request) -> JSONResponse:
    """``/stats`` of the apps that have no timers of their own."""
    return JSONResponse(loop_stats())


def filler(size: int) -> str:
    return "x" * size


def tick(seq: int, text: str) -> dict:
    """The JSON data of a realistic event: a small object that changes with every event."""
    return {"seq": seq, "user": "u42", "text": text}


def timed(seq: int, size: int) -> str:
    """A data line of ``size`` characters starting with the send time and a sequence number."""
    head = f"{time.time():.6f} {seq} "
    return head + "x" * max(0, size - len(head))


def frame(data: str) -> bytes:
    """A pre-encoded SSE frame (the floor's wire format; CRLF like ssesup and sse-starlette)."""
    return f"data: {data}\r\n\r\n".encode()


class Broadcaster:
    """Ticks every ``TICK`` seconds and puts one item (made once per tick) on every subscriber's queue.

    ``make`` turns the tick's payload string into what the queues carry: the floor pre-encodes a frame
    once per tick, the libraries pass the string and build their event per stream.
    """

    def __init__(self, make: Callable[[str], Any] = str, interval: float = TICK, size: int = SIZE) -> None:
        self.make = make
        self.interval = interval
        self.size = size
        self.subscribers: set[asyncio.Queue] = set()
        self.seq = 0
        self._task: asyncio.Task | None = None

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self.subscribers.add(queue)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self.subscribers.discard(queue)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while self.subscribers:  # ends with the last subscriber; the next one starts it again
            deadline += self.interval
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            self.seq += 1
            item = self.make(timed(self.seq, self.size))
            for queue in tuple(self.subscribers):
                queue.put_nowait(item)
        self._task = None


raise_nofile()
