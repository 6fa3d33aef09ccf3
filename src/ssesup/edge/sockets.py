"""Sockets of this process found by their addresses, for servers whose connections Python cannot reach.

granian keeps its connections in Rust: nothing behind the ``send`` it passes leads to a socket. But the
socket is this process's own, and the ASGI scope names both of its ends (``server`` and ``client``).
The kernel's table of this network namespace's TCP sockets (``/proc/self/net/tcp`` and ``tcp6``) maps
the two addresses to the socket's inode, and this process's descriptors (``/proc/self/fd``) map the
inode to a descriptor. An :class:`OwnSocket` keeps the descriptor and the inode, and uses a duplicate
of the descriptor for each operation, checked to be the same socket (an inode is never reused while
its socket lives), closed at once: holding a duplicate would keep the socket open after the server
closed it.

Releasing a socket the server still owns: ``SO_LINGER`` 0, then ``shutdown``: the server's reads end
and its writes fail, so it drops the connection and closes its descriptor, which resets the
connection (unsent bytes discarded).

Linux only (``/proc``); elsewhere nothing is found and nothing is done.

Owns: the index of this process's TCP sockets by their two addresses, and an owned socket's release
and reading. Does not own: which server needs it (``edge/granian.py``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

Address = tuple[str, int]

# One rebuild of the index at most this often for lookups that may wait (a dead-peer check); a release
# rebuilds at once.
REBUILD_EVERY = 0.25


def _address(text: str) -> Address:
    """An address of /proc/net/tcp{,6} (hexadecimal, host byte order per 32-bit word) as (host, port)."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # Each 32-bit word is in host (little-endian) order.
    packed = raw[::-1] if len(raw) == 4 else b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    ip = ipaddress.ip_address(packed)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def normal(address: Any) -> Address | None:
    """An ASGI scope's ``(host, port)`` (granian gives the port as a string) in the index's form."""
    try:
        host, port = address[0], int(address[1])
        ip = ipaddress.ip_address(host)
    except (TypeError, ValueError, IndexError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), port


TABLES = ("/proc/self/net/tcp", "/proc/self/net/tcp6")


def readable() -> bool:
    """Whether this process can read its sockets' table (Linux's /proc)."""
    return os.access(TABLES[0], os.R_OK) and os.access("/proc/self/fd", os.R_OK)


def _connections() -> dict[int, tuple[Address, Address]]:
    """inode -> (local, remote) of this namespace's TCP sockets that are not listening."""
    found: dict[int, tuple[Address, Address]] = {}
    for table in TABLES:
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":  # LISTEN
                        continue
                    inode = int(fields[9])
                    if inode:
                        found[inode] = (_address(fields[1]), _address(fields[2]))
        except (OSError, ValueError, StopIteration):
            continue
    return found


def _descriptors() -> dict[int, int]:
    """inode -> descriptor of this process's sockets."""
    found: dict[int, int] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found[int(target[8:-1])] = int(name)
    return found


class _Index:
    """(local, remote) -> (descriptor, inode) of this process's TCP connections, rebuilt on a miss."""

    def __init__(self) -> None:
        self.by_address: dict[tuple[Address, Address], tuple[int, int]] = {}
        self.rebuilt_at = -1e9

    def find(self, local: Address, remote: Address, *, now: bool) -> tuple[int, int] | None:
        # A server bound to every address (0.0.0.0, ::) may name that as its end: then the port says it.
        key = (("", local[1]), remote) if ipaddress.ip_address(local[0]).is_unspecified else (local, remote)
        found = self.by_address.get(key)
        if found is None and (now or time.monotonic() - self.rebuilt_at >= REBUILD_EVERY):
            self.rebuild()
            found = self.by_address.get(key)
        return found

    def rebuild(self) -> None:
        descriptors = _descriptors()
        index: dict[tuple[Address, Address], tuple[int, int]] = {}
        for inode, (local, remote) in _connections().items():
            if inode in descriptors:
                index[(local, remote)] = index[(("", local[1]), remote)] = (descriptors[inode], inode)
        self.by_address = index
        self.rebuilt_at = time.monotonic()


_index = _Index()


class OwnSocket:
    """A TCP connection of this process that the server keeps out of Python's reach, by its two ends."""

    __slots__ = ("_found", "local", "remote")

    def __init__(self, local: Address, remote: Address) -> None:
        self.local = local
        self.remote = remote
        self._found: tuple[int, int] | None = None

    @contextlib.contextmanager
    def _duplicate(self, *, now: bool) -> Iterator[socket.socket | None]:
        """A duplicate of the socket's descriptor, checked to be the same socket, closed after use."""
        for attempt in (0, 1):
            if self._found is None or attempt:
                self._found = _index.find(self.local, self.remote, now=now or bool(attempt))
                if self._found is None:
                    break
            fd, inode = self._found
            try:
                copy = os.dup(fd)
            except OSError:
                self._found = None
                continue
            try:
                same = os.fstat(copy).st_ino == inode
            except OSError:
                same = False
            if not same:  # the descriptor was closed and reused: the socket is gone, or elsewhere now
                os.close(copy)
                self._found = None
                continue
            sock = socket.socket(fileno=copy)
            try:
                yield sock
            finally:
                sock.close()
            return
        yield None

    def release(self, peer_dead: bool = False) -> None:
        from ssesup.connection import Connection

        with self._duplicate(now=True) as sock:
            if sock is not None:
                Connection(None, sock).release()  # SO_LINGER 0, shutdown; the duplicate closed

    def keeps_up(self) -> bool:
        return False  # what the server holds of the connection is out of reach

    def unacknowledged(self) -> bool | None:
        from ssesup.connection import Connection

        with self._duplicate(now=False) as sock:
            return None if sock is None else Connection(None, sock).unacknowledged()
