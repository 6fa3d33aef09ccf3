"""What a stream does when a send fails or stalls, and how its generator is stopped then or by a drain.
In process, with an ASGI ``send`` and ``receive`` of the test's own: each case is about what the stream
asks of its generator and what it raises to the server, which a real server makes hard to time."""

from __future__ import annotations

import math

import anyio
import pytest
import structlog.testing

from ssesup import Event, SupervisedStream, Supervisor
from ssesup.stream import SendTimeoutError

GET = {"type": "http", "method": "GET", "headers": []}
HEAD = {"type": "http", "method": "HEAD", "headers": []}


async def never_disconnects() -> dict:
    await anyio.sleep_forever()
    raise AssertionError  # pragma: no cover


@pytest.mark.parametrize("failing", ["http.response.start", "http.response.body"])
@pytest.mark.parametrize("error", [RuntimeError("the server refused it"), OSError("connection lost")])
def test_with_raise_errors_the_error_a_send_raised_reaches_the_server_and_no_background_runs(failing, error):
    ran: list[str] = []

    async def main() -> None:
        async def gen():
            yield Event("one")
            await anyio.sleep_forever()

        async def send(message: dict) -> None:
            if message["type"] == failing:
                raise error

        for scope in (GET, HEAD):
            stream = SupervisedStream(
                gen(), raise_errors=True, background=_Background(ran), supervisor=Supervisor(ping=0)
            )
            with anyio.fail_after(5), pytest.raises(type(error)) as raised:
                await stream(scope, never_disconnects, send)
            assert raised.value is error

    anyio.run(main)
    assert ran == []


@pytest.mark.parametrize("raise_errors", [False, True])
def test_a_send_that_fails_after_the_generator_finished_ends_the_stream(monkeypatch, raise_errors):
    """The generator finished while its events waited for the sender, whose send then failed: the
    stream ends there (it used to wait for a disconnect), raising the error only with ``raise_errors``."""
    monkeypatch.setattr("ssesup.delivery.QUIET_FOR_DIRECT_SEND", math.inf)  # every event is queued for the sender
    sent: list[str] = []
    refused = RuntimeError("the server refused it")

    async def main() -> None:
        async def gen():
            yield Event("one")
            yield Event("two")

        async def send(message: dict) -> None:
            if b"two" in message.get("body", b""):
                raise refused
            sent.append(message["type"])

        stream = SupervisedStream(gen(), raise_errors=raise_errors, supervisor=Supervisor(ping=0))
        with anyio.fail_after(5):
            if raise_errors:
                with pytest.raises(RuntimeError) as raised:
                    await stream(GET, never_disconnects, send)
                assert raised.value is refused
            else:
                await stream(GET, never_disconnects, send)
        assert stream.close_reason.value == "completed"

    anyio.run(main)
    assert sent == ["http.response.start"]  # neither the events nor the end of the body went out


def test_a_send_that_failed_asks_the_generator_for_no_further_event(monkeypatch):
    """The producer's own send of an event failed: the stream has ended, and the generator, stopped at
    its ``yield``, is closed there rather than run on to its next event."""
    monkeypatch.setattr("ssesup.delivery.QUIET_FOR_DIRECT_SEND", -1.0)  # every event is sent by the producer itself
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


@pytest.mark.parametrize("scope", [GET, HEAD], ids=["GET", "HEAD"])
def test_with_raise_errors_an_end_of_body_that_misses_the_send_deadline_raises_send_timeout_error(scope):
    """The end of the body (after the generator finished, or at once for HEAD) goes out under the send
    deadline like every send: missed, it is a send timeout."""
    ran: list[str] = []

    async def main() -> None:
        async def gen():
            yield Event("one")

        async def send(message: dict) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await anyio.sleep_forever()

        stream = SupervisedStream(
            gen(), send_timeout=0.2, raise_errors=True, background=_Background(ran), supervisor=Supervisor(ping=0)
        )
        with anyio.fail_after(5), pytest.raises(SendTimeoutError):
            await stream(scope, never_disconnects, send)
        assert stream.close_reason.value == "completed"

    anyio.run(main)
    assert ran == []


def test_a_drains_close_cancels_the_generator_where_it_waits_not_after_the_farewell():
    """The producer takes nothing more once a drain closed its stream: the generator is cancelled in the
    ``await`` it is in at that moment. (Cancelled after the farewell went out instead, a generator that
    got past its ``await`` meanwhile was closed at its next ``yield``: no cancellation, an event lost.)"""
    seen: list[str] = []

    async def main() -> None:
        supervisor = Supervisor(ping=0)

        async def gen():
            try:
                while True:
                    yield Event("tick")
                    await anyio.sleep(0.01)
            except anyio.get_cancelled_exc_class():
                seen.append("cancelled")
                raise
            except GeneratorExit:
                seen.append("closed at a yield")
                raise

        async def send(message: dict) -> None:
            if b"retry: " in message.get("body", b""):
                seen.append("farewell")
                await anyio.sleep(0.2)  # a slow farewell: the generator would get past its sleep

        stream = SupervisedStream(gen(), drain_grace=0, supervisor=supervisor)
        async with anyio.create_task_group() as group:
            group.start_soon(stream, GET, never_disconnects, send)
            await anyio.sleep(0.1)
            supervisor.begin_drain()
        assert stream.close_reason.value == "drained"

    anyio.run(main)
    assert seen in (["cancelled", "farewell"], ["farewell", "cancelled"])


def test_a_cleanup_cut_at_the_close_grace_is_logged_also_when_the_generator_swallowed_the_cut(monkeypatch):
    """The generator, stopped at its ``yield`` while its event was being sent, is closed within the close
    grace; its cleanup outlasts it and swallows the cut: it was cut all the same, and that is logged."""
    # The producer sends: the generator waits at its yield.
    monkeypatch.setattr("ssesup.delivery.QUIET_FOR_DIRECT_SEND", -1.0)
    seen: list[str] = []

    async def main() -> None:
        async def gen():
            try:
                yield Event("one")
            finally:
                try:
                    await anyio.sleep(3)
                except anyio.get_cancelled_exc_class():
                    seen.append("swallowed the cut")

        sending = anyio.Event()

        async def send(message: dict) -> None:
            if message["type"] == "http.response.body":
                sending.set()
                await anyio.sleep_forever()  # the client stopped reading

        async def receive() -> dict:
            await sending.wait()
            return {"type": "http.disconnect"}

        stream = SupervisedStream(gen(), close_grace=0.05, supervisor=Supervisor(ping=0))
        with anyio.fail_after(5), structlog.testing.capture_logs() as logs:
            await stream(GET, receive, send)
        seen.extend(entry["event"] for entry in logs if entry["event"] == "stream.cleanup_cut")

    anyio.run(main)
    assert seen == ["swallowed the cut", "stream.cleanup_cut"]


class _Background:
    """A background task that notes it ran."""

    def __init__(self, ran: list[str]) -> None:
        self.ran = ran

    async def __call__(self) -> None:
        self.ran.append("background")
