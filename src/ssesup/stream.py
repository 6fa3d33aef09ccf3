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
import itertools
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import structlog
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ssesup import logs
from ssesup.closing import close_generator
from ssesup.connection import find_connection, supervised_send
from ssesup.current import CURRENT, current_stream
from ssesup.deadlines import next_check
from ssesup.delivery import Delivery
from ssesup.edge import ServerConnection
from ssesup.errors import EventTooLarge, SendTimeoutError, StreamEnding
from ssesup.events import EncodedEvent, Event
from ssesup.hooks import StreamHooks, call_on_close, run_companion
from ssesup.identity import check_expires_at, check_user, user_of_scope
from ssesup.logs import escape
from ssesup.outbox import HIGH_WATER
from ssesup.settings import PingFactory, StreamSettings, stream_overrides
from ssesup.states import CloseReason, Ending, State, StreamMachine, Trigger
from ssesup.supervisor import LoopSupervision, Supervisor, supervisor_for
from ssesup.sync_source import SyncSource
from ssesup.timers import Timer

__all__ = [
    "HIGH_WATER",
    "EventTooLarge",
    "SendTimeoutError",
    "StreamEnding",
    "SupervisedStream",
    "current_stream",
]

log = structlog.get_logger("ssesup")

Item = Event | str | bytes | memoryview | Mapping[str, Any]
Content = AsyncIterable[Item] | Iterable[Item]

# How long a drained or force-closed stream may take to send its farewell and end its body, so that a
# process exits within its drain grace plus a second even when a client has stopped reading.
FAREWELL_BUDGET = 0.5

# Added unless the response sets them; one pair shared by every stream (thousands may be open).
_DEFAULT_HEADERS = ((b"cache-control", b"no-store"), (b"x-accel-buffering", b"no"))
_ids = itertools.count(1)
_NO_OVERRIDES: dict[str, Any] = {}  # shared, never written: override() makes a stream its own


async def _not_started_yet() -> AsyncIterator[Item]:
    return
    yield


