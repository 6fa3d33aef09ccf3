"""What ssesup says when a server gives it no signal to chain to: a warning at the first stream, not
a silent lack of drains."""

from __future__ import annotations

import sys

import pytest

from procs import free_port, serve
from servers import raw_request, recv_until


@pytest.mark.parametrize(
    "extra",
    [pytest.param(["-k", "trio"], id="hypercorn-trio"), pytest.param([], id="hypercorn-worker-process")],
)
def test_a_server_without_signal_handlers_gets_a_warning_at_the_first_stream(tmp_path, extra):
    port = free_port()
    argv = [sys.executable, "-m", "hypercorn", "apps.drain_app:app", "--bind", f"127.0.0.1:{port}", *extra]
    with serve(argv, port, tmp_path) as server:
        with raw_request(port, "/forever") as sock:
            recv_until(sock, b"data: hello")
        assert "drain.no_signal_to_chain" in server.log()


def test_uvicorn_chains_and_gives_no_such_warning(tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "apps.drain_app:app", "--port", str(port)]
    with serve(argv, port, tmp_path) as server:
        with raw_request(port, "/forever") as sock:
            recv_until(sock, b"data: hello")
        assert "drain.no_signal_to_chain" not in server.log()
