"""Metrics under several worker processes (prometheus-client's multiprocess mode): uvicorn ``--workers 2``
and gunicorn, real sockets, a worker killed under load. The scrape sums the live workers and forgets a
dead one's open streams, while what the dead worker counted stays counted."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from apps.metrics_app import sample, scrape, serve, uvicorn
from servers import recv_until, wait_until

USERS = "/users/{user_id}/events"


def open_user_stream(port: int, user: str) -> tuple[socket.socket, int]:
    """A stream of the path-parameter route, open; returns the socket and the pid of its worker."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET /users/{user}/events?every=0.2&ping=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    hello = recv_until(sock, b"}\r\n\r\n")
    pid = json.loads(re.search(rb"data: (\{.*?\})\r\n", hello).group(1))["pid"]
    return sock, pid


def streams_on_both_workers(port: int) -> dict[int, list[socket.socket]]:
    """Open streams until both workers hold some.

    The kernel picks the worker of each connection, often the same one many times in a row. So each
    stream is opened while a request holds one worker's loop for a moment: it goes to the other.
    """
    by_pid: dict[int, list[socket.socket]] = {}
    for i in range(30):
        with socket.create_connection(("127.0.0.1", port)) as blocker:
            blocker.sendall(b"GET /pid?hold=0.3 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            time.sleep(0.05)
            sock, pid = open_user_stream(port, f"user{i}")
            recv_until(blocker, b"}")
        by_pid.setdefault(pid, []).append(sock)
        if len(by_pid) == 2 and sum(len(socks) for socks in by_pid.values()) >= 6:
            return by_pid
    raise AssertionError(f"30 streams did not reach two workers: { ({pid: len(s) for pid, s in by_pid.items()}) }")


def active(url: str) -> float | None:
    return sample(url, "ssesup_streams_active", route=USERS, state="streaming")


def live_files(directory: Path, pid: int) -> list[str]:
    return sorted(path.name for path in directory.glob(f"gauge_live*_{pid}.db"))


def close_all(by_pid: dict[int, list[socket.socket]]) -> None:
    for socks in by_pid.values():
        for sock in socks:
            sock.close()


@pytest.fixture
def multiproc_dir(tmp_path) -> Path:
    directory = tmp_path / "prometheus-multiproc"
    directory.mkdir()
    return directory


def test_uvicorn_workers_sum_live_streams_and_forget_a_killed_worker(tmp_path, multiproc_dir):
    command = uvicorn("--workers", "2", "--log-level", "warning")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    with serve(command, tmp_path / "uvicorn.log", env) as server:
        by_pid = streams_on_both_workers(server.port)
        try:
            total = sum(len(socks) for socks in by_pid.values())
            # Every scrape, whichever worker serves it, shows the sum over both.
            for _ in range(6):
                scraped = scrape(server.url)
                streaming = frozenset({("route", USERS), ("state", "streaming")})
                assert scraped[("ssesup_streams_active", streaming)] == total
                assert scraped[("ssesup_streams_opened_total", frozenset({("route", USERS)}))] == total
            check = subprocess.run(
                ["promtool", "check", "metrics"], input=_metrics_text(server.url), capture_output=True, text=True
            )
            assert check.returncode == 0, check.stdout + check.stderr

            killed, survivor = sorted(by_pid, key=lambda pid: len(by_pid[pid]))
            assert live_files(multiproc_dir, killed)
            os.kill(killed, signal.SIGKILL)
            wait_until(lambda: active(server.url) == len(by_pid[survivor]), timeout=10)
            assert live_files(multiproc_dir, killed) == []
            assert sample(server.url, "ssesup_streams_opened_total", route=USERS) == total
        finally:
            close_all(by_pid)
        wait_until(lambda: active(server.url) == 0, timeout=10)
        closed = sample(server.url, "ssesup_streams_closed_total", route=USERS, reason="client_disconnect")
        assert closed == len(by_pid[survivor])
        assert server.process.poll() is None, server.log()


def test_gunicorn_child_exit_hook_drops_a_killed_workers_live_values_at_once(tmp_path, multiproc_dir):
    def command(port: int) -> list[str]:
        gunicorn = [sys.executable, "-m", "gunicorn", "apps.metrics_app:app", "--bind", f"127.0.0.1:{port}"]
        options = ["--worker-class", "uvicorn_worker.UvicornWorker", "--workers", "2", "--log-level", "warning"]
        return [*gunicorn, *options, "--config", "python:apps.gunicorn_conf"]

    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    with serve(command, tmp_path / "gunicorn.log", env) as server:
        by_pid = streams_on_both_workers(server.port)
        try:
            total = sum(len(socks) for socks in by_pid.values())
            assert active(server.url) == total
            killed, survivor = sorted(by_pid, key=lambda pid: len(by_pid[pid]))
            assert live_files(multiproc_dir, killed)
            os.kill(killed, signal.SIGKILL)
            # No scrape in between: gunicorn's master reaps the worker and its child_exit hook runs.
            wait_until(lambda: live_files(multiproc_dir, killed) == [], timeout=10)
            assert active(server.url) == len(by_pid[survivor])
            assert sample(server.url, "ssesup_streams_opened_total", route=USERS) == total
        finally:
            close_all(by_pid)
        wait_until(lambda: active(server.url) == 0, timeout=10)


def _metrics_text(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=5).text
