"""Real servers for the tests: uvicorn (asyncio) and hypercorn (trio) in a thread, on 127.0.0.1.

Each server listens on a socket the test binds itself (port 0, so no races for a free port) and is
reached through real sockets by a real client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class UvicornThread:
    """uvicorn serving ``app`` in a thread of its own, with its own event loop."""

    def __init__(self, app: Any, **config: Any) -> None:
        config.setdefault("log_level", "warning")
        config.setdefault("lifespan", "off")
        config.setdefault("timeout_graceful_shutdown", 2)
        self.sock = bound_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, **config))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self.sock])

        asyncio.run(serve())

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def call(self, fn: Any, timeout: float = 10) -> Any:
        """Run ``fn()`` on the server's event loop and return its result."""
        assert self.loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)


class HypercornTrioThread:
    """hypercorn serving ``app`` on trio, in a thread of its own."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = bound_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = threading.Event()
        self.token: Any = None
        self.shutdown: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import trio
        from hypercorn.config import Config
        from hypercorn.trio import serve

        config = Config()
        config.bind = [f"fd://{self.sock.fileno()}"]
        config.loglevel = "WARNING"
        config.graceful_timeout = 2

        async def main() -> None:
            self.shutdown = trio.Event()
            self.token = trio.lowlevel.current_trio_token()
            self.started.set()
            await serve(self.app, config, shutdown_trigger=self.shutdown.wait)

        trio.run(main)

    def __enter__(self) -> HypercornTrioThread:
        self.thread.start()
        assert self.started.wait(10)
        wait_until(lambda: _accepts(self.port), timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        import trio

        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self.shutdown.set, trio_token=self.token)
        self.thread.join(10)
        with contextlib.suppress(OSError):  # hypercorn closes the socket it was handed
            self.sock.close()

    def call(self, fn: Any) -> Any:
        import trio

        return trio.from_thread.run_sync(fn, trio_token=self.token)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@contextlib.contextmanager
def raw_request(port: int, path: str, *, rcvbuf: int | None = None, extra: str = "") -> Iterator[socket.socket]:
    """A plain socket that sent ``GET path``; the test reads (or stops reading) what comes back."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
    try:
        yield sock
    finally:
        sock.close()


def _read_until(sock: socket.socket, buf: bytes, enough: Any, where: str) -> bytes:
    """Read into ``buf`` until ``enough(buf)``; a closed connection before that is an error."""
    while not enough(buf):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed {where}; got {buf[-300:]!r}")
        buf += chunk
    return buf


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, bytes]:
    """Read a whole HTTP/1.1 response; return the head and the de-chunked body.

    Raises if the connection closes before the chunked body's terminator: a clean end of body is part
    of what the tests assert.
    """
    sock.settimeout(timeout)
    data = _read_until(sock, b"", lambda buf: b"\r\n\r\n" in buf, "before the response head")
    head, buf = data.split(b"\r\n\r\n", 1)
    body = b""
    while True:
        buf = _read_until(sock, buf, lambda buf: b"\r\n" in buf, "before the end of the chunked body")
        size_line, buf = buf.split(b"\r\n", 1)
        size = int(size_line, 16)
        buf = _read_until(sock, buf, lambda buf, size=size: len(buf) >= size + 2, "inside a chunk")
        if size == 0:
            return head, body
        body += buf[:size]
        buf = buf[size + 2 :]


def recv_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    """Read from ``sock`` until ``marker`` has arrived; return all that was read."""
    sock.settimeout(timeout)
    return _read_until(sock, b"", lambda buf: marker in buf, f"before {marker!r} arrived")
