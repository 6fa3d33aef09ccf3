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
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol

import structlog

if TYPE_CHECKING:
    from ssesup.connection import Connection

log = structlog.get_logger("ssesup")

# What a server may hold of one stream before its send waits: the actor's own high-water mark, so that a
# stalled stream keeps at most this plus one chunk (64 KiB) on the server, besides the peer's window.
BOUND = 64 * 1024


class StreamServer(Protocol):
    """What a server adapter gives for one multiplexed connection."""

    connection: Connection | None  # the TCP connection under it (release, TCP_INFO), if found

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


class Peer:
    """One connection's peer: the streams ssesup serves on it, told when the peer is found dead."""

    __slots__ = ("__weakref__", "dead", "server", "streams")

    def __init__(self, server: StreamServer) -> None:
        self.server = server
        self.streams: dict[int, Callable[[], None]] = {}
        self.dead = False

    def join(self, stream_id: int, on_peer_dead: Callable[[], None] | None) -> None:
        if on_peer_dead is None:
            return
        streams = self.streams
        if len(streams) > 8 and len(streams) > 2 * len(self.server.live()):
            live = self.server.live()
            for gone in [sid for sid in streams if sid not in live]:
                del streams[gone]
        streams[stream_id] = on_peer_dead

    def died(self, stream_id: int) -> None:
        """``stream_id`` found the peer dead: every other stream on it is told, then the connection goes."""
        if not self.dead:
            self.dead = True
            live = self.server.live()
            for sid, tell in list(self.streams.items()):
                if sid != stream_id and sid in live:
                    try:
                        tell()
                    except Exception:
                        log.exception("edge.peer_dead_notice_failed", stream=sid)
            self.streams.clear()
        connection = self.server.connection
        if connection is not None:
            connection.release()


# The peers of the connections alive now, by the server's own connection object.
_peers: weakref.WeakKeyDictionary[Any, Peer] = weakref.WeakKeyDictionary()


def peer_of(key: Any, make: Callable[[], StreamServer]) -> Peer:
    peer = _peers.get(key)
    if peer is None:
        peer = _peers[key] = Peer(make())
    return peer


class MultiplexedStream:
    """The edge of one stream on a multiplexed connection: what ``find_connection`` returns for it."""

    __slots__ = ("_peer", "_server_send", "stream_id")

    def __init__(self, peer: Peer, stream_id: int, server_send: Callable[..., Any]) -> None:
        self._peer = peer
        self.stream_id = stream_id
        self._server_send = server_send

    def bounded(self, on_peer_dead: Callable[[], None] | None) -> Callable[[Any], Any]:
        """The stream's ``send`` with the per-stream bound; ``on_peer_dead`` is called when another
        stream on the connection finds the peer dead."""
        self._peer.join(self.stream_id, on_peer_dead)
        return self.send

    async def send(self, message: Any) -> None:
        await self._server_send(message)
        server = self._peer.server
        if server.held(self.stream_id) > BOUND:
            await server.emptied(self.stream_id)

    def release(self, peer_dead: bool = False) -> None:
        """End this stream now, what is unsent discarded: a reset of the stream alone; of the whole
        connection when the peer is dead, or when nothing else lives on it and it does not drain."""
        peer = self._peer
        if peer_dead:
            peer.died(self.stream_id)
            return
        server = peer.server
        server.reset(self.stream_id)
        connection = server.connection
        alone = not any(sid != self.stream_id for sid in server.live())
        if connection is not None and alone and not connection.keeps_up():
            connection.release()  # nothing else lives on a connection its peer does not read

    def keeps_up(self) -> bool:
        connection = self._peer.server.connection
        return connection is not None and connection.keeps_up() and self._peer.server.stream_keeps_up(self.stream_id)

    def unacknowledged(self) -> bool | None:
        connection = self._peer.server.connection
        return None if connection is None else connection.unacknowledged()
