"""Server integration: SIGTERM/SIGINT chaining, and the readiness, liveness and drain endpoints.

Owns: putting ssesup's signal handling in front of the server's own handlers, in a chainable way, and
the small ASGI apps operators mount. Does not own: the drain itself (the supervisor's).

Signals. No server class is patched. When the first stream of a process starts in the main thread,
ssesup installs, for SIGTERM and SIGINT, a handler that first tells the supervisors on this loop (in a
signal-safe way: ``loop.call_soon_threadsafe`` or a trio token) and then calls the handler that was
there before it: the server's own. So the server shuts down as it always does (it stops accepting,
then waits for open connections), while the supervisor drains the streams that would have kept it
waiting; a second Ctrl-C reaches the server too and still force-quits. Nothing is installed where
there is no server handler to chain to (the default action), or outside the main thread.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog
from starlette.types import Receive, Scope, Send

from ssesup._loop import running_trio

if TYPE_CHECKING:
    from ssesup.supervisor import Supervisor

log = structlog.get_logger("ssesup")

SIGNALS = (signal.SIGTERM, signal.SIGINT)

Notify = Callable[[int], None]


class ChainedHandler:
    """A signal handler that tells ssesup, then hands the signal on to the handler it replaced."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.listeners: list[Notify] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        for notify in list(self.listeners):
            notify(signum)
        if callable(self.previous):
            self.previous(signum, frame)


def listen_for_signals(on_signal: Callable[[int], Awaitable[None]]) -> bool:
    """Run ``on_signal(signum)`` as a task on this event loop when SIGTERM or SIGINT arrives.

    Returns ``False`` (and installs nothing) outside the main thread, or where the server has no
    handler of its own to chain to.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    notify = _loop_notifier(on_signal)
    installed = False
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if not isinstance(current, ChainedHandler):
            if current in (signal.SIG_DFL, signal.SIG_IGN, None):
                continue
            current = ChainedHandler(current)
            signal.signal(signum, current)
        current.listeners.append(notify)
        installed = True
    return installed


def _loop_notifier(on_signal: Callable[[int], Awaitable[None]]) -> Notify:
    """A callable safe to run in a signal handler: it starts ``on_signal(signum)`` as a task on the
    current loop (a task, so that the callback runs in async context), owned as ``spawn_owned`` says."""
    if running_trio():
        import trio

        token = trio.lowlevel.current_trio_token()

        def notify(signum: int) -> None:
            token.run_sync_soon(trio.lowlevel.spawn_system_task, on_signal, signum)

    else:
        loop = asyncio.get_running_loop()

        def notify(signum: int) -> None:
            loop.call_soon_threadsafe(loop.create_task, on_signal(signum))

    return notify


def server_graceful_timeout() -> float | None:
    """The running server's own graceful-shutdown timeout, where its signal handler tells it.

    uvicorn's handler is a bound method of its ``Server``, whose config holds
    ``timeout_graceful_shutdown``; reading it patches nothing.
    """
    for signum in SIGNALS:
        handler = signal.getsignal(signum)
        if isinstance(handler, ChainedHandler):
            handler = handler.previous
        server = getattr(handler, "__self__", None)
        timeout = getattr(getattr(server, "config", None), "timeout_graceful_shutdown", None)
        if isinstance(timeout, (int, float)):
            return float(timeout)
    return None


# -- operator endpoints ------------------------------------------------------------------------------


async def _respond(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class ReadinessEndpoint:
    """``200`` while this process takes new streams, ``503`` from the first moment of a drain."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.supervisor.live.draining:
            await _respond(send, 503, {"ready": False, "draining": True})
        else:
            await _respond(send, 200, {"ready": True, "draining": False})


class LivenessEndpoint:
    """``200`` while the process runs, drain or not."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, {"alive": True})


class DrainEndpoint:
    """``POST`` with ``Authorization: Bearer <token>`` drains this process's supervisor.

    ``401`` without a bearer token, ``403`` with a wrong one (compared in constant time), ``405`` for any
    other method. ``?wait=1`` answers when the drain is over; otherwise ``202`` at once.
    """

    def __init__(self, supervisor: Supervisor, token: str) -> None:
        if not isinstance(token, str) or len(token) < 16:
            raise ValueError("the drain endpoint needs a token of at least 16 characters")
        self.supervisor = supervisor
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            await _respond(send, 405, {"error": "method not allowed"}, [(b"allow", b"POST")])
            return
        authorization = dict(scope.get("headers", ())).get(b"authorization", b"")
        scheme, _, presented = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not presented:
            await _respond(send, 401, {"error": "unauthorized"}, [(b"www-authenticate", b'Bearer realm="ssesup"')])
            return
        if not hmac.compare_digest(presented.strip(), self._token):
            await _respond(send, 403, {"error": "forbidden"})
            return
        wait = scope.get("query_string", b"") in (b"wait=1", b"wait=true")
        report = await self.supervisor.drain(wait=wait)
        await _respond(send, 200 if wait else 202, report)
