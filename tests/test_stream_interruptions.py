"""What a stream does when a send fails or stalls, and how its generator is stopped then or by a drain.
In process, with an ASGI ``send`` and ``receive`` of the test's own: each case is about what the stream
asks of its generator and what it raises to the server, which a real server makes hard to time."""

from __future__ import annotations

import math

import anyio

from ssesup import Event, SupervisedStream, Supervisor

GET = {"type": "http", "method": "GET", "headers": []}


async def never_disconnects() -> dict:
    await anyio.sleep_forever()
    raise AssertionError  # pragma: no cover


def test_a_send_that_fails_after_the_generator_finished_ends_the_stream(monkeypatch):
    """The generator finished while its events waited for the sender, whose send then failed: the
    stream ends there (it used to wait for a disconnect)."""
    monkeypatch.setattr("ssesup.stream.ARRIVED_ALONE", math.inf)  # every event is queued for the sender
    sent: list[str] = []

    async def main() -> None:
        async def gen():
            yield Event("one")
            yield Event("two")

        async def send(message: dict) -> None:
            if b"two" in message.get("body", b""):
                raise RuntimeError("the server refused it")
            sent.append(message["type"])

        stream = SupervisedStream(gen(), supervisor=Supervisor(ping=0))
        with anyio.fail_after(5):
            await stream(GET, never_disconnects, send)
        assert stream.close_reason.value == "completed"

    anyio.run(main)
    assert sent == ["http.response.start"]  # neither the events nor the end of the body went out


def test_a_send_that_failed_asks_the_generator_for_no_further_event(monkeypatch):
    """The producer's own send of an event failed: the stream has ended, and the generator, stopped at
    its ``yield``, is closed there rather than run on to its next event."""
    monkeypatch.setattr("ssesup.stream.ARRIVED_ALONE", -1.0)  # every event is sent by the producer itself
    steps: list[str] = []

    async def main() -> None:
        async def gen():
            try:
                yield Event("one")
                steps.append("asked for another event")
                yield Event("two")
            finally:
                steps.append("closed")

        async def send(message: dict) -> None:
            if message["type"] == "http.response.body":
                raise OSError("connection lost")

        stream = SupervisedStream(gen(), supervisor=Supervisor(ping=0))
        with anyio.fail_after(5):
            await stream(GET, never_disconnects, send)
        assert stream.close_reason.value == "client_disconnect"

    anyio.run(main)
    assert steps == ["closed"]
