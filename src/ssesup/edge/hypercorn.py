"""hypercorn's HTTP/2 streams (asyncio and trio workers, h2c and TLS with ALPN).

What stands behind the ``send`` hypercorn passes an app: its ``HTTPStream.app_send``; the stream holds
its id and ``send``, its connection's ``H2Protocol.stream_send``. The protocol holds the ``h2``
connection state, a buffer per stream that its send task empties as the peer's windows allow, the open
streams, its own task group, and ``send``, the TCP server's ``protocol_send``, behind which is the
socket.

* Reset one stream: ``h2``'s ``reset_stream`` (the stream's state is closed at once, so nothing more is
  framed for it), then, in a task of the connection's own task group, its buffer is closed (its bytes
  freed, a send waiting on it woken), the send task is woken to drop it, and the ``RST_STREAM`` frame is
  flushed through hypercorn's own send path, ``H2Protocol._flush`` (private, and the only way: looked up
  by name, and where a release lacks it the frame leaves with the connection's next send), in order with
  every frame before it.
* What the server holds of a stream: the length of its buffer. hypercorn's push into that buffer does
  not wait for a stalled stream (hypercorn 0.18: its send task empties nothing from a stream whose window
  is shut, yet sets the event the push waits on, so every push goes on), hence the bound in
  ``multiplexed.MultiplexedStream.send``; the wait is on the buffer's own ``drain()``.
* HTTP/3 (QUIC over UDP) has no TCP connection to read or release: nothing is found, so nothing is done.
* HTTP/1.1 on trio: hypercorn writes in a shielded scope; a stream's sends run in tasks of the
  connection's nursery (``UnshieldedSend``), so that a send to a client that stopped reading can be
  given up and the connection released.

Owns: hypercorn's HTTP/2 stream objects (reset one stream, its buffered bytes, its connection's
peer) and the unshielded send on trio's HTTP/1.1. Does not own: the per-stream rules
(``edge/multiplexed.py``), hypercorn's HTTP/1.1 on asyncio (``ssesup.connection``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Collection
from typing import Any

from ssesup.edge.multiplexed import MultiplexedStream, Peer, peer_of

try:  # hypercorn depends on h2; where it is missing there is no hypercorn HTTP/2 stream to meet
    import h2.errors
    import h2.exceptions

    _CANCEL: Any = h2.errors.ErrorCodes.CANCEL
    _H2_ERRORS: tuple[type[BaseException], ...] = (h2.exceptions.ProtocolError, KeyError)
except ImportError:  # pragma: no cover
    _CANCEL = 8
    _H2_ERRORS = (KeyError,)


def is_http_stream(node: Any) -> bool:
    kind = type(node)
    return kind.__name__ == "HTTPStream" and kind.__module__.startswith("hypercorn.")


def stream_edge(http_stream: Any) -> MultiplexedStream | None:
    """The edge of a hypercorn HTTP/2 stream, or ``None`` (another protocol, or an unknown layout)."""
    protocol = getattr(getattr(http_stream, "send", None), "__self__", None)
    if type(protocol).__name__ != "H2Protocol" or not hasattr(protocol, "stream_buffers"):
        return None
    server = HypercornH2(protocol)  # holds the protocol: made per stream, never kept by the protocol's key
    peer = peer_of(protocol, lambda: Peer(server.connection))
    return MultiplexedStream(peer, server, http_stream.stream_id, http_stream.app_send)


class HypercornH2:
    """One hypercorn HTTP/2 connection, as ``multiplexed.StreamServer`` asks."""

    __slots__ = ("_protocol", "connection")

    def __init__(self, protocol: Any) -> None:
        from ssesup.connection import find_connection

        self._protocol = protocol
        self.connection = find_connection(protocol.send)  # the TCP server's writer (asyncio) or stream (trio)

    def live(self) -> Collection[int]:
        """The streams open on the connection: hypercorn's, less those whose HTTP/2 state is closed
        (reset, or ended) while their app has not returned yet."""
        protocol = self._protocol
        states = protocol.connection.streams
        return [sid for sid in protocol.streams if sid in states and not states[sid].closed]

    def reset(self, stream_id: int) -> None:
        protocol = self._protocol
        with contextlib.suppress(*_H2_ERRORS):
            protocol.connection.reset_stream(stream_id, _CANCEL)
        with contextlib.suppress(RuntimeError):  # the connection's task group has ended: nothing to flush
            protocol.task_group.spawn(_after_reset, protocol, stream_id)

    def held(self, stream_id: int) -> int:
        buffer = self._protocol.stream_buffers.get(stream_id)
        return 0 if buffer is None else len(buffer.buffer)

    async def emptied(self, stream_id: int) -> None:
        buffer = self._protocol.stream_buffers.get(stream_id)
        if buffer is not None:
            await buffer.drain()

    def drains(self) -> bool:
        connection = self.connection
        try:
            window = self._protocol.connection.outbound_flow_control_window
        except AttributeError:
            return False
        return connection is not None and connection.keeps_up() and bool(window > 0)

    def stream_keeps_up(self, stream_id: int) -> bool:
        if self.held(stream_id):
            return False
        try:
            return bool(self._protocol.connection.local_flow_control_window(stream_id) > 0)
        except _H2_ERRORS:
            return False


async def _after_reset(protocol: Any, stream_id: int) -> None:
    """In the connection's task group: free the reset stream's buffer, have the send task drop it, and
    flush the ``RST_STREAM`` frame."""
    buffer = protocol.stream_buffers.get(stream_id)
    if buffer is not None:
        await buffer.close()
    with contextlib.suppress(Exception):  # not in the priority tree any more: nothing to wake
        protocol.priority.unblock(stream_id)
    await protocol.has_data.set()
    flush = getattr(protocol, "_flush", None)  # private, with no public way: where absent, the next send flushes
    if flush is not None:
        await flush()


# -- HTTP/1.1 on trio ------------------------------------------------------------------------------------


def trio_serving() -> bool:
    return "hypercorn.trio.tcp_server" in sys.modules


def unshielded_send(send: Any, http_stream: Any) -> UnshieldedSend | None:
    """For an HTTP/1.1 stream of hypercorn's trio worker: ``send`` run where a cancellation reaches it."""
    task_group = getattr(http_stream, "task_group", None)
    if type(task_group).__module__ != "hypercorn.trio.task_group" or not callable(getattr(task_group, "spawn", None)):
        return None
    spawn = getattr(task_group, "spawn", None)
    return None if spawn is None else UnshieldedSend(send, spawn)


class UnshieldedSend:
    """hypercorn's trio worker writes to its socket in a shielded cancel scope, so a send to a client that
    stopped reading could not be cancelled: the stream's send deadline or farewell budget passed, and
    the stream waited in that send forever, never reaching the release that would end it (its socket
    kept, a drain never finished). Here each send runs in a task of the connection's own nursery, and
    the stream waits for it unshielded: cancelled, the stream goes on to release the connection, which
    ends the write (``ClosedResourceError``, which hypercorn handles)."""

    __slots__ = ("_send", "_spawn")

    def __init__(self, send: Any, spawn: Any) -> None:
        self._send = send
        self._spawn = spawn

    async def __call__(self, message: Any) -> None:
        import trio

        done = trio.Event()
        outcome: list[Exception | None] = []

        async def write() -> None:
            try:
                await self._send(message)
                outcome.append(None)
            except Exception as error:
                outcome.append(error)
            finally:
                done.set()

        self._spawn(write)
        await done.wait()
        if not outcome:  # the connection's nursery was cancelled: the connection is gone
            raise ConnectionError("the connection ended during a send")
        if outcome[0] is not None:
            raise outcome[0]