_NOT_STARTED: AsyncIterator[Item] = _not_started_yet()


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

    Who it serves: ``user`` (a str, the user's id; by default the identity of the user Starlette's
    ``AuthenticationMiddleware`` authenticated, ``None`` for anonymous) and ``expires_at`` (when the
    credential that opened it expires: a UNIX time or an aware ``datetime``). At ``expires_at`` the
    stream ends with ``expired``: an ``expired`` event, a ``retry:`` hint and the end of the body, so
    that the client gets a fresh credential and reconnects. ``supervisor.disconnect(user)`` and
    ``hub.disconnect(user)`` end a user's streams with ``revoked``. See docs/auth.md.
    """

    media_type = "text/event-stream"
    # Slots, not a dict, for the actor's own state: thousands of idle streams each carry it.
    __slots__ = (
        "_cancel_scope",
        "_clock",
        "_connection",
        "_dead_peer_timeout",
        "_delivery",
        "_drain_waiter",
        "_draining",
        "_expires",
        "_expires_at",
        "_hooks",
        "_id",
        "_iterator",
        "_live",
        "_machine",
        "_overrides",
        "_peer",
        "_producer",
        "_reported",
        "_response_started",
        "_settings",
        "_stalled_since",
        "_stopping",
        "_supervisor",
        "_sync_iterator",
        "_timer",
        "_unreported",
        "_user",
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
        ping_factory: PingFactory | None = None,
        dead_peer_timeout: float | None = None,
        close_grace: float | None = None,
        max_event_size: int | None = None,
        on_close: Callable[[SupervisedStream], Awaitable[None] | None] | None = None,
        companion: Callable[[], Awaitable[None]] | None = None,
        drain_event: Any = None,
        drain_grace: float | None = None,
        raise_errors: bool = False,
        supervisor: Supervisor | None = None,
        user: str | None = None,
        expires_at: float | datetime | None = None,
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
        if (
            ping is None
            and send_timeout is None
            and sep is None
            and ping_factory is None
            and dead_peer_timeout is None
            and close_grace is None
            and max_event_size is None
        ):
            self._overrides: dict[str, Any] = _NO_OVERRIDES  # the common case: the supervisor's settings
        else:
            self._overrides = stream_overrides(
                {
                    "ping": ping,
                    "send_timeout": send_timeout,
                    "sep": sep,
                    "ping_factory": ping_factory,
                    "dead_peer_timeout": dead_peer_timeout,
                    "close_grace": close_grace,
                    "max_event_size": max_event_size,
                }
            )
        self._settings: StreamSettings | None = None  # the supervisor's, with the overrides, once started
        self._hooks = StreamHooks.of(on_close, companion, drain_event, drain_grace, raise_errors)
        if supervisor is not None and not isinstance(supervisor, Supervisor):
            raise TypeError(f"supervisor must be a Supervisor or None, not {supervisor!r}")
        self._supervisor = supervisor
        self._user = check_user(user)
        self._expires_at = check_expires_at(expires_at)
        self._expires: float | None = None  # the expiry in the loop's clock, once admitted
        self._machine = StreamMachine()
        self._draining = False
        self._drain_waiter: anyio.Event | None = None
        self._id = 0
        self.route = ""
        self._peer: tuple[str, int] | None = None
        self.started_at = 0.0
        self.ended_at: float | None = None
        self._clock: Callable[[], float] = anyio.current_time
        self.events_sent = 0
        self.pings_sent = 0
        self.bytes_sent = 0
        self._reported = (0, 0, 0)  # events, pings, bytes the observers have heard of
        self._unreported = False
        self._live: LoopSupervision | None = None
        self._delivery = Delivery(self)
        self._timer: Timer | None = None
        self._cancel_scope: anyio.CancelScope | None = None
        self._producer: asyncio.Task[None] | None = None
        self._stopping = False
        self._response_started = False
        self._connection: ServerConnection | None = None
        self._dead_peer_timeout = 0.0  # the settings' once started; 0 when the server's connection is unknown
        self._stalled_since: float | None = None

    def override(self, **settings: Any) -> None:
        """Change this stream's own settings (the names of its keyword arguments ``ping`` to
        ``max_event_size``) before it starts; checked as when given to the constructor."""
        self._overrides = {**self._overrides, **stream_overrides(settings)}

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
    def user(self) -> str | None:
        """The user this stream serves: given, or the authenticated user of its request (``None``:
        anonymous). Known once the stream starts when it comes from the request."""
        return self._user

    @property
    def expires_at(self) -> float | None:
        """When the credential that opened this stream expires (a UNIX time), or ``None``."""
        return self._expires_at

    @property
    def state(self) -> State:
        return self._machine.state

    @property
    def close_reason(self) -> CloseReason | None:
        return self._machine.close_reason

    @property
    def settings(self) -> StreamSettings | None:
        """The settings this stream runs with (its supervisor's with its own overrides), once started."""
        return self._settings

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

    @property
    def drain_grace(self) -> float | None:
        """This stream's own time from the start of its drain to its close (``None``: its wave's)."""
        return None if self._hooks is None else self._hooks.drain_grace

    # -- the ASGI application: admit, produce and send, end ---------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            send = _websocket_denial(send)
        supervisor = self._supervisor or supervisor_for(scope)
        self._supervisor = supervisor
        if self._user is None:
            self._user = user_of_scope(scope)
        live = supervisor.loop_supervision  # looked up once: it costs a backend lookup per call
        refusal = supervisor.drain_refusal if live.draining else None
        if refusal is None and live.admission is not None:
            refusal = live.admission.admit(self, scope)
        if refusal is not None:
            supervisor.notify("rejected", refusal.reason)
            await refusal.respond(send)
            return
        try:
            self._admit(supervisor, live, scope)
        except BaseException:
            supervisor.unregister(self, live)  # admitted (and maybe registered): counted no longer
            raise
        token = CURRENT.set(self)  # the tasks below inherit it: current_stream() in the generator
        try:
            async with anyio.create_task_group() as task_group:
                self._cancel_scope = task_group.cancel_scope
                # The edge's send where the server needs one (HTTP/2, granian, daphne, trio), else the server's.
                send = supervised_send(scope, send, self.trigger)
                delivery = self._delivery
                delivery.task_group, delivery.send = task_group, send
                start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
                if await self._send_headers(send, start):
                    self._response_started = True
                    self._fire(Trigger.FIRST_SEND)
                    if self._expires_at is not None and time.time() >= self._expires_at:
                        self._fire(Trigger.EXPIRED)  # expired already: its farewell, and no generator started
                    if scope.get("method") == "HEAD":
                        self._fire(Trigger.EXHAUSTED)  # headers only: the generator is never started
                    elif not self._machine.closed:  # ended while its headers went out (expired, revoked)
                        self._start_producing(task_group, live)
                    # The request's own task listens until the client leaves or the body has ended.
                    await self._listen(receive)
        finally:
            CURRENT.reset(token)
            await self._end(supervisor, live)
        if self._hooks is not None and self._hooks.error is not None:
            raise self._hooks.error
        if self.background is not None:
            await self.background()

    def _admit(self, supervisor: Supervisor, live: LoopSupervision, scope: Scope) -> None:
        """Take this stream's identity and settings, register it, and give it its one timer entry."""
        self._id = next(_ids)
        route = scope.get("route")
        self.route = getattr(route, "path", "") or ""
        self._peer = scope.get("client")
        settings = self._settings = supervisor.stream_settings.merged(self._overrides)
        self._dead_peer_timeout = settings.dead_peer_timeout
        if self._sync_iterator is not None:
            self._iterator = SyncSource(self._sync_iterator, live.sync_limiter, live.loop)
        self._live = live
        supervisor.register(self, live)
        self._clock = live.loop.clock
        delivery = self._delivery
        delivery.clock, delivery.wakeup = self._clock, live.loop.wakeup
        now = self.started_at = delivery.last_activity = self._clock()
        if self._expires_at is not None:
            # The wall clock's time, in the loop's clock: the timer checks the wall clock once it comes.
            self._expires = now + (self._expires_at - time.time())
        if settings.ping or settings.send_timeout or settings.dead_peer_timeout or self._expires is not None:
            self._timer = live.timers.schedule(self._next_check(now), self._on_timer)

    def _start_producing(self, task_group: Any, live: LoopSupervision) -> None:
        settings = self._settings
        assert settings is not None  # set when admitted
        if self._hooks is not None and self._hooks.companion is not None:
            companion = partial(run_companion, self._hooks.companion, self._companion_failed, **self._log_fields())
            task_group.start_soon(companion)
        if live.loop.create_task is not None:
            # asyncio: the producer is a task of the stream's own, outside the task group, so that
            # stopping it is one cancellation and its generator can await cleanup.
            self._producer = live.loop.create_task(self._delivery.produce(self._iterator, settings))
        else:
            task_group.start_soon(self._delivery.produce, self._iterator, settings)

    async def _end(self, supervisor: Supervisor, live: LoopSupervision) -> None:
        """The stream's last steps, whatever ended it: CLOSED, the body ended or the connection released,
        ``on_close``, the generator closed, unregistered."""
        delivery = self._delivery
        delivery.task_group = None  # closed: nothing more can be started in it
        await delivery.stop_sender()  # asyncio: a sender still in a send, cancelled with its ending
        # Cancelled from outside (the server is shutting down): the stream still ends in CLOSED.
        self._fire(Trigger.FORCE_CLOSE)
        if self._timer is not None:
            self._timer.cancel()
        ending = self._machine.ending
        cancel_scope = self._cancel_scope
        body_left = self._response_started and not delivery.body_ended
        if (
            body_left
            and ending is not Ending.FAREWELL
            and cancel_scope is not None
            and self._clock() >= cancel_scope.deadline
        ):
            # What was queued when the stream ended missed the send deadline it was flushed under (_fire).
            self._keep_error(SendTimeoutError(f"a send took longer than send_timeout ({self._send_timeout()} s)"))
        hooks = self._hooks
        raised = hooks is not None and hooks.error is not None
        if body_left and ending is not Ending.GONE and not raised and not await self._farewell_after_cancel():
            self._release()  # bytes left unsent: free the connection now, not when its peer reads
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()  # the server hears of the abort before the app returns
        if hooks is not None and hooks.on_close is not None:
            await call_on_close(hooks.on_close, self, self._close_grace(), self._keep_error, **self._log_fields())
        await self._stop_generator()
        supervisor.unregister(self, live)

    async def _listen(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] in ("http.disconnect", "websocket.disconnect"):
                self._fire(Trigger.CLIENT_DISCONNECT)
                return

    # -- sending -------------------------------------------------------------------------------------

    async def _send_headers(self, send: Send, start: Message) -> bool:
        """Send the response's start (status and headers), under the send deadline; ``False`` when the
        client is gone. Once per stream. ``send`` is the server's own: this sends through the stream's
        delivery, under its deadline; ``ssesup.compat`` overrides it to send a GET's headers through
        ``send`` without one, as sse-starlette does."""
        return await self._delivery.send_message(start)

    def _send_refused(self, error: Exception) -> None:
        """A send raised: the client is gone (``OSError``), or the server refused what was sent. With
        ``raise_errors`` the error is raised to the server once the stream has ended."""
        self._keep_error(error)
        if isinstance(error, OSError):
            self._fire(Trigger.CLIENT_DISCONNECT)
            return
        # Not the client's doing: the server refused what was sent (an invalid header, say).
        logs.exception("stream.send_failed", error, stream_id=self.stream_id, route=self.route)
        self._fire(Trigger.SEND_FAILED)

    def _count(self, events: int, pings: int, size: int) -> None:
        """Count a sent chunk; the observers hear of it from the supervisor within a second."""
        self.events_sent += events
        self.pings_sent += pings
        self.bytes_sent += size
        if not self._unreported:
            self._unreported = True
            if self._supervisor is not None and self._live is not None:  # both set before any send
                self._supervisor.report_sent_soon(self, self._live)

    def _cancel_task_group(self) -> None:
        self._delivery.cancel()

    # -- endings: the table's row decides -----------------------------------------------------------------

    def _fire(self, trigger: Trigger) -> None:
        """Feed ``trigger`` to the machine and do what its row says.

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
                self._begin_draining()
            return
        ending = transition.ending
        if ending is None:
            return
        now = self.ended_at = self._clock()
        if trigger is Trigger.SEND_TIMEOUT:
            self._keep_error(SendTimeoutError(f"a send took longer than send_timeout ({self._send_timeout()} s)"))
        scope = self._cancel_scope
        if ending is Ending.ABANDON or ending is Ending.GONE:
            self._delivery.cancel()  # nothing more is written; the stream's end releases what is left
            return
        if ending is Ending.FAREWELL:
            assert transition.close_reason is not None
            settings = self._settings
            self._delivery.outbox.put(supervisor.farewell_bytes(self, settings.sep if settings else "\r\n"))
            if scope is not None:
                scope.deadline = now + FAREWELL_BUDGET
            self._stop_producer_now()
        elif scope is not None and self._send_timeout():
            scope.deadline = now + self._send_timeout()  # what is queued is flushed under the send deadline
        self._delivery.start_sender()

    def _stop_producer_now(self) -> None:
        """The producer takes nothing more: its generator is cancelled where it waits now, not after the
        farewell (it would otherwise be closed at its next yield, that event dropped). A send in flight
        is never interrupted for it: then the generator is stopped with the task group."""
        producer = self._producer
        if producer is None or self._delivery.send_started is not None or producer.done():
            return
        if producer is not asyncio.current_task():
            self._stopping = True
            producer.cancel()

    def _begin_draining(self) -> None:
        self._draining = True
        if self._drain_waiter is not None:
            self._drain_waiter.set()
        hooks = self._hooks
        if hooks is None:
            return
        if hooks.drain_event is not None:
            hooks.drain_event.set()
        if hooks.drain_grace is not None and self._live is not None:

            def close(now: float) -> None:
                self._fire(Trigger.DRAIN_CLOSE)

            self._live.timers.schedule(self._clock() + hooks.drain_grace, close)

    async def _farewell_after_cancel(self) -> bool:
        """The farewell and the end of the body, sent here when the stream was cancelled from outside
        before its sender sent them (a server's forced exit cancels every task, maybe the moment after a
        second signal made the supervisor close every stream). Only for a farewell ending, with no send
        waiting and a peer that keeps up (see ``Connection.keeps_up``); shielded, within
        ``FAREWELL_BUDGET``. True when the body was ended; otherwise the connection is released."""
        delivery = self._delivery
        if delivery.send is None or self._machine.ending is not Ending.FAREWELL or delivery.send_started is not None:
            return False
        connection = self._server_connection()
        if connection is None or not connection.keeps_up():
            return False
        with anyio.move_on_after(FAREWELL_BUDGET, shield=True):
            await delivery.flush_and_end()
        return delivery.body_ended

    # -- the stream's own hooks -----------------------------------------------------------------------

    def _log_fields(self) -> dict[str, str]:
        return {"stream_id": self.stream_id, "route": self.route}

    def _companion_failed(self, error: Exception) -> None:
        self._keep_error(error)
        self._fire(Trigger.ERROR)

    def _raising(self) -> bool:
        """Whether an error is to be raised to the server (then the body is left unended)."""
        return self._hooks is not None and self._hooks.error is not None

    def _keep_error(self, error: BaseException) -> None:
        """With ``raise_errors``, the first error is raised to the server once the stream has ended."""
        if self._hooks is not None:
            self._hooks.keep_error(error)

    # -- the timer: pings, send deadlines, dead peers -------------------------------------------------

    def _send_timeout(self) -> float:
        return self._settings.send_timeout if self._settings is not None else 0.0

    def _close_grace(self) -> float:
        return self._settings.close_grace if self._settings is not None else 0.0

    def _next_check(self, now: float) -> float:
        """When the timer should look at this stream again (``ssesup.deadlines``)."""
        settings = self._settings
        assert settings is not None
        return next_check(
            now,
            self._delivery.last_activity,
            settings.ping,
            settings.send_timeout,
            self._delivery.send_started,
            self._dead_peer_timeout,
            self._stalled_since,
            self._expires,
        )

    def _on_timer(self, now: float) -> float | None:
        """The timer service's callback: end an expired stream, ping an idle one, end a stalled send.
        No I/O here."""
        settings = self._settings
        if self._machine.closed or settings is None:
            return None
        expires = self._expires
        if expires is not None and now >= expires:
            left = self._expires_at - time.time() if self._expires_at is not None else 0.0
            if left > 0:  # the wall clock was set back (or slewed) since admission: not yet
                self._expires = now + left
            else:
                self._fire(Trigger.EXPIRED)
                return None
        delivery = self._delivery
        started = delivery.send_started
        if started is not None and settings.send_timeout and now - started >= settings.send_timeout:
            self._fire(Trigger.SEND_TIMEOUT)
            return None
        if self._dead_peer_timeout and self._peer_is_dead(now):
            self._fire(Trigger.DEAD_PEER)
            return None
        if settings.ping and now - delivery.last_activity >= settings.ping:
            # Due: ping if idle; a stream with a send in flight or bytes queued is not idle.
            if started is None and not delivery.outbox.chunks:
                delivery.outbox.put_ping(self._ping_bytes(settings))
                delivery.start_sender()
            delivery.last_activity = now
        return self._next_check(now)

    def _ping_bytes(self, settings: StreamSettings) -> bytes:
        """The ping: the factory's event, or a comment (also when the factory fails or returns no
        ``Event``: logged once per interval for the loop, with the count, not once per ping)."""
        if settings.ping_factory is not None:
            try:
                event = settings.ping_factory()
                if not isinstance(event, (Event, EncodedEvent)):  # EncodedEvent: ssesup.compat's pings
                    raise TypeError(f"ping_factory() must return an Event, not {type(event).__name__}")
                return event.encode(settings.sep)
            except Exception as exc:
                if self._live is not None:
                    error = escape(f"{type(exc).__name__}: {exc}")[:200]
                    self._live.ping_failures.note("ping_factory", route=self.route, error=error)
        return settings.ping_comment

    def _peer_is_dead(self, now: float) -> bool:
        """Whether the kernel has been retransmitting unacknowledged bytes for the dead-peer timeout:
        the first check that finds them marks the start, a check that finds none clears it."""
        connection = self._server_connection()
        if connection is None:
            if self._delivery.send is not None:
                self._dead_peer_timeout = 0.0  # not a server whose connection ssesup can read
            return False
        if not connection.unacknowledged():
            self._stalled_since = None
            return False
        if self._stalled_since is None:
            self._stalled_since = now
        return now - self._stalled_since >= self._dead_peer_timeout

    # -- the connection (ssesup.connection) ---------------------------------------------------------------

    def _server_connection(self) -> ServerConnection | None:
        """The server's connection behind this stream's ``send``, looked up once it is needed."""
        send = self._delivery.send
        if self._connection is None and send is not None:
            self._connection = find_connection(send)
        return self._connection

    def _release(self) -> None:
        """Close the connection now (reset), discarding what is unsent: see ``ssesup.connection``."""
        connection = self._server_connection()
        if connection is not None:
            try:
                connection.release(peer_dead=self.close_reason is CloseReason.DEAD_PEER)
            except Exception:
                logs.exception("stream.release_failed", stream_id=self.stream_id, route=self.route)

    # -- the generator's end ----------------------------------------------------------------------------

    async def _stop_generator(self) -> None:
        """Stop the producer and close the generator within the close grace (the farewell budget after a
        force close): ``ssesup.closing``."""
        grace = FAREWELL_BUDGET if self.close_reason is CloseReason.SHUTDOWN else self._close_grace()
        cancel = not self._stopping  # cancelled once only: a drain's close may have cancelled it already
        self._stopping = True
        await close_generator(self._producer, cancel, self._iterator, grace, self._clock, **self._log_fields())


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
