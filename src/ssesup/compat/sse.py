"""sse-starlette's ``EventSourceResponse`` and ``AppStatus``, as a thin layer over :class:`SupervisedStream`.

Owns: sse-starlette 3.7's constructor (its arguments, defaults, checks and error messages), the mapping
of each of its options onto the native API, the encoding of what a generator yields with
sse-starlette's own encoder (``ssesup.compat.event``), and ``AppStatus.should_exit`` as a way into the
supervisor's drain. Does not own: anything a stream does (the actor in ``ssesup.stream``), drains
(``ssesup.supervisor``), signals (``ssesup.signals``; no server class is patched).

The map, option by option (docs/migrating.md explains each):

* ``ping`` -> ``ping``; the default ping is sse-starlette's ``: ping - <UTC time>`` comment, made by a
  ``ping_factory``, as is ``ping_message_factory``'s;
* ``send_timeout`` (``None``: off) -> ``send_timeout`` (``0``: off), raised as ``SendTimeoutError``;
* ``data_sender_callable`` -> ``companion``; ``client_close_handler_callable`` -> ``on_close``, called
  with ``{"type": "http.disconnect"}`` when the client left or the generator finished;
* ``shutdown_event`` / ``shutdown_grace_period`` -> ``drain_event`` / ``drain_grace``;
* ``cleanup_timeout`` (``None``: no limit) -> ``close_grace``;
* errors (the generator's, an encoding error, a send's, a send timeout, the callbacks') -> ``raise_errors``:
  raised to the server as sse-starlette raises them, with no clean end of body.

What sse-starlette does besides its options, done here too: ``HEAD`` in any case answers the headers and
an empty body (a GET's headers are sent without the send deadline, a HEAD's under it); a failure to close
the generator and a cleanup cut at ``cleanup_timeout`` are logged on sse-starlette's logger,
``sse_starlette.sse`` (an error with its traceback, a warning), besides ssesup's own log events.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import anyio
from anyio.lowlevel import RunVar
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from ssesup._loop import loop_local
from ssesup.compat.event import ServerSentEvent, ensure_bytes
from ssesup.errors import SendTimeoutError
from ssesup.events import EncodedEvent
from ssesup.signals import loop_notifier
from ssesup.states import CloseReason
from ssesup.stream import SupervisedStream
from ssesup.supervisor import Supervisor, supervisor_for

__all__ = ["AppStatus", "EventSourceResponse", "SendTimeoutError", "ServerSentEvent", "ensure_bytes"]

# sse-starlette's own logger: an app's logging set-up for it keeps working.
logger = logging.getLogger("sse_starlette.sse")

Content = str | bytes | dict[str, Any] | ServerSentEvent | Any
SyncContentStream = Iterator[Content]
AsyncContentStream = AsyncIterable[Content]
ContentStream = AsyncContentStream | SyncContentStream


class _AppStatusType(type):
    """``AppStatus.should_exit`` is a class attribute in sse-starlette; here reading and setting it go
    through the supervisors of the compat streams."""

    # Set on AppStatus, the one class of this metaclass.
    _should_exit: bool
    enable_automatic_graceful_drain: bool

    @property
    def should_exit(cls) -> bool:
        """True once set, or (with the automatic drain) while the supervisor of a compat stream on this
        event loop drains, as on SIGTERM."""
        return bool(cls._should_exit) or (cls.enable_automatic_graceful_drain and _draining_here())

    @should_exit.setter
    def should_exit(cls, value: bool) -> None:
        with _lock:
            cls._should_exit = value
            loops = tuple(_loops_with_streams) if value else ()
        for loop in loops:
            with contextlib.suppress(RuntimeError):  # its event loop closed since its last stream left
                loop.drain_soon()


class AppStatus(metaclass=_AppStatusType):
    """sse-starlette's shutdown switches. ``AppStatus.should_exit = True`` drains the supervisors of the
    compat streams on every event loop (new streams are refused with 503 from then on); ssesup drains on
    SIGTERM by itself, without patching the server."""

    _should_exit: ClassVar[bool] = False
    enable_automatic_graceful_drain: ClassVar[bool] = True
    original_handler: ClassVar[Callable[..., Any] | None] = None

    @staticmethod
    def disable_automatic_graceful_drain() -> None:
        """Stop ``should_exit`` from reporting a drain ssesup started itself (SIGTERM). The drain still
        happens: turn it off with ``Supervisor(drain_on_signals=False)``."""
        AppStatus.enable_automatic_graceful_drain = False

    @staticmethod
    def enable_automatic_graceful_drain_mode() -> None:
        """Undo :meth:`disable_automatic_graceful_drain`."""
        AppStatus.enable_automatic_graceful_drain = True

    @staticmethod
    def handle_exit(*args: Any, **kwargs: Any) -> None:
        """sse-starlette's exit hook: sets ``should_exit`` (with the automatic drain), then calls
        ``original_handler`` if one was set (ssesup installs none)."""
        if AppStatus.enable_automatic_graceful_drain:
            AppStatus.should_exit = True
        if AppStatus.original_handler is not None:
            AppStatus.original_handler(*args, **kwargs)


class _LoopStreams:
    """The compat streams live on one event loop, by supervisor: what ``should_exit`` drains, from any
    thread."""

    def __init__(self) -> None:
        self.supervisors: dict[Supervisor, int] = {}
        self._notify = loop_notifier(self._drain)

    def drain_soon(self) -> None:
        self._notify(0)

    async def _drain(self, _signum: int) -> None:
        for supervisor in tuple(self.supervisors):
            supervisor.begin_drain()


_lock = threading.Lock()
_loops_with_streams: set[_LoopStreams] = set()
_loop_streams: RunVar[_LoopStreams] = RunVar("ssesup.compat.streams")


def _draining_here() -> bool:
    try:
        streams = _loop_streams.get()
    except (LookupError, RuntimeError):  # no compat stream on this loop, or no event loop at all
        return False
    return any(supervisor.loop_supervision.draining for supervisor in streams.supervisors)


class EventSourceResponse(SupervisedStream):
    """sse-starlette's ``EventSourceResponse`` (3.7): the same arguments, defaults and bytes, on a
    supervised stream. See the module's docstring for what each option becomes."""

    DEFAULT_PING_INTERVAL = 15
    DEFAULT_SEPARATOR = "\r\n"
    DEFAULT_CLEANUP_TIMEOUT = 30.0

    def __init__(
        self,
        content: ContentStream,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str = "text/event-stream",
        background: BackgroundTask | None = None,
        ping: int | float | None = None,
        sep: str | None = None,
        ping_message_factory: Callable[[], ServerSentEvent] | None = None,
        data_sender_callable: Callable[[], Coroutine[None, None, None]] | None = None,
        send_timeout: float | None = None,
        client_close_handler_callable: Callable[[Message], Awaitable[None]] | None = None,
        shutdown_event: anyio.Event | None = None,
        shutdown_grace_period: float = 0,
        cleanup_timeout: float | None = DEFAULT_CLEANUP_TIMEOUT,
    ) -> None:
        if sep not in (None, "\r\n", "\r", "\n"):
            raise ValueError(f"sep must be one of: \\r\\n, \\r, \\n, got: {sep}")
        self.sep = sep or self.DEFAULT_SEPARATOR
        if isinstance(content, AsyncIterable):
            self.body_iterator: AsyncIterable[Content] = content
            self._encoded: _EncodedAsync | _EncodedSync = _EncodedAsync(content, self.sep)
        else:
            self.body_iterator = iterate_in_threadpool(content)
            self._encoded = _EncodedSync(content, self.sep)
        self.data_sender_callable = data_sender_callable
        self.send_timeout = send_timeout
        _headers = MutableHeaders()
        if headers is not None:
            _headers.update(headers)
        _headers.setdefault("Cache-Control", "no-store")
        _headers["X-Accel-Buffering"] = "no"
        self.ping_interval = self.DEFAULT_PING_INTERVAL if ping is None else ping
        self.ping_message_factory = ping_message_factory
        self.client_close_handler_callable = client_close_handler_callable
        if shutdown_grace_period < 0:
            raise ValueError("shutdown_grace_period must be >= 0")
        if cleanup_timeout is not None and cleanup_timeout < 0:
            raise ValueError("cleanup_timeout must be >= 0")
        super().__init__(
            self._encoded,
            status_code,
            _headers,
            media_type,
            background,
            ping=float(self._ping_interval),
            send_timeout=send_timeout or 0,
            sep=self.sep,
            ping_factory=self._ping_event,
            close_grace=math.inf if cleanup_timeout is None else cleanup_timeout,
            on_close=self._on_close if client_close_handler_callable is not None else None,
            companion=data_sender_callable,
            drain_event=shutdown_event,
            drain_grace=shutdown_grace_period,
            raise_errors=True,
        )
        self._made = True  # from now on, a new ping interval is this stream's own setting at once

    @property
    def ping_interval(self) -> int | float:
        return self._ping_interval

    @ping_interval.setter
    def ping_interval(self, value: int | float) -> None:
        if not isinstance(value, (int, float)):
            raise TypeError("ping interval must be int or float")
        if value < 0:
            raise ValueError("ping interval must be >= 0 (0 disables ping)")
        self._ping_interval = value
        if getattr(self, "_made", False):  # set after the stream was made: its native setting follows
            self.override(ping=float(value))

    def enable_compression(self, force: bool = False) -> None:
        raise NotImplementedError("Compression is not supported for SSE streams.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        supervisor = supervisor_for(scope)
        streams = loop_local(_loop_streams, _LoopStreams)
        with _lock:
            streams.supervisors[supervisor] = streams.supervisors.get(supervisor, 0) + 1
            _loops_with_streams.add(streams)
            exiting = bool(AppStatus._should_exit)
        self._head = scope["type"] == "http" and scope["method"].upper() == "HEAD"
        if self._head and scope["method"] != "HEAD":
            scope = {**scope, "method": "HEAD"}  # sse-starlette takes a method in any case for HEAD
        try:
            if exiting:
                supervisor.begin_drain()  # the app is exiting: refused, as every stream after a drain
            await super().__call__(scope, receive, send)
        finally:
            with _lock:
                count = streams.supervisors.pop(supervisor) - 1
                if count:
                    streams.supervisors[supervisor] = count
                elif not streams.supervisors:
                    _loops_with_streams.discard(streams)

    async def _send_headers(self, send: Send, start: Message) -> bool:
        # sse-starlette sends a GET's headers without the send deadline (its deadline is for events and
        # pings), so a slow first send still starts the generator; a HEAD's go under the deadline.
        if self._head:
            return await super()._send_headers(send, start)
        try:
            await send(start)
        except Exception as exc:
            self._send_refused(exc)
            return False
        return True

    def _ping_event(self) -> EncodedEvent:
        factory = self.ping_message_factory
        ping = (
            factory() if factory is not None else ServerSentEvent(comment=f"ping - {datetime.now(UTC)}", sep=self.sep)
        )
        return EncodedEvent(ensure_bytes(ping, self.sep))

    async def _on_close(self, stream: SupervisedStream) -> None:
        # sse-starlette calls the handler when its listener receives http.disconnect: when the client
        # leaves, and under uvicorn also once the generator finished (receive() reports a disconnect when
        # the response is complete), during a shutdown too.
        handler = self.client_close_handler_callable  # set: _on_close is the hook only then
        if handler is not None and (stream.close_reason is CloseReason.CLIENT_DISCONNECT or self._encoded.exhausted):
            await handler({"type": "http.disconnect"})


class _EncodedAsync:
    """An async iterable's items encoded by sse-starlette's encoder; closing it closes the iterable's
    iterator (within the stream's close grace: the stream closes this). ``exhausted`` once it ended."""

    def __init__(self, content: AsyncIterable[Content], sep: str) -> None:
        self._content = content
        self._sep = sep
        self._iterator: AsyncIterator[Content] | None = None
        self.exhausted = False

    def __aiter__(self) -> _EncodedAsync:
        return self

    async def __anext__(self) -> bytes:
        if self._iterator is None:
            self._iterator = aiter(self._content)
        try:
            item = await anext(self._iterator)
        except StopAsyncIteration:
            self.exhausted = True
            raise
        return ensure_bytes(item, self._sep)

    async def aclose(self) -> None:
        """Close the iterator; a failure is logged on sse-starlette's logger (and raised on for ssesup's
        own log), and so is a cleanup cut at the deadline the stream closes it under (``cleanup_timeout``),
        also one the generator swallowed."""
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is None:
            return
        started = anyio.current_time()
        try:
            await aclose()
        except anyio.get_cancelled_exc_class():
            _cleanup_cut(started)  # the stream closes this shielded: a cancellation here is its deadline
            raise
        except Exception:
            logger.exception("Error closing body iterator after the stream ended")
            raise
        if anyio.current_time() >= anyio.current_effective_deadline():
            _cleanup_cut(started)


def _cleanup_cut(started: float) -> None:
    logger.warning("Body iterator cleanup cancelled after %.3g seconds", anyio.current_time() - started)


class _EncodedSync:
    """A sync iterable's items encoded by sse-starlette's encoder (pulled in ssesup's own threads).
    ``exhausted`` once it ended."""

    def __init__(self, content: Any, sep: str) -> None:
        self._content = content
        self._sep = sep
        self._iterator: Iterator[Content] | None = None
        self.exhausted = False

    def __iter__(self) -> _EncodedSync:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self._content)
        try:
            item = next(self._iterator)
        except StopIteration:
            self.exhausted = True
            raise
        return ensure_bytes(item, self._sep)

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()
