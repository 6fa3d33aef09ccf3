"""The network's edge: the TCP connection behind a stream's ASGI ``send``.

Owns: finding the server's connection object behind an ASGI ``send`` callable, releasing it (closed at
once with a reset, so its socket, file descriptor and kernel buffers are freed even when the peer
reads nothing or has vanished), reading whether the peer still acknowledges what was sent, and whether
the server's buffer of it is empty (the peer keeps up). Does
not own: deciding when (the actor asks, after its machine closed the stream) or why.

ASGI gives an application no handle on its connection, and a server that is asked to close a
connection whose peer does not read waits for its buffers to drain, forever for a stuck or vanished
peer. Every server keeps that handle behind the ``send`` it passes, through a short chain of closures
and bound methods (the app's middlewares wrap ``send`` in closures of their own). The servers known
here, and what each gives:

* uvicorn (httptools and h11, asyncio and uvloop; also as gunicorn's worker): ``send`` is a method of
  its request cycle, whose ``transport`` is the asyncio (or uvloop) transport.
* hypercorn on asyncio: ``send`` leads to its TCP server, whose ``writer`` holds the transport.
* hypercorn on trio: ``send`` leads to its TCP server, whose ``stream`` holds the trio socket (behind
  an ``SSLStream``'s ``transport_stream`` with TLS).
* hypercorn's HTTP/2 streams (asyncio and trio, h2c and TLS): one connection carries many streams, so a
  stream's edge is the stream, not the connection (``ssesup.edge.multiplexed``, ``ssesup.edge.hypercorn``):
  ending it resets that stream alone, a dead peer ends every stream on it, and its ``send`` is bounded.
  HTTP/3 streams have no TCP connection: none is found.

Releasing sets ``SO_LINGER`` to zero (a close then discards unsent bytes and resets the connection)
and aborts the transport; on trio the socket is shut down and closed (trio wakes the server's reader
and writer, which end with ``ClosedResourceError``). Where no connection can be found (another
server), nothing is done and the server closes the connection as it would have.

The actor asks :func:`supervised_send` once per stream for the ``send`` it should use (the server's own
for HTTP/1.1; for a multiplexed stream, its edge's bounded send), and :func:`find_connection` when it must
release a stream or read its peer; the object found has ``release(peer_dead=False)``, ``keeps_up()`` and
``unacknowledged()``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from ssesup.edge import ServerConnection, daphne, granian, hypercorn, sockets
from ssesup.edge.multiplexed import MultiplexedStream

# How many objects the search behind ``send`` looks at before it gives up (uvicorn's transport is
# three steps from a Starlette route's ``send``; each middleware adds one or two).
_SEARCH_BUDGET = 64
# Attributes through which the servers above lead from ``send`` to their connection.
_LEADS = ("transport", "writer", "stream", "transport_stream", "send", "app_send", "protocol_send", "_send")
_LINGER_ZERO = struct.pack("ii", 1, 0)
_NONE = object()  # the search ends with nothing found
log = structlog.get_logger("ssesup")
# struct tcp_info: u8 state, ca_state, retransmits, ...; u32 rto, ato, snd_mss, rcv_mss, unacked.
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_INFO_HEAD = struct.Struct("=BBBBBBBBIIIII")


class _Borrowed(socket.socket):
    """A socket object over a descriptor that its server owns, to read its options: it never closes the
    descriptor (dropped or collected, it lets go of it)."""

    __slots__ = ()

    def __del__(self) -> None:
        self.detach()


def _readable(sock: Any) -> Any:
    """What to read ``sock``'s options through: ``sock`` itself, or, for uvloop's stand-in (whose every
    ``getsockopt`` builds and detaches a socket object: 3.2 times the instructions of the read), a
    socket object of ssesup's own over its descriptor, made once. ``None`` when there is none."""
    if type(sock).__module__.startswith("uvloop"):
        try:
            return _Borrowed(sock.family, sock.type, sock.proto, sock.fileno())
        except (OSError, ValueError):
            return None
    return sock


