"""How one stream's events reach the server: the producer, the sender, one ASGI send at a time.

Owns: pulling the generator and encoding what it yields (the *producer*), sending an event that arrived
alone from the producer itself and queueing the others in the stream's :class:`~ssesup.outbox.Outbox`
for the *sender*, a task started only while bytes are queued that sends them joined; each send under
the send deadline (its start stamped for the timer), a chunk over the high-water mark in slices, and
the end of the body once the stream is closed. Does not own: what a trigger does (the actor's table),
the deadline's check (the actor's timer callback), or counting and failing sends (the actor's
``_count`` and ``_send_refused``, which the compat layer shares).

Coalescing is the speed: events the generator makes while a send is in flight, or in a burst that never
waits, go out joined in one send; an event that arrives alone goes out at once, from the producer.

On asyncio the sender is a task of the stream's own, as the producer is, not a child of its task group:
started through anyio's task group it cost a third of an idle ping's instructions (anyio's spawn, its
task state, its cancel scope's bookkeeping), and an idle stream's only sends are its pings, each one a
sender. The stream cancels it with its ending (:meth:`Delivery.cancel`, where it cancels its task group)
and waits for it at its end (:meth:`Delivery.stop_sender`); a deadline of the task group reaches it there.
On trio the sender stays in the task group.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from starlette.types import Message, Send

from ssesup import logs
from ssesup._loop import wait, wake
from ssesup.errors import EventTooLarge, StreamEnding
from ssesup.events import encode_item
from ssesup.outbox import HIGH_WATER, Outbox, slices
from ssesup.states import Trigger
from ssesup.states.machine import CLOSED

if TYPE_CHECKING:
    from ssesup.settings import StreamSettings
    from ssesup.stream import Item, SupervisedStream

log = structlog.get_logger("ssesup")

# An event made after this many seconds in which nothing was queued or sent goes out from the producer
# itself; others are queued for the sender, which joins what is queued into one send. Either way the
# event goes out at once; this only decides which task sends it.
QUIET_FOR_DIRECT_SEND = 100e-6
# Not the loop's clock for that: uvloop's is libuv's cached millisecond time, under which every gap
# shorter than a millisecond looks like none, and a lone event would wait for a hand-off.
_clock = time.perf_counter

END_OF_BODY: Message = {"type": "http.response.body", "body": b"", "more_body": False}

# How long a stream's end waits for its cancelled sender (asyncio) to end: a send cancelled returns at
# once, unless the server's send holds on to it (then the sender is left to end by itself).
SENDER_STOP_WAIT = 0.5


class Delivery:
    """One stream's sending state. Made with the stream; ``send`` and ``task_group`` are set when its
    response starts, the clock and wake-ups when it is admitted to its loop."""

    __slots__ = (
        "body_ended",
        "clock",
        "last_activity",
        "outbox",
        "quiet_since",
        "send",
        "send_started",
        "sender",
        "sender_running",
        "sender_wake",
        "stream",
        "task_group",
        "wakeup",
    )

    def __init__(self, stream: SupervisedStream) -> None:
        self.stream = stream
        self.outbox = Outbox()
        self.send: Send | None = None
        self.task_group: Any = None
        self.clock: Callable[[], float] = anyio.current_time  # the loop's, once admitted
        self.wakeup: Callable[[], Any] = anyio.Event
        self.send_started: float | None = None  # when the send in flight began (the timer's deadline)
        self.last_activity = 0.0  # when the last send began (the timer's ping)
        self.quiet_since = 0.0  # when the last send (the headers' at first) ended: see produce
        self.sender_running = False
        self.sender: asyncio.Task[None] | None = None  # asyncio: the sender task, the stream's own
        self.sender_wake: Any = None
        self.body_ended = False

    # -- the producer -----------------------------------------------------------------------------------

    async def produce(self, iterator: AsyncIterator[Item], settings: StreamSettings) -> None:
        """Pull, encode, queue (or send what arrived alone). Once the stream is closed it takes nothing
        more from the generator; the generator itself is stopped by the stream's end."""
        stream = self.stream
        machine = stream._machine
        send = self.send
        assert send is not None
        sep = settings.sep
        max_size = settings.max_event_size
        outbox = self.outbox
        chunks = outbox.chunks
        try:
            async for item in iterator:
                if machine.state is CLOSED:
                    break
                chunk = encode_item(item, sep)
                if max_size is not None and len(chunk) > max_size:
                    raise EventTooLarge(f"an event of {len(chunk)} bytes exceeds max_event_size ({max_size} bytes)")
                if (
                    not chunks
                    and not self.sender_running
                    and _clock() - self.quiet_since > QUIET_FOR_DIRECT_SEND
                    and len(chunk) <= HIGH_WATER
                ):
                    # Nothing was queued or sent lately: send it from here, without a hand-off. Only who
                    # sends changes, never when. This is send_message without its coroutine: a lone
                    # event's latency is mostly what is touched before its bytes leave.
                    self.send_started = self.last_activity = self.clock()
                    try:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    except Exception as exc:
                        stream._send_refused(exc)
                        break  # the stream has ended: no further event is asked of the generator
                    else:
                        stream._count(1, 0, len(chunk))
                    finally:
                        self.send_ended()
                else:
                    chunks.append(chunk)  # Outbox.put, written out: once per event of a burst
                    outbox.size += len(chunk)
                    if not self.sender_running:
                        self.start_sender()
                    if outbox.size >= HIGH_WATER:
                        # Nothing more is pulled until there is room: back-pressure reaches the generator.
                        # The item and its bytes are the outbox's now (one copy of a large event, not two).
                        del item, chunk
                        await outbox.wait_for_room(self.wakeup)
        except StreamEnding as ending:
            stream._fire(ending.trigger)
        except Exception as exc:
            if machine.state is not CLOSED:  # a generator cut short by its stream's end is no failure
                logs.exception("stream.generator_failed", stream_id=stream.stream_id, route=stream.route)
                stream._keep_error(exc)
            stream._fire(Trigger.ERROR)
        except asyncio.CancelledError:
            if not stream._stopping:
                raise
            if (task := asyncio.current_task()) is not None:
                task.uncancel()  # the stream stopped its own producer: an ordinary end
        else:
            stream._fire(Trigger.EXHAUSTED)

    # -- the sender -------------------------------------------------------------------------------------

    def start_sender(self) -> None:
        """Start the sender unless it runs (the producer sends lone events itself; bursts, pings,
        farewells and the end of the body go through the sender): on asyncio a task of the stream's
        own, on trio a task of its task group."""
        if not self.sender_running and self.task_group is not None:
            self.sender_running = True
            live = self.stream._live
            create_task = None if live is None else live.loop.create_task
            if create_task is not None:
                self.sender = create_task(self.send_queued())
            else:
                self.task_group.start_soon(self.send_queued)

    def cancel(self) -> None:
        """Nothing more is sent: the stream's task group is cancelled (its listener, on trio its
        sender and producer), and on asyncio the sender task (unless it is the caller: it returns)."""
        scope = self.stream._cancel_scope
        if scope is not None:
            scope.cancel()
        sender = self.sender
        if sender is not None and not sender.done() and sender is not asyncio.current_task():
            sender.cancel()

    async def stop_sender(self) -> None:
        """At the stream's end (its task group has exited: nothing more is started), on asyncio: the
        sender, if it still runs (its send outlived the task group's deadline, or the stream was
        cancelled from outside), is cancelled and waited for, shielded, within the farewell budget."""
        sender, self.sender = self.sender, None
        if sender is None or sender.done():
            return
        sender.cancel()
        with anyio.move_on_after(SENDER_STOP_WAIT, shield=True):
            await asyncio.wait((sender,))

    async def send_queued(self) -> None:
        """The sender, started when bytes are queued: sends what is queued, joined, until nothing is
        left, then ends (or, once the stream is closed, ends the body and the stream's task group)."""
        outbox = self.outbox
        stream = self.stream
        try:
            while True:
                # One send at a time: while the producer sends an event that arrived alone, wait for it.
                if self.send_started is None:
                    if outbox.chunks:
                        sent = await self.send_body(*outbox.take())
                        outbox.sent()
                        if not sent:
                            # The stream has ended (also when it had already, say completed, before this
                            # send failed): nothing more is written, nothing waits for the body's end.
                            stream._cancel_task_group()
                            return
                        continue
                    if stream._machine.closed:
                        # An error to raise to the server leaves the body unended, as an error does.
                        if not stream._raising() and await self.send_message(END_OF_BODY):
                            self.body_ended = True
                        stream._cancel_task_group()
                    return
                self.sender_wake = sender_wake = self.wakeup()
                await wait(sender_wake)
        except Exception as exc:
            if self.sender is None:
                raise  # trio: the task group raises it to the server
            # asyncio: nobody awaits this task to hear of it. The stream ends (error), nothing more is
            # written, its connection is released.
            log.exception("stream.sender_failed", stream_id=stream.stream_id, route=stream.route)
            stream._keep_error(exc)
            stream._fire(Trigger.ERROR)
            stream._cancel_task_group()
        finally:
            self.sender_running = False

    # -- one send ---------------------------------------------------------------------------------------

    async def send_body(self, body: bytes, events: int, pings: int) -> bool:
        """Send ``body`` (holding ``events`` events and ``pings`` pings), in slices of the high-water mark
        when larger: the server never buffers more than a slice (memory stays bounded), each slice under
        the send deadline. Counted once all of it is out."""
        if len(body) > HIGH_WATER:
            for piece in slices(body):
                if not await self.send_message({"type": "http.response.body", "body": piece, "more_body": True}):
                    return False
        elif not await self.send_message({"type": "http.response.body", "body": body, "more_body": True}):
            return False
        self.stream._count(events, pings, len(body))
        return True

    async def send_message(self, message: Message) -> bool:
        """One ASGI send under the send deadline; ``False`` when it failed (the stream has ended)."""
        send = self.send
        assert send is not None
        self.send_started = self.last_activity = self.clock()
        try:
            await send(message)
        except Exception as exc:
            self.stream._send_refused(exc)
            return False
        finally:
            self.send_ended()
        return True

    def send_ended(self) -> None:
        self.send_started = None
        self.quiet_since = _clock()
        if self.sender_wake is not None and (self.outbox.chunks or self.stream._machine.state is CLOSED):
            wake(self.sender_wake)  # a sender that waited for this send to finish
            self.sender_wake = None

    async def flush_and_end(self) -> bool:
        """What is queued, then the end of the body (the caller bounds the time); True when it ended."""
        outbox = self.outbox
        flushed = not outbox.chunks or await self.send_body(*outbox.take())
        self.body_ended = flushed and await self.send_message(END_OF_BODY)
        return self.body_ended
