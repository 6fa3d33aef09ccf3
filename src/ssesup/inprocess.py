"""The in-process SSE client: it drives a Starlette or FastAPI app as a server and a browser would.

Owns: :class:`AsyncSSEClient` and its connections (:class:`AsyncSSEConnection`), what a client read
(:class:`SSEResponse`), :class:`StreamIncomplete`, and the ASGI lifespan around a client's life. Does
not own: anything a stream does (the client only plays the part of the server and the browser around
the app), the blocking form or a real server (``ssesup.testing``).

The client drives the ASGI app itself, as a server would: one ``http.request``, then ``receive()``
blocks until the client disconnects; every body chunk the app sends is parsed as it is sent, so an
endless stream is read event by event. When the reading stops (``count`` events, an ``until``
predicate, or the end of the body) the client disconnects, so a supervised stream ends with
``client_disconnect``, and waits, bounded, for the app to end (the generator's ``finally`` has run).
Nothing the client reads waits for the reader: sends never block, so a slow client is not something it
can show (serve the app for that).
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message

from ssesup.current import running_stream
from ssesup.parser import EventStreamParser, ServerSentEvent
from ssesup.states import CloseReason
from ssesup.stream import SupervisedStream

# -- what a client read ---------------------------------------------------------------------------------


@dataclass(eq=False)
class SSEResponse:
    """What the client got: the status and headers, the events it read, and the raw body.

    ``events`` are those the client read (a stop at ``count`` leaves later ones unread, though their bytes
    are in ``body``). ``ended`` is true when the app ended the body, false when the client left first.
    ``stream`` is the :class:`~ssesup.SupervisedStream` that answered (``None`` for other responses, or
    when a middleware sends from a task of its own, as ``BaseHTTPMiddleware`` does).
    """

    status: int
    headers: Headers
    stream: SupervisedStream | None = None
    events: list[ServerSentEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    raw_body: bytearray = field(default_factory=bytearray, repr=False)
    """Every body byte received so far (``body`` as bytes)."""
    ended: bool = False
    retry: int | None = None
    """The reconnection time (ms) the stream set last, e.g. by a drain's farewell."""
    last_event_id: str = ""
    """The last event id as of the last event read: what a browser would send when it reconnects."""

    @property
    def is_event_stream(self) -> bool:
        """A 200 with ``Content-Type: text/event-stream``: what an ``EventSource`` reads events from."""
        media_type = self.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        return self.status == 200 and media_type == "text/event-stream"

    @property
    def body(self) -> bytes:
        return bytes(self.raw_body)

    @property
    def text(self) -> str:
        return self.raw_body.decode("utf-8", errors="replace")

    @property
    def close_reason(self) -> CloseReason | None:
        """The supervised stream's close reason (``None`` while it is open, or for other responses)."""
        return None if self.stream is None else self.stream.close_reason

    def data(self) -> list[str]:
        """The data of every event read."""
        return [event.data for event in self.events]


class StreamIncomplete(AssertionError):
    """The reading stopped before its condition was met: the timeout, or the body ended. ``response``
    holds what arrived; the message lists it."""

    def __init__(self, why: str, response: SSEResponse | None) -> None:
        self.response = response
        if response is None:
            super().__init__(why)
            return
        read = response.events
        listed = "".join(f"\n  {event!r}" for event in read[-20:]) or " none"
        tail = bytes(response.raw_body[-300:])
        super().__init__(
            f"{why}; status {response.status}, {len(read)} events read{' (last 20)' if len(read) > 20 else ''}:"
            f"{listed}\n  body so far (last 300 bytes): {tail!r}"
        )


# -- the in-process client ------------------------------------------------------------------------------

HeaderItems = Mapping[str, str] | Sequence[tuple[str, str]]
Params = Mapping[str, Any] | Sequence[tuple[str, Any]]


