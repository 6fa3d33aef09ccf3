"""The actor: one :class:`SupervisedStream` per connection.

Owns: the ASGI ``send``/``receive`` of one response, pulling its generator, encoding what it yields,
and feeding triggers to its :class:`~ssesup.states.StreamMachine`. Does not own: decisions about state
(it asks the machine), timers (it hands one callback to the supervisor's timer service), logging or
metrics (the supervisor observes every transition).

Three roles run under one task group, like Starlette's ``StreamingResponse``:

* the *listener* (the request's own task) waits on ``receive()``, so a disconnect is seen while the
  generator is waiting;
* the *producer* pulls the generator and encodes each item; an event that arrived alone it sends
  itself, events made back to back it queues;
* the *sender*, a task started only when bytes are queued (a burst, a ping, a farewell, the end of the
  body), sends everything queued as one body chunk and ends when the queue is empty.

An idle stream therefore costs two tasks, as a bare ``StreamingResponse`` does.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import anyio
import anyio.lowlevel
import structlog
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ssesup import checks
from ssesup._loop import abandon_task, wait, wake
from ssesup.connection import find_connection, supervised_send
from ssesup.edge import ServerConnection
from ssesup.events import EncodedEvent, Event, check_separator, encode_item
from ssesup.limits import Refusal
from ssesup.logs import escape
from ssesup.states import CloseReason, State, StreamMachine, Trigger
from ssesup.states.machine import CLOSED
from ssesup.supervisor import LoopSupervision, Supervisor, supervisor_for
from ssesup.sync_source import SyncSource
from ssesup.timers import Timer

log = structlog.get_logger("ssesup")

Item = Event | str | bytes | memoryview | Mapping[str, Any]
Content = AsyncIterable[Item] | Iterable[Item]

# The producer stops pulling once this many bytes wait for the sender: memory per stream stays bounded
# however slow the client, and a burst is sent in chunks of about this size.
HIGH_WATER = 64 * 1024
# An event made when nothing has been queued or sent for longer than this "arrived alone": the producer
# sends it itself. Others are queued for the sender, which joins what is queued into one send. Either
# way the event goes out at once; this only decides which task sends it.
ARRIVED_ALONE = 100e-6
# Not the loop's clock for that: uvloop's is libuv's cached millisecond time, under which every gap
# shorter than a millisecond looks like none, and a lone event would wait for a hand-off.
_clock = time.perf_counter
# How long a drained or force-closed stream may take to send its farewell and end its body, so that a
# process exits within its drain grace plus a second even when a client has stopped reading.
FAREWELL_BUDGET = 0.5
# How long a generator whose cleanup was cut (cancelled past its close grace) may take to end before
# it is left behind.
CUT_WAIT = 0.1

_current: contextvars.ContextVar[SupervisedStream] = contextvars.ContextVar("ssesup.current_stream")


def current_stream() -> SupervisedStream:
    """The stream whose generator is running: generators use it to see a drain coming.

    Raises ``LookupError`` outside a SupervisedStream's generator.
    """
    return _current.get()


_END_OF_BODY: Message = {"type": "http.response.body", "body": b"", "more_body": False}
# Added unless the response sets them; one pair shared by every stream (thousands may be open).
_DEFAULT_HEADERS = ((b"cache-control", b"no-store"), (b"x-accel-buffering", b"no"))
_ids = itertools.count(1)


async def _not_started_yet() -> AsyncIterator[Item]:
    return
    yield


_NOT_STARTED: AsyncIterator[Item] = _not_started_yet()

# The client closed the connection itself: there is nothing to release.
_GONE = frozenset({CloseReason.CLIENT_DISCONNECT})
# Endings after which nothing more can or should be written to the client.
_ABANDON = frozenset({Trigger.CLIENT_DISCONNECT, Trigger.SEND_TIMEOUT, Trigger.DEAD_PEER, Trigger.SEND_FAILED})
# Reasons that are the supervisor's doing: the client gets a farewell (reconnect hint) before the end.
_FAREWELL = frozenset({CloseReason.DRAINED, CloseReason.SHUTDOWN})


class SupervisedStream(Response):
    """A ``text/event-stream`` response whose connection is supervised.

    ``content`` is an async iterable (or a sync iterable, run in a worker thread) yielding
    :class:`Event`, ``str`` (sent as data), ``bytes``/``memoryview`` (sent as is) or a ``dict`` of
    event fields. ``ping``, ``send_timeout``, ``sep``, ``ping_factory``, ``dead_peer_timeout``,
    ``close_grace`` and ``max_event_size`` override the supervisor's settings for this stream.

    Hooks of this stream alone: ``on_close(stream)`` (sync or async) is called once after the stream
    closed, before its generator is closed; ``companion()`` is a task started with the stream and
    cancelled when it ends (if it raises, the stream ends with ``error``); ``drain_event`` (an
    ``anyio.Event`` or anything with ``set()``) is set when the stream starts draining, and with
    ``drain_grace`` the stream closes that many seconds after its drain began rather than in its
    wave; ``raise_errors`` makes a generator's, companion's, close callback's or send's error (and a
    send timeout, as :class:`SendTimeoutError`) propagate to the server after what was queued was sent,
    with no clean end of body.
    """

    media_type = "text/event-stream"
    # Slots, not a dict, for the actor's own state: thousands of idle streams each carry it.
    __slots__ = (
        "_body_ended",
        "_cancel_scope",
        "_clock",
        "_close_grace",
        "_connection",
        "_dead_peer_timeout",
        "_drain_waiter",
        "_draining",
        "_hooks",
        "_id",
        "_iterator",
        "_last_activity",
        "_live",
        "_machine",
        "_max_event_size",
        "_peer",
        "_ping",
        "_ping_factory",
        "_producer",
        "_producer_space",
        "_queue",
        "_queued_bytes",
        "_queued_pings",
        "_quiet_since",
        "_reported",
        "_response_started",
        "_send_started",
        "_send_timeout",
        "_sender_running",
        "_sender_wake",
        "_sep",
        "_stalled_since",
        "_stopping",
        "_supervisor",
        "_sync_iterator",
        "_task_group",
        "_timer",
        "_transport_send",
        "_unreported",
        "_wakeup",
        "bytes_sent",
        "ended_at",
        "events_sent",
        "pings_sent",
        "route",
        "started_at",
    )

    def __init__(
        self,
        content: Content,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
        *,
        ping: float | None = None,
        send_timeout: float | None = None,
        sep: str | None = None,
        ping_factory: Callable[[], Event | EncodedEvent] | None = None,
        dead_peer_timeout: float | None = None,
        close_grace: float | None = None,
        max_event_size: int | None = None,
        on_close: Callable[[SupervisedStream], Awaitable[None] | None] | None = None,
        companion: Callable[[], Awaitable[None]] | None = None,
        drain_event: Any = None,
        drain_grace: float | None = None,
        raise_errors: bool = False,
        supervisor: Supervisor | None = None,
    ) -> None:
        if isinstance(content, AsyncIterable):
            self._iterator: AsyncIterator[Item] = aiter(content)
            self._sync_iterator: Iterator[Item] | None = None
        elif isinstance(content, Iterable) and not isinstance(content, (str, bytes, Mapping)):
            self._sync_iterator = iter(content)
            self._iterator = _NOT_STARTED  # a SyncSource on the stream's loop, made when it starts
        else:
            raise TypeError(
                f"SupervisedStream content must be an async or sync iterable of events, not {type(content).__name__}"
            )
        self.status_code = status_code
        if media_type is not None:
            self.media_type = media_type
        self.background = background
        self.init_headers(headers)
        present = {name for name, _ in self.raw_headers}
        for header in _DEFAULT_HEADERS:
            if header[0] not in present:
                self.raw_headers.append(header)
        self._ping = checks.optional_seconds("ping", ping)
        self._send_timeout = checks.optional_seconds("send_timeout", send_timeout)
        self._sep = None if sep is None else check_separator(sep)
        self._ping_factory = checks.optional_callable("ping_factory", ping_factory, "ping_factory() -> Event")
        self._dead_peer_timeout = checks.optional_seconds("dead_peer_timeout", dead_peer_timeout)
        self._close_grace = checks.optional_seconds("close_grace", close_grace)
        self._max_event_size = checks.size("max_event_size", max_event_size)
        self._hooks = (
            _Hooks(on_close, companion, drain_event, drain_grace, raise_errors)
            if on_close is not None
            or companion is not None
            or drain_event is not None
            or drain_grace is not None
            or raise_errors
            else None
        )
        self._supervisor = checks.optional_instance("supervisor", supervisor, Supervisor)
        self._machine = StreamMachine()
        self._draining = False
        self._drain_waiter: anyio.Event | None = None
        self._id = 0
        self.route = ""
        self._peer: tuple[str, int] | None = None
        self.started_at = 0.0
        self.ended_at: float | None = None
        self._clock: Callable[[], float] = anyio.current_time
        self._wakeup: Callable[[], Any] = anyio.Event
        self.events_sent = 0
        self.pings_sent = 0
        self.bytes_sent = 0
        self._reported = (0, 0, 0)  # events, pings, bytes the observers have heard of
        self._unreported = False
        self._live: LoopSupervision | None = None
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        self._queued_pings = 0
        self._quiet_since = 0.0  # when the last send (the headers' at first) ended: see _produce
        self._sender_wake: Any = None
        self._sender_running = False
        self._task_group: Any = None
        self._transport_send: Send | None = None
        self._producer_space: Any = None
        self._send_started: float | None = None
        self._last_activity = 0.0
        self._timer: Timer | None = None
        self._cancel_scope: anyio.CancelScope | None = None
        self._producer: asyncio.Task[None] | None = None
        self._stopping = False
        self._response_started = False
        self._body_ended = False
        self._connection: ServerConnection | None = None
        self._stalled_since: float | None = None

    # -- what observers and generators can read ------------------------------------------------------

    @property
    def stream_id(self) -> str:
        """This process's id of the stream (hexadecimal), set when its response starts ("" before)."""
        return f"{self._id:x}" if self._id else ""

    @property
    def client(self) -> str:
        """The peer address as the server saw it (``host:port``), or "" when the server gave none."""
        peer = self._peer
        return f"{peer[0]}:{peer[1]}" if peer else ""

    @property
    def state(self) -> State:
        return self._machine.state

    @property
    def close_reason(self) -> CloseReason | None:
        return self._machine.close_reason

    @property
    def draining(self) -> bool:
        """True once the supervisor has started draining this stream (state DRAINING or later)."""
        return self._draining

    async def wait_draining(self) -> None:
        """Return when the supervisor starts draining this stream (at once if it already has)."""
        if self._draining:
            return
        if self._drain_waiter is None:
            self._drain_waiter = anyio.Event()
        await self._drain_waiter.wait()

    def trigger(self, trigger: Trigger) -> None:
        """Feed ``trigger`` to this stream's machine (the supervisor's way of asking it to drain or close)."""
        self._fire(trigger)

    def take_unreported(self) -> tuple[int, int, int] | None:
        """Events, pings and bytes sent since the last call (``None`` if none): the supervisor
        reports them to the observers."""
        self._unreported = False
        sent = (self.events_sent, self.pings_sent, self.bytes_sent)
        if sent == self._reported:
            return None
        (events, pings, nbytes), self._reported = self._reported, sent
        return sent[0] - events, sent[1] - pings, sent[2] - nbytes

    @property
    def duration(self) -> float:
        """Seconds from registration to close (or until now, while open)."""
        end = self.ended_at if self.ended_at is not None else self._clock()
        return end - self.started_at

    # -- the ASGI application ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            send = _websocket_denial(send)
        supervisor = self._supervisor or supervisor_for(scope)
        self._supervisor = supervisor
        live = supervisor.live  # looked up once: it costs a backend lookup per call
        refusal = supervisor.drain_refusal if live.draining else None
        if refusal is None and live.admission is not None:
            refusal = live.admission.admit(self, scope)
        if refusal is not None:
            await self._refuse(supervisor, send, refusal)
            return
        try:
            self._settle(supervisor, scope)
            if self._sync_iterator is not None:
                self._iterator = SyncSource(self._sync_iterator, live.sync_limiter, live.loop)
            self._live = live
            supervisor.register(self, live)
            self._clock = live.loop.clock
            self._wakeup = live.loop.wakeup
            now = self.started_at = self._last_activity = self._clock()
            if self._ping or self._send_timeout or self._dead_peer_timeout:
                self._timer = live.timers.schedule(self._next_check(now), self._on_timer)
        except BaseException:
            supervisor.unregister(self, live)  # admitted (and maybe registered): counted no longer
            raise
        token = _current.set(self)  # the tasks below inherit it: current_stream() in the generator
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                self._cancel_scope = task_group.cancel_scope
                # The edge's send where the server needs one (HTTP/2, granian, daphne, trio), else the server's.
                self._transport_send = send = supervised_send(scope, send, self.trigger)
                start = {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
                if await self._send_headers(send, start):
                    self._response_started = True
                    self._fire(Trigger.FIRST_SEND)
                    if scope.get("method") == "HEAD":
                        self._fire(Trigger.EXHAUSTED)  # headers only: the generator is never started
                    else:
                        if self._hooks is not None and self._hooks.companion is not None:
                            task_group.start_soon(self._run_companion, self._hooks.companion)
                        if live.loop.create_task is not None:
                            # asyncio: the producer is a task of the stream's own, outside the task group,
                            # so that stopping it is one cancellation and its generator can await cleanup.
                            self._producer = live.loop.create_task(self._produce(send))
                        else:
                            task_group.start_soon(self._produce, send)
                    # The request's own task listens until the client leaves or the body has ended.
                    await self._listen(receive)
        finally:
            _current.reset(token)
            self._task_group = None  # closed: nothing more can be started in it
            # Cancelled from outside (the server is shutting down): the stream still ends in CLOSED.
            self._fire(Trigger.FORCE_CLOSE)
            if self._timer is not None:
                self._timer.cancel()
            cancel_scope = self._cancel_scope
            if (
                self._response_started
                and not self._body_ended
                and self.close_reason not in _FAREWELL
                and cancel_scope is not None
                and self._clock() >= cancel_scope.deadline
            ):
                # What was queued when the stream ended missed the send deadline it was flushed under (_fire).
                self._keep_error(SendTimeoutError(f"a send took longer than send_timeout ({self._send_timeout} s)"))
            hooks = self._hooks
            raised = hooks is not None and hooks.error is not None
            if (
                self._response_started
                and not self._body_ended
                and self.close_reason not in _GONE
                and not raised
                and not await self._last_words()
            ):
                self._release()  # bytes left unsent: free the connection now, not when its peer reads
                with anyio.CancelScope(shield=True):
                    await anyio.lowlevel.checkpoint()  # the server hears of the abort before the app returns
            if hooks is not None and hooks.on_close is not None:
                await self._call_on_close(hooks.on_close)
            await self._stop_generator()
            supervisor.unregister(self, live)
        if self._hooks is not None and self._hooks.error is not None:
            raise self._hooks.error
        if self.background is not None:
            await self.background()

    async def _refuse(self, supervisor: Supervisor, send: Send, refusal: Refusal) -> None:
        """A new stream refused (during a drain, or over a cap): the refusal's status with Retry-After;
        it is never registered."""
        supervisor.notify("rejected", refusal.reason)
        headers = [
            (b"retry-after", str(refusal.retry_after).encode()),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(refusal.body)).encode()),
        ]
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": refusal.body})

    def _settle(self, supervisor: Supervisor, scope: Scope) -> None:
        """Fix this stream's settings and identity at the start of the response."""
        self._id = next(_ids)
        route = scope.get("route")
        self.route = getattr(route, "path", "") or ""
        self._peer = scope.get("client")
        if self._ping is None:
            self._ping = supervisor.ping
        if self._send_timeout is None:
            self._send_timeout = supervisor.send_timeout
        if self._sep is None:
            self._sep = supervisor.sep
        if self._ping_factory is None:
            self._ping_factory = supervisor.ping_factory
        if self._dead_peer_timeout is None:
            self._dead_peer_timeout = supervisor.dead_peer_timeout
        if self._close_grace is None:
            self._close_grace = supervisor.close_grace
        if self._max_event_size is None:
            self._max_event_size = supervisor.max_event_size

    # -- the three roles -----------------------------------------------------------------------------

    async def _produce(self, send: Send) -> None:
        """Pull, encode, queue (or send what arrived alone). Once the stream is closed it takes nothing
        more from the generator; the generator itself is cancelled with the task group when the sender
        has ended the body."""
        machine = self._machine
        sep = self._sep
        assert sep is not None
        queue = self._queue
        max_size = self._max_event_size
        try:
            async for item in self._iterator:
                if machine.state is CLOSED:
                    break
                chunk = encode_item(item, sep)
                if max_size is not None and len(chunk) > max_size:
                    raise EventTooLarge(f"an event of {len(chunk)} bytes exceeds max_event_size ({max_size} bytes)")
                if (
                    not queue
                    and not self._sender_running
                    and _clock() - self._quiet_since > ARRIVED_ALONE
                    and len(chunk) <= HIGH_WATER
                ):
                    # Nothing was queued or sent in the last ARRIVED_ALONE: send it from here, without a
                    # hand-off. Only who sends changes, never when. This is _send without its coroutine:
                    # a lone event's latency is mostly what is touched before its bytes leave.
                    self._send_started = self._last_activity = self._clock()
                    try:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    except Exception as exc:
                        self._send_refused(exc)
                        break  # the stream has ended: no further event is asked of the generator
                    else:
                        self._count(1, 0, len(chunk))
                    finally:
                        self._send_ended()
                else:
                    queue.append(chunk)
                    self._queued_bytes += len(chunk)
                    if not self._sender_running:
                        self._start_sender()
                    if self._queued_bytes >= HIGH_WATER:
                        # Nothing more is pulled until there is room: back-pressure reaches the generator.
                        # The item and its bytes are the queue's now (one copy of a large event, not two).
                        del item, chunk
                        self._producer_space = space = self._wakeup()
                        await wait(space)
        except StreamEnding as ending:
            self._fire(ending.trigger)
        except Exception as exc:
            if machine.state is not CLOSED:  # a generator cut short by its stream's end is no failure
                log.exception("stream.generator_failed", stream_id=self.stream_id, route=self.route)
                self._keep_error(exc)
            self._fire(Trigger.ERROR)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            if (task := asyncio.current_task()) is not None:
                task.uncancel()  # the stream stopped its own producer: an ordinary end
        else:
            self._fire(Trigger.EXHAUSTED)

    async def _send_queued(self, send: Send) -> None:
        """The sender, started when bytes are queued: sends what is queued, joined, until nothing is
        left, then ends (or, once the stream is closed, ends the body and the stream's task group)."""
        try:
            while True:
                queue = self._queue
                # One send at a time: while the producer sends an event that arrived alone, wait for it.
                if self._send_started is None:
                    if queue:
                        sent = await self._send(send, *self._take_queue())
                        if self._producer_space is not None and self._queued_bytes < HIGH_WATER:
                            self._wake_producer()  # a chunk over the high-water mark: room once it is out
                        if not sent:
                            # The stream has ended (also when it had already, say completed, before this
                            # send failed): nothing more is written, nothing waits for the body's end.
                            if self._cancel_scope is not None:  # set before any sender starts
                                self._cancel_scope.cancel()
                            return
                        continue
                    if self._machine.closed:
                        # An error to raise to the server leaves the body unended, as an error does.
                        if (self._hooks is None or self._hooks.error is None) and await self._send(send, _END_OF_BODY):
                            self._body_ended = True
                        if self._cancel_scope is not None:  # set before any sender starts
                            self._cancel_scope.cancel()
                        return
                    return
                self._sender_wake = sender_wake = self._wakeup()
                await wait(sender_wake)
        finally:
            self._sender_running = False

    def _take_queue(self) -> tuple[Message, int, int]:
        """Everything queued as one body chunk, with its count of events and pings; the queue emptied.

        A producer that waits for room is woken now when the chunk is at most the high-water mark (it
        fills the next one while this one is sent), else only once the chunk is out (the sender wakes
        it): a large event in flight holds the producer, so the next one is not pulled and encoded
        beside it, and memory per stream is one event plus the high-water mark."""
        queue = self._queue
        body = queue[0] if len(queue) == 1 else b"".join(queue)
        events, pings = len(queue) - self._queued_pings, self._queued_pings
        queue.clear()
        self._queued_bytes = self._queued_pings = 0
        if self._producer_space is not None and len(body) <= HIGH_WATER:
            self._wake_producer()
        return {"type": "http.response.body", "body": body, "more_body": True}, events, pings

    def _wake_producer(self) -> None:
        wake(self._producer_space)
        self._producer_space = None

    def _start_sender(self) -> None:
        """Start the sender unless it runs (the producer sends lone events itself; bursts, pings,
        farewells and the end of the body go through the sender)."""
        if not self._sender_running and self._task_group is not None:
            self._sender_running = True
            self._task_group.start_soon(self._send_queued, self._transport_send)

    async def _listen(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] in ("http.disconnect", "websocket.disconnect"):
                self._fire(Trigger.CLIENT_DISCONNECT)
                return

    # -- helpers of the roles ------------------------------------------------------------------------

    async def _send_headers(self, send: Send, start: Message) -> bool:
        """Send the response's start (status and headers), under the send deadline; ``False`` when the
        client is gone. Once per stream (``ssesup.compat`` sends a GET's headers as sse-starlette does)."""
        return await self._send(send, start)

    async def _send(self, send: Send, message: Message, events: int = 0, pings: int = 0) -> bool:
        """Send under the send deadline; ``False`` when the client is gone. A body chunk holding
        ``events`` events and ``pings`` pings is counted; the observers hear of it from the
        supervisor within a second (not once per send)."""
        body = message.get("body")
        if body is not None and len(body) > HIGH_WATER:
            return await self._send_slices(send, body, events, pings)
        self._send_started = self._last_activity = self._clock()
        try:
            await send(message)
        except Exception as exc:
            self._send_refused(exc)
            return False
        finally:
            self._send_ended()
        if events or pings:
            self._count(events, pings, len(message["body"]))
        return True

    def _send_refused(self, error: Exception) -> None:
        """A send raised: the client is gone (``OSError``), or the server refused what was sent. With
        ``raise_errors`` the error is raised to the server once the stream has ended."""
        self._keep_error(error)
        if isinstance(error, OSError):
            self._fire(Trigger.CLIENT_DISCONNECT)
            return
        # Not the client's doing: the server refused what was sent (an invalid header, say).
        log.error("stream.send_failed", stream_id=self.stream_id, route=self.route, exc_info=error)
        self._fire(Trigger.SEND_FAILED)

    def _send_ended(self) -> None:
        self._send_started = None
        self._quiet_since = _clock()
        if self._sender_wake is not None and (self._queue or self._machine.state is CLOSED):
            self._wake_sender()  # a sender that waited for this send to finish

    def _count(self, events: int, pings: int, size: int) -> None:
        """Count a sent chunk; the observers hear of it from the supervisor within a second."""
        self.events_sent += events
        self.pings_sent += pings
        self.bytes_sent += size
        if not self._unreported:
            self._unreported = True
            if self._supervisor is not None and self._live is not None:  # both set before any send
                self._supervisor.sent_later(self, self._live)

    async def _send_slices(self, send: Send, body: bytes, events: int, pings: int) -> bool:
        """A chunk larger than the high-water mark goes out in slices of that size, each under the
        send deadline: the server never buffers more than a slice of it (memory stays bounded)."""
        view = memoryview(body)
        for start in range(0, len(body), HIGH_WATER):
            piece = {"type": "http.response.body", "body": bytes(view[start : start + HIGH_WATER]), "more_body": True}
            if not await self._send(send, piece):
                return False
        if events or pings:
            self._count(events, pings, len(body))
        return True

    def _wake_sender(self) -> None:
        if self._sender_wake is not None:
            wake(self._sender_wake)
            self._sender_wake = None

    def _fire(self, trigger: Trigger) -> None:
        """Feed ``trigger`` to the machine and act on its answer.

        The first ending wins: once CLOSED, later endings (a disconnect seen after the generator
        finished, say) are not transitions, so they are dropped here rather than raised by the table.
        """
        machine = self._machine
        if machine.closed:
            return
        transition = machine.fire(trigger)
        supervisor = self._supervisor
        assert supervisor is not None
        supervisor.notify("transitioned", self, transition)
        if transition.to_state is State.DRAINING:
            if not self._draining:
                self._draining = True
                if self._drain_waiter is not None:
                    self._drain_waiter.set()
                if self._hooks is not None:
                    self._drain_hooks(self._hooks)
            return
        if transition.to_state is not State.CLOSED:
            return
        now = self.ended_at = self._clock()
        reason = transition.close_reason
        scope = self._cancel_scope
        if transition.trigger is Trigger.SEND_TIMEOUT:
            self._keep_error(SendTimeoutError(f"a send took longer than send_timeout ({self._send_timeout} s)"))
        if transition.trigger in _ABANDON:
            if scope is not None:
                scope.cancel()
            return
        if reason in _FAREWELL:
            farewell = supervisor.farewell_bytes(self, self._sep or "\r\n")  # never raises: see there
            self._queue.append(farewell)
            self._queued_bytes += len(farewell)
            if scope is not None:
                scope.deadline = now + FAREWELL_BUDGET
            producer = self._producer
            if (
                producer is not None
                and self._send_started is None
                and not producer.done()
                and producer is not asyncio.current_task()
            ):
                # The producer takes nothing more: its generator is cancelled where it waits now, not after
                # the farewell (it would otherwise be closed at its next yield, that event dropped). A send
                # in flight is never interrupted for it: then the generator is stopped with the task group.
                self._stopping = True
                producer.cancel()
        elif scope is not None and self._send_timeout:
            scope.deadline = now + self._send_timeout  # what is queued is flushed under the send deadline
        self._start_sender()

    # -- the stream's own hooks -----------------------------------------------------------------------

    @property
    def drain_grace(self) -> float | None:
        """This stream's own time from the start of its drain to its close (``None``: its wave's)."""
        return None if self._hooks is None else self._hooks.drain_grace

    def _keep_error(self, error: BaseException) -> None:
        """With ``raise_errors``, the first error is raised to the server once the stream has ended."""
        hooks = self._hooks
        if hooks is not None and hooks.raise_errors and hooks.error is None:
            hooks.error = error

    def _drain_hooks(self, hooks: _Hooks) -> None:
        if hooks.drain_event is not None:
            hooks.drain_event.set()
        if hooks.drain_grace is not None and self._live is not None:

            def close(now: float) -> None:
                self._fire(Trigger.DRAIN_CLOSE)

            self._live.timers.schedule(self._clock() + hooks.drain_grace, close)

    async def _run_companion(self, companion: Callable[[], Awaitable[None]]) -> None:
        """The companion task: runs beside the generator until the stream ends (the task group's end
        cancels it); its failure ends the stream with ``error``."""
        try:
            await companion()
        except Exception as exc:
            log.exception("stream.companion_failed", stream_id=self.stream_id, route=self.route)
            self._keep_error(exc)
            self._fire(Trigger.ERROR)

    async def _call_on_close(self, on_close: Callable[[SupervisedStream], Awaitable[None] | None]) -> None:
        """Call ``on_close(stream)`` once, shielded, within the close grace; a failure is logged (and
        raised with ``raise_errors``)."""
        with anyio.move_on_after(self._close_grace or 0.0, shield=True):
            try:
                result = on_close(self)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.exception("stream.on_close_failed", stream_id=self.stream_id, route=self.route)
                self._keep_error(exc)

    def _next_check(self, now: float) -> float:
        """When the timer should look at this stream again: the next ping, or the next send check."""
        deadline = math.inf
        ping = self._ping or 0.0  # settled to a number when the stream started
        if ping:
            deadline = self._last_activity + ping
        timeout = self._send_timeout
        if timeout:
            started = self._send_started
            if started is not None:
                deadline = min(deadline, started + timeout)
            elif not 0 < ping <= timeout:
                # No ping check comes before a new send's deadline: look every quarter of the timeout
                # (a send is then caught within 1.25x the timeout). With a ping check at least that
                # often, the check that finds a send in flight schedules its exact deadline.
                deadline = min(deadline, now + timeout / 4)
        dead_peer = self._dead_peer_timeout
        if dead_peer:
            stalled = self._stalled_since
            deadline = min(deadline, now + dead_peer / 2 if stalled is None else stalled + dead_peer)
        return deadline

    def _on_timer(self, now: float) -> float | None:
        """The timer service's callback: ping an idle stream, end a stalled send. No I/O here."""
        if self._machine.closed:
            return None
        started = self._send_started
        if started is not None and self._send_timeout and now - started >= self._send_timeout:
            self._fire(Trigger.SEND_TIMEOUT)
            return None
        if self._dead_peer_timeout and self._peer_is_dead(now):
            self._fire(Trigger.DEAD_PEER)
            return None
        if self._ping and now - self._last_activity >= self._ping:
            # Due: ping if idle; a stream with a send in flight or bytes queued is not idle.
            if started is None and not self._queue:
                chunk = self._ping_bytes()
                self._queue.append(chunk)
                self._queued_bytes += len(chunk)
                self._queued_pings += 1
                self._start_sender()
            self._last_activity = now
        return self._next_check(now)

    def _peer_is_dead(self, now: float) -> bool:
        """Whether the kernel has been retransmitting unacknowledged bytes for the dead-peer timeout:
        the first check that finds them marks the start, a check that finds none clears it."""
        connection = self._server_connection()
        if connection is None:
            if self._transport_send is not None:
                self._dead_peer_timeout = 0.0  # not a server whose connection ssesup can read
            return False
        if not connection.unacknowledged():
            self._stalled_since = None
            return False
        if self._stalled_since is None:
            self._stalled_since = now
        return now - self._stalled_since >= (self._dead_peer_timeout or 0.0)

    async def _last_words(self) -> bool:
        """The farewell and the end of the body, sent here when the stream was cancelled from outside
        before its sender sent them (a server's forced exit cancels every task, maybe the moment after a
        second signal made the supervisor close every stream). Only for an ending that gets a farewell,
        with no send waiting and a peer that keeps up (see ``Connection.keeps_up``); shielded, within
        ``FAREWELL_BUDGET``. True when the body was ended; otherwise the connection is released."""
        send = self._transport_send
        if send is None or self.close_reason not in _FAREWELL or self._send_started is not None:
            return False
        connection = self._server_connection()
        if connection is None or not connection.keeps_up():
            return False
        with anyio.move_on_after(FAREWELL_BUDGET, shield=True):
            flushed = not self._queue or await self._send(send, *self._take_queue())
            self._body_ended = flushed and await self._send(send, _END_OF_BODY)
        return self._body_ended

    def _server_connection(self) -> ServerConnection | None:
        """The server's connection behind this stream's ``send``, looked up once it is needed."""
        if self._connection is None and self._transport_send is not None:
            self._connection = find_connection(self._transport_send)
        return self._connection

    def _release(self) -> None:
        """Close the connection now (reset), discarding what is unsent: see ``ssesup.connection``."""
        connection = self._server_connection()
        if connection is not None:
            try:
                connection.release(peer_dead=self.close_reason is CloseReason.DEAD_PEER)
            except Exception:
                log.exception("stream.release_failed", stream_id=self.stream_id, route=self.route)

    def _ping_bytes(self) -> bytes:
        """The ping: the factory's event, or a comment (also when the factory fails or returns no
        ``Event``: logged once per interval for the loop, with the count, not once per ping)."""
        sep = self._sep or "\r\n"
        if self._ping_factory is not None:
            try:
                event = self._ping_factory()
                if not isinstance(event, (Event, EncodedEvent)):  # EncodedEvent: ssesup.compat's pings
                    raise TypeError(f"ping_factory() must return an Event, not {type(event).__name__}")
                return event.encode(sep)
            except Exception as exc:
                if self._live is not None:
                    error = escape(f"{type(exc).__name__}: {exc}")[:200]
                    self._live.ping_failures.note("ping_factory", route=self.route, error=error)
        return b": ping" + sep.encode() * 2

    async def _stop_generator(self) -> None:
        """Stop the producer and close the generator so that its ``finally`` blocks run, within the
        close grace (the farewell budget after a force close); past it, the cleanup is cut and logged.

        On asyncio the producer is cancelled once, so a generator waiting inside an ``await`` can still
        await its cleanup; one that keeps running past the grace is abandoned (it no longer holds up
        its stream or the loop's shutdown). A failure in the cleanup is logged, never raised.
        """
        grace = FAREWELL_BUDGET if self.close_reason is CloseReason.SHUTDOWN else (self._close_grace or 0.0)
        deadline = self._clock() + grace
        producer = self._producer
        if producer is not None and not producer.done():
            if not self._stopping:  # cancelled once only: a drain's close may have cancelled it already
                self._stopping = True
                producer.cancel()
            with anyio.move_on_after(grace, shield=True):
                await asyncio.wait((producer,))
            if not producer.done():
                log.error("stream.cleanup_cut", stream_id=self.stream_id, route=self.route, close_grace_s=grace)
                producer.cancel()  # cut the cleanup; one that swallows this too is left behind
                with anyio.move_on_after(CUT_WAIT, shield=True):
                    await asyncio.wait((producer,))
                if not producer.done():
                    abandon_task(producer)
                return
        with anyio.move_on_after(max(0.0, deadline - self._clock()), shield=True) as scope:
            await self._close_iterator()
        if scope.cancel_called:  # cut, also when the generator swallowed the cancellation
            log.error("stream.cleanup_cut", stream_id=self.stream_id, route=self.route, close_grace_s=grace)

    async def _close_iterator(self) -> None:
        try:
            aclose = getattr(self._iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        except Exception:
            log.exception("stream.generator_close_failed", stream_id=self.stream_id, route=self.route)


def _websocket_denial(send: Send) -> Send:
    """``send`` for a response to a websocket scope: the stream is the handshake's denial response (the
    ASGI websocket denial extension), its messages sent as ``websocket.http.response.*``, as Starlette's
    ``Response`` sends its own (through a private method of its own, so ssesup does it here)."""

    async def denial(message: Message) -> None:
        kind = message["type"]
        if kind in ("http.response.start", "http.response.body"):
            message = {**message, "type": "websocket." + kind}
        await send(message)

    return denial


class _Hooks:
    """The hooks of one stream (one slot on the stream, ``None`` for most streams)."""

    __slots__ = ("companion", "drain_event", "drain_grace", "error", "on_close", "raise_errors")

    def __init__(
        self,
        on_close: Callable[[SupervisedStream], Awaitable[None] | None] | None,
        companion: Callable[[], Awaitable[None]] | None,
        drain_event: Any,
        drain_grace: float | None,
        raise_errors: bool,
    ) -> None:
        for name, hook in (("on_close", on_close), ("companion", companion)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable, not {type(hook).__name__}")
        if drain_event is not None and not callable(getattr(drain_event, "set", None)):
            raise TypeError(f"drain_event must have a set() method (an anyio.Event), not {type(drain_event).__name__}")
        self.on_close = on_close
        self.companion = companion
        self.drain_event = drain_event
        self.drain_grace = checks.optional_seconds("drain_grace", drain_grace)
        self.raise_errors = bool(raise_errors)
        self.error: BaseException | None = None


class SendTimeoutError(TimeoutError):
    """A send missed the stream's send deadline (raised to the server only with ``raise_errors``)."""


class StreamEnding(Exception):
    """Raised by a stream's content to end the stream with ``trigger`` instead of ``error``: what is
    queued is flushed and the body ended, as when the generator finishes (a hub subscription raises
    it with ``Trigger.SLOW_CONSUMER``)."""

    def __init__(self, trigger: Trigger, message: str = "") -> None:
        super().__init__(message or trigger.value)
        self.trigger = trigger


class EventTooLarge(ValueError):
    """An encoded event exceeds the stream's ``max_event_size``."""
