"""A redis-server of a test's own (``RedisServer``) and its pytest fixtures: ``redis_server`` (one per
module) and ``redis_url`` (flushed for each test)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from procs import free_port
from servers import wait_until


class RedisServer:
    """A redis-server of the test's own on a free port, persisting every write (appendfsync always), so
    a restart keeps every acknowledged publish."""

    def __init__(self, directory: Path) -> None:
        assert shutil.which("redis-server"), "redis-server is missing: run scripts/install-redis.sh"
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)]
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self._answers, timeout=10, interval=0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)

    def restart(self, down_for: float) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, (self.directory / "redis.log").read_text()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_workers(tmp_path, redis_url):
    """``apps.identity_app`` under ``uvicorn --workers 2`` on the hub's Redis."""
    from procs import serve, uvicorn_argv

    port = free_port()
    argv = uvicorn_argv("apps.identity_app:app", port, "--workers", "2", "--log-level", "warning")
    with serve(argv, port, tmp_path, env={"SSESUP_HUB_URL": redis_url}) as server:
        yield server
