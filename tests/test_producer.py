"""The producer's choice of who sends an event (white-box, in process: the rule is about tasks, not
sockets; what reaches a real client is tested in test_stream.py)."""

from __future__ import annotations

import anyio
import pytest

from ssesup import Event, SupervisedStream, Supervisor
from ssesup.delivery import Delivery


@pytest.mark.parametrize("use_uvloop", [False, True])
def test_an_event_that_arrived_alone_is_sent_by_the_producer_even_after_a_burst(monkeypatch, use_uvloop):
    """Which task sends is decided per event: a stream that began with a burst (queued, sent by the
    sender task) sends later events that arrive alone without a hand-off, also on uvloop, whose loop
    clock moves in whole milliseconds. (White-box: the sender task is started per hand-off.)"""
    spawned: list[int] = []
    original = Delivery.start_sender

    def counting(self: Delivery) -> None:
        if not self.sender_running:
            spawned.append(self.stream.events_sent)
        original(self)

    monkeypatch.setattr(Delivery, "start_sender", counting)
    sent: list[bytes] = []

    async def main() -> None:
        async def gen():
            for i in range(3):
                yield Event(f"burst {i}")
            for i in range(10):
                await anyio.sleep(0.003)
                yield Event(f"alone {i}")

        async def send(message: dict) -> None:
            if message.get("body"):
                sent.append(message["body"])

        async def receive() -> dict:
            await anyio.sleep_forever()
            return {}

        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("127.0.0.1", 1)}
        supervisor = Supervisor(metrics=False, drain_on_signals=False)
        await SupervisedStream(gen(), ping=0, send_timeout=0, supervisor=supervisor)(scope, receive, send)

    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": use_uvloop})
    assert b"".join(sent).count(b"data: ") == 13
    # The burst went through the sender; after it, only the end of the body does.
    assert len(spawned) == 2, spawned
    assert spawned[-1] == 13
