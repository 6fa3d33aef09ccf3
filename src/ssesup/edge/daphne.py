"""daphne (HTTP/1.1): Twisted under asyncio; its ``send`` never waits, and its SIGTERM cancels every app.

What stands behind the ``send`` daphne passes an app: ``functools.partial(server.handle_reply,
protocol)``, daphne's ``Server`` and the request (a ``twisted.web.http.Request``), whose ``transport``
is Twisted's TCP transport: its socket, ``abortConnection()``, and the bytes it buffers (Twisted's
``dataBuffer`` past ``offset``, and ``_tempDataLen`` not yet joined to it).

* Bounded send: daphne hands every body to ``transport.write``, which never waits, so a client that
  stops reading grew the server's memory without bound (78 MB to 1.92 GB in 10 s) and ``send_timeout``
  never fired. The edge's send waits, once the transport holds more than ``BOUND`` bytes, until it
  holds no more than that (looked at every ``POLL`` seconds: Twisted tells a producer, not a waiter).
* Release: ``SO_LINGER`` 0, then ``abortConnection()`` (the buffer dropped, the socket closed: a reset).
* Drain: on SIGTERM Twisted stops the reactor, and daphne's trigger before shutdown cancels every
  application at once (0 of 4 farewells). At the first stream, that trigger is moved behind one that
  waits until every app ssesup serves here has returned (its drain closes each within its grace, and
  releases what cannot take its farewell), through Twisted's own ``add/removeSystemEventTrigger``;
  daphne's then cancels what is left. ssesup's signal handler runs before Twisted's, so the drain has
  begun when the reactor starts to stop.
* HTTP/2 (Twisted's, over TLS) is not handled: no connection is found, nothing is done.

Owns: daphne's connection behind a ``send`` (its buffered bytes, its release), the bound on its send,
and moving daphne's cancel-every-app shutdown behind the supervisor's drain. Does not own: HTTP/2 on
daphne (not supported, logged), the drain itself (``ssesup.supervisor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

import structlog

from ssesup.edge.multiplexed import BOUND

log = structlog.get_logger("ssesup")

POLL = 0.05
_LINGER_ZERO = struct.pack("ii", 1, 0)
# The longest the reactor's shutdown waits for ssesup's apps: their drain ends each within its grace
# and a second; this only keeps a stuck shutdown from waiting forever.
LONGEST_WAIT = 300.0


def serving() -> bool:
    return "daphne.server" in sys.modules


def match(node: Any) -> DaphneConnection | None:
    """The edge of a daphne HTTP/1.1 request, when ``node`` is the ``send`` daphne passes."""
    if not isinstance(node, functools.partial) or not node.args:
        return None
    server = getattr(node.func, "__self__", None)
    if type(server).__module__ != "daphne.server":
        return None
    request = node.args[0]
    transport = getattr(request, "transport", None)
    if transport is None:
        channel = getattr(request, "channel", None)
        transport = getattr(channel, "transport", None)
    if not (callable(getattr(transport, "abortConnection", None)) and hasattr(transport, "dataBuffer")):
        return None  # HTTP/2 (Twisted's stream object), or a layout this edge does not know
    return DaphneConnection(server, request, transport, node)


class DaphneConnection:
    """The TCP connection of one daphne request."""

    __slots__ = ("_request", "_server", "_server_send", "_transport")

    def __init__(self, server: Any, request: Any, transport: Any, server_send: Callable[..., Any]) -> None:
        self._server = server
        self._request = request
        self._transport = transport
        self._server_send = server_send

    def bounded(self, trigger: Any) -> Callable[[Any], Any]:
        """The request's ``send``, bounded; daphne's shutdown made to wait for this app's drain."""
        _serving[self._request] = None
        _wait_before_shutdown(self._server)
        return self.send

    async def send(self, message: Any) -> None:
        await self._server_send(message)
        while self.held() > BOUND and self._transport.connected:
            await asyncio.sleep(POLL)

    def held(self) -> int:
        transport = self._transport
        try:
            return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)
        except (AttributeError, TypeError):
            return 0

    def _connection(self) -> Any:
        from ssesup.connection import Connection

        return Connection(None, getattr(self._transport, "socket", None))

    def release(self, peer_dead: bool = False) -> None:
        sock = getattr(self._transport, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        with contextlib.suppress(Exception):
            self._transport.abortConnection()  # Twisted drops its buffer and closes the socket: a reset

    def keeps_up(self) -> bool:
        transport = self._transport
        return bool(transport.connected) and not transport.disconnecting and self.held() == 0

    def unacknowledged(self) -> bool | None:
        unacknowledged: bool | None = self._connection().unacknowledged()
        return unacknowledged


# The requests whose apps are ssesup streams, as daphne knows them (its ``connections`` keys).
_serving: weakref.WeakKeyDictionary[Any, None] = weakref.WeakKeyDictionary()
_hooked: weakref.WeakSet[Any] = weakref.WeakSet()


def _wait_before_shutdown(server: Any) -> None:
    """Once per daphne server: its trigger before shutdown (which cancels every app) runs only after
    every app ssesup serves has returned."""
    if server in _hooked:
        return
    _hooked.add(server)
    try:
        from twisted.internet import reactor as twisted_reactor

        reactor: Any = twisted_reactor  # a trigger's id is the tuple Twisted's reactor makes of it
        reactor.removeSystemEventTrigger(("shutdown", ("before", server.kill_all_applications, (), {})))
    except Exception:  # not the trigger daphne added (another version): its shutdown is left as it is
        log.warning(
            "edge.daphne_drain_unhooked",
            hint="daphne's shutdown trigger was not found: a SIGTERM cancels streams without their farewell",
        )
        return
    reactor.addSystemEventTrigger("before", "shutdown", _drain_then_kill, server)


def _drain_then_kill(server: Any) -> Any:
    from twisted.internet import defer

    waited = defer.Deferred.fromFuture(asyncio.ensure_future(_apps_returned(server)))
    waited.addErrback(lambda failure: None)
    waited.addCallback(lambda _: server.kill_all_applications())
    return waited


async def _apps_returned(server: Any) -> None:
    deadline = time.monotonic() + LONGEST_WAIT
    while time.monotonic() < deadline:
        pending = [
            details["application_instance"]
            for request, details in list(server.connections.items())
            if request in _serving and "application_instance" in details
        ]
        if not any(not instance.done() for instance in pending):
            return
        await asyncio.sleep(POLL)