class Connection:
    """The server's connection of one stream: a transport (asyncio, uvloop) or a trio socket."""

    __slots__ = ("_reader", "_socket", "_transport")

    def __init__(self, transport: Any, sock: Any) -> None:
        self._transport = transport
        self._socket = sock
        self._reader: Any = None  # what the dead-peer check reads through (_readable), once it has

    def release(self, peer_dead: bool = False) -> None:
        """Close the connection now, unsent bytes discarded (a reset), so nothing of it is left. One
        connection carries one stream here, so a dead peer (``peer_dead``) changes nothing."""
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        if self._transport is not None:
            self._transport.abort()
        elif sock is not None:
            with contextlib.suppress(OSError, ValueError):
                sock.shutdown(socket.SHUT_RDWR)
            # Closed too: trio wakes every task waiting on it (the server's reader and writer end with
            # ClosedResourceError), and the reset and the freed descriptor do not wait for the server
            # to close it (over HTTP/2 hypercorn does so only after its keep-alive timeout).
            with contextlib.suppress(OSError, ValueError):
                sock.close()

    def keeps_up(self) -> bool:
        """Whether everything written so far has left the server's own buffer for the kernel's (an
        asyncio or uvloop transport with an empty write buffer): a last small write will not wait on a
        peer that does not read. False where unknown (trio)."""
        transport = self._transport
        if transport is None:
            return False
        try:
            return transport.get_write_buffer_size() == 0 and not transport.is_closing()
        except (AttributeError, NotImplementedError):  # a transport that does not say (asyncio's base class)
            return False

    def unacknowledged(self) -> bool | None:
        """True while sent bytes wait for the peer's acknowledgement and the kernel is retransmitting
        them (the peer did not answer within a retransmission timeout); None where unknown."""
        sock = self._socket
        if sock is None or _TCP_INFO is None:
            return None
        reader = self._reader
        if reader is None:
            reader = self._reader = _readable(sock)
            if reader is None:
                return None
        try:
            # The server's socket object says whether the descriptor is still this connection's
            # (uvloop's stand-in forgets it when the transport closes): a descriptor closed and given
            # to a new connection is never read (nor is ssesup's own object over it ever closed).
            if reader is not sock and sock.fileno() != reader.fileno():
                return None
            info = reader.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_HEAD.size)
        except (OSError, ValueError):
            return None
        if len(info) < _TCP_INFO_HEAD.size:
            return None
        fields = _TCP_INFO_HEAD.unpack(info)
        retransmits: int = fields[2]
        unacked: int = fields[12]
        return unacked > 0 and retransmits > 0


def supervised_send(scope: Mapping[str, Any], send: Callable[..., Any], trigger: Callable[[Any], None]) -> Any:
    """The ``send`` a stream should use, looked up once when it starts: the server's own, or, for a
    stream multiplexed with others (HTTP/2) on a server the edge knows, its edge's send (hypercorn's
    waits while the server holds more than ``edge.multiplexed.BOUND`` bytes of the stream). ``trigger``,
    the stream's own, hears ``Trigger.DEAD_PEER`` when another stream on its connection finds the peer
    dead. Under granian the edge is found by the socket's two ends (``edge/granian.py``); under daphne its
    send is bounded and its shutdown waits for the drain (``edge/daphne.py``). HTTP/1.1 on other servers
    costs one look at the scope and two at the loaded modules. The first stream of each HTTP version
    checks that its connection can be found, and warns (``edge.connection_unknown``) where it cannot."""
    chosen = _choose(scope, send, trigger)
    if scope.get("http_version") not in _checked:
        _check(scope, chosen)
    return chosen


