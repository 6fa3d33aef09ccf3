"""Server integration: SIGTERM/SIGINT chained in front of the server's own handlers.

Owns: putting ssesup's signal handling in front of the server's own handlers, in a chainable way, and
reading the server's own graceful timeout. Does not own: the drain itself (the supervisor's) or the
operator endpoints (``ssesup.endpoints``).

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
import signal
import threading
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

from ssesup._loop import running_trio

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


NOT_MAIN_THREAD = "not_main_thread"
NO_SERVER_HANDLER = "no_server_handler"


def listen_for_signals(on_signal: Callable[[int], Coroutine[Any, Any, None]]) -> str | None:
    """Run ``on_signal(signum)`` as a task on this event loop when SIGTERM or SIGINT arrives.

    Returns ``None`` when chained, else why nothing was installed: :data:`NOT_MAIN_THREAD` (signals
    reach only the main thread), or :data:`NO_SERVER_HANDLER` (the server handles neither signal, so
    the default action would end the process before any drain, and there is nothing to chain to).
    """
    if threading.current_thread() is not threading.main_thread():
        return NOT_MAIN_THREAD
    notify = loop_notifier(on_signal)
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
    return None if installed else NO_SERVER_HANDLER


def loop_notifier(on_signal: Callable[[int], Coroutine[Any, Any, None]]) -> Notify:
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
