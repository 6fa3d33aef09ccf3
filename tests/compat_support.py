"""What the compat tests share: the two libraries under test, side by side, and an app wrapper that
records what an app raised to the server.

``sse_starlette`` patches uvicorn's ``Server.handle_exit`` when it is imported; :func:`library` undoes
that at once, so in-process servers of other tests are not touched (its shutdown is then driven by
setting ``AppStatus.should_exit``, or, for real signals, in a subprocess where the patch is left alone).
"""

from __future__ import annotations

import importlib
import re
import socket
import threading
from types import SimpleNamespace
from typing import Any

LIBRARIES = ("ssesup.compat", "sse_starlette")


def library(name: str) -> SimpleNamespace:
    """The public names of ``name`` (``ssesup.compat`` or ``sse_starlette``) as one namespace."""
    import uvicorn.server

    handle_exit = uvicorn.server.Server.handle_exit
    sse = importlib.import_module(f"{name}.sse")
    event = importlib.import_module(f"{name}.event")
    uvicorn.server.Server.handle_exit = handle_exit  # sse_starlette's import patched it: undone
    return SimpleNamespace(
        name=name,
        EventSourceResponse=sse.EventSourceResponse,
        AppStatus=sse.AppStatus,
        SendTimeoutError=sse.SendTimeoutError,
        ServerSentEvent=event.ServerSentEvent,
        JSONServerSentEvent=event.JSONServerSentEvent,
        ensure_bytes=event.ensure_bytes,
    )


class Raised:
    """An ASGI wrapper that records what the app raised to the server (and raises it on)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            with self.lock:
                self.errors.append(exc)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)


class Seen:
    """Things that happened, in order, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        with self.lock:
            self.items.append(item)

    def __call__(self) -> list[Any]:
        with self.lock:
            return list(self.items)


END_OF_BODY = b"\r\n0\r\n\r\n"


def read_until_end(sock: socket.socket, timeout: float = 15) -> bytes:
    """What the server sends until the chunked body ends or the connection closes (a body cut short)."""
    sock.settimeout(timeout)
    raw = b""
    while not raw.endswith(END_OF_BODY) and (chunk := sock.recv(65536)):
        raw += chunk
    return raw


def dechunked(raw: bytes) -> bytes:
    """The body of a raw HTTP/1.1 chunked response, however it ended."""
    rest = raw.split(b"\r\n\r\n", 1)[1]
    body = b""
    while (match := re.match(rb"([0-9a-f]+)\r\n", rest)) is not None:
        size = int(match.group(1), 16)
        body += rest[match.end() : match.end() + size]
        rest = rest[match.end() + size + 2 :]
    return body
