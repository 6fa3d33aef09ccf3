"""One stream of a multiplexed connection (HTTP/2, HTTP/3): ended alone, bounded, told when its peer dies.

Owns the per-stream rules that hold whatever the server; a server adapter (``edge/hypercorn.py``)
says how its own objects do each step. The rules:

* Ending a stream that cannot be ended cleanly (its peer does not read it, its farewell did not fit in
  the budget) resets that stream alone (``RST_STREAM``): its siblings on the same connection, other
  tabs of a browser or other users behind a proxy, stream on. The connection itself is released as
  well only when no other stream lives on it and it does not drain (its peer reads nothing at all).
* A dead peer (the kernel retransmitting unacknowledged bytes) is the whole connection's: every stream
  ssesup serves on it is told (each closes with ``dead_peer``), then the connection is released.
* A server whose ``send`` returns before its stream's bytes can leave (hypercorn's HTTP/2 streams
  buffer without bound) gets a bound: once the server holds more than ``BOUND`` bytes of the stream, the
  send waits until the server has handed them to the protocol (the peer's window let them out). The
  actor's ``send_timeout`` then sees a send that waits, and memory per stream stays bounded.

Does not own: how a server resets a stream or reads its buffers (the adapters), the stream's state
(the actor).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ssesup import logs
from ssesup.states import Trigger

if TYPE_CHECKING:
    from ssesup.edge import ServerConnection

log = structlog.get_logger("ssesup")

# What a server may hold of one stream before its send waits: the actor's own high-water mark, so that a
# stalled stream keeps at most this plus one chunk (64 KiB) on the server, besides the peer's window.
BOUND = 64 * 1024


class StreamServer(Protocol):
    """What a server adapter gives for one multiplexed connection."""

    # The TCP connection under it, released with a stream's reset when nothing else lives on it and it
    # does not drain; None where that cannot be told (then only a dead peer releases it).
    connection: ServerConnection | None

    def live(self) -> Collection[int]:
        """The ids of the streams open on the connection (any response, not only ssesup's)."""

    def reset(self, stream_id: int) -> None:
        """End ``stream_id`` alone, now: a reset to the peer, what the server holds of it freed."""

    def held(self, stream_id: int) -> int:
        """Bytes of ``stream_id`` the server holds that the protocol has not taken yet."""

    async def emptied(self, stream_id: int) -> None:
        """Return once the server holds nothing of ``stream_id`` (or the stream is gone)."""

    def stream_keeps_up(self, stream_id: int) -> bool:
        """Nothing held for ``stream_id`` and its window open: a last small write will leave at once."""

    def drains(self) -> bool:
        """Whether the connection's peer reads it: the socket keeps up and the connection's own window
        (HTTP/2's, which the peer reopens as it reads any stream) is open."""


class Peer:
    """One connection's peer: the streams ssesup serves on it (weakly: an ended stream is forgotten),
    each told when the peer is found dead, and the connection to release then."""

    __slots__ = ("__weakref__", "connection", "dead", "streams")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.streams: dict[int, weakref.WeakMethod[Callable[[Trigger], None]]] = {}
        self.dead = False

    def join(self, token: int, trigger: Callable[[Trigger], None] | None) -> None:
        """``trigger`` (a stream's bound ``trigger``) hears ``Trigger.DEAD_PEER`` if another stream on
        this connection finds the peer dead."""
        if trigger is None:
            return
        streams = self.streams
        if len(streams) >= 16 and not len(streams) & (len(streams) - 1):  # at 16, 32, 64, ...: forget ended ones
            for gone in [key for key, ref in streams.items() if ref() is None]:
                del streams[gone]
        streams[token] = weakref.WeakMethod(trigger)

    def died(self, token: int) -> None:
        """The stream ``token`` found the peer dead: every other stream on it is told, then the
        connection is released."""
        if not self.dead:
            self.dead = True
            for key, ref in list(self.streams.items()):
                trigger = ref()
                if key != token and trigger is not None:
                    try:
                        trigger(Trigger.DEAD_PEER)
                    except Exception:
                        logs.exception("edge.peer_dead_notice_failed", stream=key)
            self.streams.clear()
        if self.connection is not None:
            self.connection.release(peer_dead=True)


# The peers of the connections alive now, by the server's own connection object.
_peers: weakref.WeakKeyDictionary[Any, Peer] = weakref.WeakKeyDictionary()


def peer_of(key: Any, make: Callable[[], Peer]) -> Peer:
    peer = _peers.get(key)
    if peer is None:
        peer = _peers[key] = make()
    return peer


class MultiplexedStream:
    """The edge of one stream on a multiplexed connection: what ``find_connection`` returns for it."""

    __slots__ = ("_peer", "_server", "_server_send", "stream_id")

    def __init__(self, peer: Peer, server: StreamServer, stream_id: int, server_send: Callable[..., Any]) -> None:
        self._peer = peer
        self._server = server
        self.stream_id = stream_id
        self._server_send = server_send

    def bounded(self, trigger: Callable[[Trigger], None] | None) -> Callable[[Any], Any]:
        """The stream's ``send`` with the per-stream bound; ``trigger`` hears ``Trigger.DEAD_PEER`` when
        another stream on the connection finds the peer dead."""
        self._peer.join(self.stream_id, trigger)
        return self.send

    async def send(self, message: Any) -> None:
        await self._server_send(message)
        server = self._server
        if server.held(self.stream_id) > BOUND:
            await server.emptied(self.stream_id)

    def release(self, peer_dead: bool = False) -> None:
        """End this stream now, what is unsent discarded: a reset of the stream alone; of the whole
        connection when the peer is dead, or when nothing else lives on it and it does not drain."""
        peer = self._peer
        if peer_dead:
            peer.died(self.stream_id)
            return
        server = self._server
        server.reset(self.stream_id)
        connection = server.connection
        alone = not any(sid != self.stream_id for sid in server.live())
        if connection is not None and alone and not server.drains():
            connection.release()  # nothing else lives on a connection its peer does not read

    def keeps_up(self) -> bool:
        connection = self._peer.connection
        return connection is not None and connection.keeps_up() and self._server.stream_keeps_up(self.stream_id)

    def unacknowledged(self) -> bool | None:
        connection = self._peer.connection
        return None if connection is None else connection.unacknowledged()
