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


def _scope() -> dict:
    return {"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("127.0.0.1", 1)}


async def _receive() -> dict:
    await anyio.sleep_forever()
    return {}


def test_a_ping_stuck_in_its_send_ends_the_stream_with_send_timeout_and_leaves_no_task():
    """On asyncio the sender (a ping's here) is a task of the stream's own, not of its task group: the
    send deadline still ends a ping that never completes, and the stream's end leaves no task behind."""
    import asyncio

    left: list[asyncio.Task] = []
    streams: list[SupervisedStream] = []

    async def main() -> None:
        async def gen():
            await anyio.sleep_forever()
            yield Event("never")

        async def send(message: dict) -> None:
            if message.get("body", b"").startswith(b": ping"):
                await anyio.sleep_forever()  # a client that stopped reading

        supervisor = Supervisor(metrics=False, drain_on_signals=False)
        stream = SupervisedStream(gen(), ping=0.05, send_timeout=0.2, supervisor=supervisor)
        streams.append(stream)
        with anyio.fail_after(5):
            await stream(_scope(), _receive, send)
        await asyncio.sleep(0)
        left.extend(task for task in asyncio.all_tasks() if task is not asyncio.current_task())

    anyio.run(main, backend="asyncio")
    assert streams[0].close_reason is not None and streams[0].close_reason.value == "send_timeout"
    assert left == []


def test_a_sender_that_fails_in_ssesup_ends_its_stream_with_error(monkeypatch):
    """A failure of the sender task itself (not of a send: a bug) is logged and ends the stream with
    ``error``; nothing hangs on a task nobody awaits."""
    from ssesup.outbox import Outbox

    def broken(self: Outbox) -> tuple[bytes, int, int]:
        raise RuntimeError("broken outbox")

    monkeypatch.setattr(Outbox, "take", broken)
    streams: list[SupervisedStream] = []

    async def main() -> None:
        async def gen():
            await anyio.sleep_forever()
            yield Event("never")

        async def send(message: dict) -> None:
            pass

        supervisor = Supervisor(metrics=False, drain_on_signals=False)
        stream = SupervisedStream(gen(), ping=0.05, send_timeout=1, supervisor=supervisor)
        streams.append(stream)
        with anyio.fail_after(5):
            await stream(_scope(), _receive, send)

    anyio.run(main, backend="asyncio")
    assert streams[0].close_reason is not None and streams[0].close_reason.value == "error"
