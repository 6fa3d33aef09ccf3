"""The network's edge per protocol and per server, behind ``ssesup.connection``.

``ssesup.connection`` is the one door the actor uses: it finds what stands behind a stream's ASGI
``send`` and hands back an object that can release it, say whether its peer keeps up, and read the
socket for a dead peer. What that object is depends on the protocol, and what it can do on the server:

* ``multiplexed``: the per-stream logic of a stream that shares its connection with others (HTTP/2,
  HTTP/3): ending it resets that stream alone; the connection is released only when its peer is dead
  (then every stream on it ends with it) or when nothing else lives on it and it does not drain; a
  per-stream bound on what the server holds for the stream, for servers whose ``send`` never waits.
* one adapter per server (``hypercorn``, ``granian``, ``daphne``): how that server's own objects reset
  one stream, say what it holds for it, and lead to its socket.

Owns: the ``ServerConnection`` protocol every adapter's object meets, and the list of adapters.
Does not own: finding the object behind a ``send`` (``ssesup.connection``), the stream's state (the actor).
"""

from __future__ import annotations

from typing import Protocol


class ServerConnection(Protocol):
    """What the actor asks of the edge behind a stream's ``send``, whatever the protocol and server."""

    def release(self, peer_dead: bool = False) -> None:
        """End what this stream holds now (a reset), discarding what is unsent."""

    def keeps_up(self) -> bool:
        """Whether a last small write would leave at once (nothing held, the peer reading)."""

    def unacknowledged(self) -> bool | None:
        """Whether sent bytes wait for the peer's acknowledgement (``None``: cannot be told)."""
