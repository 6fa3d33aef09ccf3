"""granian (HTTP/1.1 and HTTP/2, TLS or not): a server in Rust, its connections out of Python's reach.

The ``send`` granian passes is a method of a Rust object (``granian._granian.ASGIHTTPProtocol``) with
nothing behind it that Python can follow. What is known: granian's ``send`` waits while the peer does
not read (so ``send_timeout`` fires), and the ASGI scope names both ends of the TCP connection (the
port as a string). So the connection is this process's socket with those two ends
(``edge/sockets.py``):

* HTTP/1.1: one stream per connection; releasing it is ``SO_LINGER`` 0 and ``shutdown`` of that socket
  (granian then drops the connection and closes it: a reset). Without it, a client that stopped reading
  kept its socket and megabytes of unsent bytes, and held a SIGTERM deploy's exit for as long as it
  stayed connected.
* HTTP/2: a stream that cannot be ended cleanly is left to granian, which holds it (bounded) for as long
  as its peer neither reads it nor leaves; its connection is released once no other stream of ssesup's
  lives on it (see ``_GranianH2``). A dead peer releases the socket at once, after every stream ssesup
  serves on it is told.

Owns: granian's stream edge from the scope's two ends (a socket of this process on HTTP/1.1, a
multiplexed stream on HTTP/2). Does not own: finding sockets by address (``edge/sockets.py``), the
per-stream rules of HTTP/2 (``edge/multiplexed.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from ssesup.edge.multiplexed import MultiplexedStream, Peer
from ssesup.edge.sockets import OwnSocket, normal

if TYPE_CHECKING:
    from ssesup.edge import ServerConnection

_MODULE = "granian._granian"


def serving() -> bool:
    """Whether granian is loaded in this process (it is, where it serves the app)."""
    return _MODULE in sys.modules


def is_protocol(node: Any) -> bool:
    return type(node).__module__ == _MODULE


def stream_edge(scope: Mapping[str, Any], send: Callable[..., Any]) -> OwnSocket | MultiplexedStream | None:
    """The edge of a granian stream, by the two ends the scope names; ``None`` when they are missing."""
    local, remote = normal(scope.get("server") or ()), normal(scope.get("client") or ())
    if local is None or remote is None:
        return None
    socket = OwnSocket(local, remote)
    if scope.get("http_version") != "2":
        return socket
    key = (local, remote)
    peer = _peers.get(key)
    if peer is None or peer.dead:
        peer = _peers[key] = Peer(socket)
        if len(_peers) >= 64 and not len(_peers) & (len(_peers) - 1):  # at 64, 128, ...: forget ended ones
            for gone in [k for k, p in _peers.items() if not any(ref() for ref in p.streams.values())]:
                del _peers[gone]
    return MultiplexedStream(peer, _GranianH2(peer), id(send), send)


# The peers of granian's HTTP/2 connections, by their two ends.
_peers: dict[tuple[Any, Any], Peer] = {}


class _GranianH2:
    """One granian HTTP/2 stream, as ``multiplexed.StreamServer`` asks. granian's send waits on the
    stream's own window (its buffer is bounded), and it resets a stream whose response ends unfinished,
    but not one whose window is shut (granian 2.8: it keeps the stream, its buffered bytes, and so the
    connection, past a SIGTERM, for as long as the peer neither reads it nor leaves). So a stream that
    could not be ended cleanly is left to granian, and its connection is released once no other stream
    of ssesup's lives on it (checked now and every second after): the peer's other streams end first,
    each in its own time (a drain's farewells), and then the stuck stream cannot hold the connection."""

    __slots__ = ("_peer",)
    connection: ServerConnection | None = None  # never released for one stream's sake: see reset

    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    def live(self) -> Collection[int]:
        return [token for token, ref in self._peer.streams.items() if _open(ref)]

    def reset(self, stream_id: int) -> None:
        peer = self._peer
        if peer.dead:
            return
        if any(token != stream_id for token in self.live()):
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to wait on
                asyncio.get_running_loop().call_later(STUCK_CHECK, self.reset, stream_id)
            return
        peer.dead = True  # nothing of ssesup's lives on it: the stuck stream must not keep it
        peer.connection.release()

    def held(self, stream_id: int) -> int:
        return 0

    async def emptied(self, stream_id: int) -> None:
        return None

    def stream_keeps_up(self, stream_id: int) -> bool:
        return False

    def drains(self) -> bool:
        return True  # never released for one stream's sake: see reset


# How often a connection left with a stuck HTTP/2 stream is looked at again.
STUCK_CHECK = 1.0


def _open(ref: Any) -> bool:
    trigger = ref()
    return trigger is not None and getattr(trigger.__self__, "close_reason", True) is None
