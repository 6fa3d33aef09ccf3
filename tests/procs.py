"""Servers as subprocesses, for the tests that send them signals, and a many-stream raw client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)


@contextlib.contextmanager
def running(
    argv: list[str], log_path: Path, env: dict[str, str], ready: Callable[[], bool], timeout: float, where: str
) -> Iterator[subprocess.Popen]:
    """Start ``argv`` in a process group of its own (output to ``log_path``), wait until ``ready()``
    (failing with its log if it exits or ``timeout`` passes), kill the whole group at the end."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if process.poll() is not None:
                raise RuntimeError(
                    f"server exited early ({process.returncode}):\n{log_path.read_text(errors='replace')}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer {where}:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def serve(argv: list[str], port: int, tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """Run ``argv`` (a server command listening on ``port``), wait until it accepts, kill it at the end."""
    log_path = tmp_path / f"server-{port}.log"
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    environment = {**os.environ, "PYTHONPATH": path, **(env or {})}
    with running(argv, log_path, environment, lambda: _accepts(port), 20, "on 127.0.0.1") as process:
        yield ServerProcess(process, port, log_path)


def uvicorn_argv(app: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), *extra]


@dataclass
class StreamResult:
    body: bytes
    opened_at: float
    closed_at: float

    @property
    def ended_cleanly(self) -> bool:
        """The chunked body ended with its terminator: not a dropped connection."""
        return self.body.endswith(b"\r\n0\r\n\r\n")


async def open_stream(port: int, path: str, ready: asyncio.Event | None = None) -> StreamResult:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    body = b""
    opened_at = time.monotonic()
    while not body.endswith(b"\r\n0\r\n\r\n"):  # the end of the chunked body, or of the connection
        chunk = await reader.read(65536)
        if not chunk:
            break
        body += chunk
        if ready is not None and b"data: hello" in body:
            ready.set()
            ready = None
    writer.close()
    return StreamResult(body, opened_at, time.monotonic())


async def open_streams(port: int, path: str, count: int) -> tuple[list[asyncio.Task], float]:
    """Open ``count`` streams and wait until each has its first event."""
    events = [asyncio.Event() for _ in range(count)]
    tasks = []
    for event in events:
        tasks.append(asyncio.create_task(open_stream(port, path, event)))
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
    return tasks, time.monotonic()