def _header_list(headers: HeaderItems | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


class AsyncSSEClient:
    """Reads SSE endpoints of an ASGI app in-process, under asyncio or trio (through anyio).

    ``stream(path, count=..., until=..., timeout=...)`` reads and returns an :class:`SSEResponse`;
    ``connect(path)`` opens a connection to read from step by step. ``headers`` go with every request;
    ``lifespan=True`` runs the app's lifespan while the client is entered (``async with``), and its
    state reaches every request. ``timeout``: default seconds a read may take; ``close_timeout``: how
    long the app may take to end once the client disconnected. ``client``: the peer address the app sees.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        base_url: str = "http://testserver",
        headers: HeaderItems | None = None,
        lifespan: bool = False,
        timeout: float = 5.0,
        close_timeout: float = 10.0,
        client: tuple[str, int] = ("127.0.0.1", 50000),
        raise_app_exceptions: bool = True,
    ) -> None:
        self.app = app
        self.base_url = base_url
        self.headers = _header_list(headers)
        self.lifespan = lifespan
        self.timeout = timeout
        self.close_timeout = close_timeout
        self.client = client
        self.raise_app_exceptions = raise_app_exceptions
        self.state: dict[str, Any] = {}
        self._lifespan: _Lifespan | None = None

    async def __aenter__(self) -> AsyncSSEClient:
        if self.lifespan:
            self._lifespan = _Lifespan(self.app, self.state, self.close_timeout)
            await self._lifespan.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is not None:
            await lifespan.__aexit__(*exc_info)

    def connect(
        self,
        path: str,
        *,
        params: Params | None = None,
        headers: HeaderItems | None = None,
        last_event_id: str | None = None,
    ) -> AsyncSSEConnection:
        """A connection to ``path`` (``async with``): the app runs from entry (which returns once the
        response has started) until exit, which disconnects and waits for the app to end."""
        if self.lifespan and self._lifespan is None:
            raise RuntimeError("lifespan=True runs the lifespan while the client is entered: `async with` it first")
        extra = _header_list(headers)
        if last_event_id is not None:
            extra.append(("last-event-id", last_event_id))
        return AsyncSSEConnection(self, self._scope(path, params, extra))

    async def stream(
        self,
        path: str,
        *,
        count: int | None = None,
        until: Callable[[ServerSentEvent], bool] | None = None,
        timeout: float | None = None,
        params: Params | None = None,
        headers: HeaderItems | None = None,
        last_event_id: str | None = None,
    ) -> SSEResponse:
        """GET ``path`` and read: ``count`` events, up to the first event ``until(event)`` is true of, or
        (with neither) to the end of the body; then disconnect and wait for the app to end.

        Raises :class:`StreamIncomplete` when ``timeout`` (default: the client's) runs out or the body
        ends first. A response that is not an event stream (a 503, a JSON error) is read to its end.
        """
        async with self.connect(path, params=params, headers=headers, last_event_id=last_event_id) as connection:
            await connection.read(count=count, until=until, timeout=timeout)
        return connection.response

    def _scope(self, path: str, params: Params | None, extra: list[tuple[str, str]]) -> dict[str, Any]:
        base = urlsplit(self.base_url)
        url = urlsplit(path)
        scheme, netloc = url.scheme or base.scheme, url.netloc or base.netloc
        query = url.query
        if params:
            query = "&".join(part for part in (query, urlencode(params, doseq=True)) if part)
        host, _, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
        default_port = 443 if scheme == "https" else 80
        given = {name.lower() for name, _ in (*self.headers, *extra)}
        headers = [("host", netloc)]
        headers += [(name, value) for name, value in _DEFAULT_REQUEST_HEADERS if name not in given]
        headers += [*self.headers, *extra]
        raw_path = url.path or "/"
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": scheme,
            "path": unquote(raw_path),
            "raw_path": quote(raw_path, safe=_URL_SAFE).encode("ascii"),
            "query_string": quote(query, safe=_URL_SAFE).encode("ascii"),
            "root_path": "",
            "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers],
            "client": self.client,
            "server": (host or netloc, int(port) if port else default_port),
            "state": dict(self.state),
        }


_URL_SAFE = "/%:@!$&'()*+,;=?"  # kept as they are in a path or query: what is already encoded stays so
_DEFAULT_REQUEST_HEADERS = (("accept", "text/event-stream"), ("cache-control", "no-cache"))


class AsyncSSEConnection:
    """One request to the app, read step by step: ``read()``, ``next_event()``, ``async for``.

    ``response`` fills in as the client reads. Leaving the ``async with`` (or ``disconnect()``) ends it.
    """

    def __init__(self, client: AsyncSSEClient, scope: dict[str, Any]) -> None:
        self._client = client
        self._scope = scope
        self._timeout = client.timeout
        self._parser = EventStreamParser()
        self._pending: deque[ServerSentEvent] = deque()
        chunks_in, chunks_out = anyio.create_memory_object_stream[bytes](math.inf)
        self._chunks_in: MemoryObjectSendStream[bytes] = chunks_in
        self._chunks_out: MemoryObjectReceiveStream[bytes] = chunks_out
        self._started = anyio.Event()
        self._gone = anyio.Event()  # the client left, or the body ended: receive() answers http.disconnect
        self._app_done = anyio.Event()
        self._app_error: BaseException | None = None
        self._request_sent = False
        self._body_ended = False  # the reader has seen the end of the body (or its own disconnect)
        self._disconnected = False
        self._closed = False
        self._response: SSEResponse | None = None

    @property
    def response(self) -> SSEResponse:
        if self._response is None:
            raise RuntimeError("the response has not started")
        return self._response

    async def __aenter__(self) -> AsyncSSEConnection:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._run_app)
        try:
            with anyio.move_on_after(self._timeout):
                await self._started.wait()
            if self._response is None:
                if self._app_error is not None:
                    raise self._app_error
                why = "the app ended without a response" if self._app_done.is_set() else "no response"
                raise StreamIncomplete(f"{why} within {self._timeout:g} s", None)
        except BaseException:
            self._closed = True  # an app that has not answered has nothing to end gracefully: cancel it
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._end(exc)
        if exc is None and self._app_error is not None and self._client.raise_app_exceptions:
            raise self._app_error

    async def _end(self, exc: BaseException | None) -> None:
        """Disconnect, wait for the app, close the task group. What the reader raised is not handed to
        the task group (it would come out wrapped in an exception group), except a cancellation."""
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(type(exc), exc, exc.__traceback__)
            return
        try:
            await self.disconnect()
        finally:
            await self._task_group.__aexit__(None, None, None)

    async def read(
        self,
        *,
        count: int | None = None,
        until: Callable[[ServerSentEvent], bool] | None = None,
        timeout: float | None = None,
    ) -> list[ServerSentEvent]:
        """Read ``count`` events, up to the first ``until(event)``, or (with neither) to the end of the
        body; return the events this call read. Raises :class:`StreamIncomplete` when ``timeout``
        (default: the client's) runs out or the body ends before the condition is met. A response that
        is not an event stream is read to its end and gives no events."""
        response = self.response
        timeout = self._timeout if timeout is None else timeout
        goal = count is not None or until is not None
        read: list[ServerSentEvent] = []
        if count is not None and count <= 0:
            return read
        with anyio.move_on_after(timeout) as scope:
            while True:
                if response.is_event_stream:
                    while self._pending:
                        event = self._pending.popleft()
                        read.append(event)
                        response.events.append(event)
                        response.last_event_id = event.id
                        if event.retry is not None:
                            response.retry = event.retry
                        if (count is not None and len(read) >= count) or (until is not None and until(event)):
                            return read
                if self._body_ended:
                    if goal and response.is_event_stream:
                        raise StreamIncomplete("the body ended before the stop condition was met", response)
                    return read
                await self._receive_chunk()
        assert scope.cancelled_caught
        raise StreamIncomplete(f"timed out after {timeout:g} s", response)

    async def next_event(self, timeout: float | None = None) -> ServerSentEvent:
        """The next event (:class:`StreamIncomplete` if none comes within ``timeout``)."""
        return (await self.read(count=1, timeout=timeout))[0]

    async def __aiter__(self) -> AsyncIterator[ServerSentEvent]:
        """Every event until the body ends (each within the client's timeout)."""
        while True:
            try:
                yield await self.next_event()
            except StreamIncomplete:
                if self.response.ended:
                    return
                raise

    async def disconnect(self) -> None:
        """Leave (the app's ``receive()`` answers ``http.disconnect``) and wait, within the client's
        ``close_timeout``, for the app to end. Does nothing the second time."""
        if self._closed:
            return
        self._closed = True
        self._disconnected = True
        self._gone.set()
        self._chunks_out.close()
        with anyio.move_on_after(self._client.close_timeout):
            await self._app_done.wait()
        if not self._app_done.is_set():
            self._task_group.cancel_scope.cancel()
            raise AssertionError(f"the app did not end within {self._client.close_timeout:g} s of the disconnect")

    async def _receive_chunk(self) -> None:
        """Take the next body chunk into the response, or see the end of the body."""
        response = self.response
        try:
            chunk = await self._chunks_out.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._body_ended = True
            if response.is_event_stream:
                self._pending.extend(self._parser.close())
                self._take_parser_state()
            return
        response.raw_body += chunk
        if response.is_event_stream:
            self._pending.extend(self._parser.feed(chunk))
            self._take_parser_state()

    def _take_parser_state(self) -> None:
        """Comments as they are parsed; the last event id and reconnection time once every event parsed
        has been read (until then, reading an event sets them: a read that stops at ``count`` leaves
        the ids of unread events out)."""
        response, parser = self.response, self._parser
        response.comments = parser.comments
        if not self._pending:
            response.retry = parser.retry
            response.last_event_id = parser.last_event_id

    # -- the server's side: what the app calls ---------------------------------------------------------

    async def _run_app(self) -> None:
        try:
            await self._client.app(self._scope, self._receive, self._send)
        except Exception as exc:
            self._app_error = exc
        finally:
            self._app_done.set()
            self._started.set()
            self._chunks_in.close()

    async def _receive(self) -> Message:
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if self._disconnected:
            return  # the client has gone: what is sent is lost, as on a real server
        kind = message["type"]
        response = self._response
        if kind == "http.response.start":
            if response is not None:
                raise RuntimeError("the app sent http.response.start twice")
            headers = Headers(raw=[(bytes(name).lower(), bytes(value)) for name, value in message.get("headers", [])])
            self._response = SSEResponse(message["status"], headers, running_stream())
            self._started.set()
        elif kind == "http.response.body":
            if response is None or response.ended:
                raise RuntimeError("the app sent a body without a response start, or after the end of the body")
            body = bytes(message.get("body", b""))
            if body:
                self._chunks_in.send_nowait(body)
            if not message.get("more_body", False):
                response.ended = True
                self._chunks_in.close()
                self._gone.set()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")


class _Lifespan:
    """The ASGI lifespan protocol around the client's life: startup on entry, shutdown on exit."""

    def __init__(self, app: ASGIApp, state: dict[str, Any], timeout: float) -> None:
        self.app = app
        self.state = state
        self.timeout = timeout
        self._to_app, self._app_in = anyio.create_memory_object_stream[Message](math.inf)
        self._app_out, self._from_app = anyio.create_memory_object_stream[Message](math.inf)
        self._exit_stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> None:
        task_group = await self._exit_stack.enter_async_context(anyio.create_task_group())
        task_group.start_soon(self._run)
        try:
            await self._exchange("startup")
        except BaseException:
            task_group.cancel_scope.cancel()
            await self._exit_stack.__aexit__(None, None, None)
            raise

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self._exchange("shutdown")
        finally:
            await self._exit_stack.__aexit__(None, None, None)

    async def _exchange(self, phase: str) -> None:
        self._to_app.send_nowait({"type": f"lifespan.{phase}"})
        with anyio.fail_after(self.timeout):
            try:
                message = await self._from_app.receive()
            except anyio.EndOfStream:
                raise RuntimeError(f"the app ended its lifespan without answering {phase}") from None
        if message["type"] != f"lifespan.{phase}.complete":
            raise RuntimeError(f"lifespan {phase} failed: {message.get('message', '')}")

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        with self._app_out:
            try:
                await self.app(scope, self._app_in.receive, self._app_out.send)
            except Exception as exc:
                await self._app_out.send({"type": "lifespan.error", "message": repr(exc)})
