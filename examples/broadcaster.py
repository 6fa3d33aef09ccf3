"""The broadcasting examples' hub, shared by broadcasting_compat.py and broadcasting_native.py: a bounded
queue per client. Nothing here is about SSE; only what the two examples send differs."""

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    text: str
    event: str | None = None


class Broadcaster:
    """A queue per client; a client whose queue is full is dropped (its stream ends, it reconnects)."""

    def __init__(self, max_queue_size: int = 100) -> None:
        self.max_queue_size = max_queue_size
        self.clients: set[asyncio.Queue[Message | None]] = set()

    def subscribe(self) -> asyncio.Queue[Message | None]:
        queue: asyncio.Queue[Message | None] = asyncio.Queue(self.max_queue_size)
        self.clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Message | None]) -> None:
        self.clients.discard(queue)

    def broadcast(self, message: Message) -> None:
        for queue in list(self.clients):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                self.unsubscribe(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)  # the end of that client's stream