def _choose(scope: Mapping[str, Any], send: Callable[..., Any], trigger: Callable[[Any], None]) -> Any:
    if granian.serving() and _search(send, granian.is_protocol) is not None:
        edge = granian.stream_edge(scope, send)
        if isinstance(edge, MultiplexedStream):
            return edge.bounded(trigger)
        return send if edge is None else Found(send, edge)
    if daphne.serving():
        edge = _search(send, daphne.match)
        if edge is not None:
            return edge.bounded(trigger)
    if scope.get("http_version") not in ("2", "3"):
        if hypercorn.trio_serving():
            http_stream = _search(send, lambda node: node if hypercorn.is_http_stream(node) else None)
            if http_stream is not None:
                return hypercorn.unshielded_send(send, http_stream) or send
        return send
    multiplexed = find_connection(send)
    if isinstance(multiplexed, MultiplexedStream):
        return multiplexed.bounded(trigger)
    return send


# The HTTP versions whose first stream has been checked (once per process).
_checked: set[Any] = set()


def _check(scope: Mapping[str, Any], send: Callable[..., Any]) -> None:
    version = scope.get("http_version")
    _checked.add(version)
    found = find_connection(send)
    if found is None and _search(send, _in_process) is not None:
        return  # a test client calling the app in-process: there is no connection to reach
    if found is None or (granian.serving() and not sockets.readable()):
        log.warning(
            "edge.connection_unknown",
            http_version=str(version),
            hint="ssesup cannot reach this server's connections: a stuck client keeps its socket after "
            "send_timeout and may hold a deploy's exit, and a vanished peer is not detected; see the server "
            "matrix in docs/deploying.md",
        )


# Clients that call an app in-process, without a server or a connection.
_IN_PROCESS = ("ssesup.inprocess", "ssesup.testing", "starlette.testclient", "httpx._transports.asgi")


def _in_process(node: Any) -> bool:
    return type(getattr(node, "__self__", node)).__module__.startswith(_IN_PROCESS)


class Found:
    """A server's ``send`` with the edge that nothing behind it leads to (granian's socket), for
    :func:`find_connection` to find."""

    __slots__ = ("_send", "edge")

    def __init__(self, send: Callable[..., Any], edge: Any) -> None:
        self._send = send
        self.edge = edge

    async def __call__(self, message: Any) -> None:
        await self._send(message)


def find_connection(
    send: Callable[..., Any],
) -> ServerConnection | None:
    """The connection (for a multiplexed stream, the stream's edge) behind an ASGI ``send`` of a server
    this module knows, or ``None``."""
    found = _search(send, _as_connection)
    return None if found is _NONE else found


def _search(send: Callable[..., Any], match: Callable[[Any], Any]) -> Any:
    """The first ``match(node)`` that is not ``None`` over what stands behind ``send``, or ``None``."""
    seen: set[int] = set()
    queue: list[Any] = [send]
    while queue and len(seen) < _SEARCH_BUDGET:
        node = queue.pop(0)
        if id(node) in seen:
            continue
        seen.add(id(node))
        found = match(node)
        if found is not None and found is not False:
            return found
        owner = getattr(node, "__self__", None)
        if owner is not None:
            queue.append(owner)
        for cell in getattr(node, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                queue.append(cell.cell_contents)
        if owner is None and not hasattr(node, "__code__") and not isinstance(node, type):
            for name in _LEADS:  # an object of the server's: follow its known leads
                value = getattr(node, name, None)
                if value is not None:
                    queue.append(value)
    return None


def _as_connection(node: Any) -> Any:
    """What ``node`` is the edge of; ``_NONE`` where the search must stop with nothing (an HTTP/3
    stream: the transport behind it is a UDP socket every connection shares, never to be released)."""
    if isinstance(node, (MultiplexedStream, daphne.DaphneConnection)):
        return node
    if isinstance(node, Found):
        return node.edge
    if hypercorn.is_http_stream(node):
        version = getattr(node, "scope", {}).get("http_version")
        if version == "2":
            return hypercorn.stream_edge(node) or _NONE
        if version == "3":
            return _NONE
        return None  # HTTP/1.1: its connection is found through the stream's leads
    if callable(getattr(node, "abort", None)) and callable(getattr(node, "get_extra_info", None)):
        return Connection(node, node.get_extra_info("socket"))
    if type(node).__module__.startswith("trio") and type(node).__name__ == "SocketStream":
        return Connection(None, node.socket)
    return None
