"""The README's first command, as a new user runs it: a fresh virtual environment with nothing but
``pip install -e '.[uvicorn]'`` (no test extras to hide a missing dependency), then ``ssesup demo``
serves events."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

from procs import free_port, serve
from servers import raw_request, recv_until

ROOT = Path(__file__).resolve().parent.parent


def test_readme_first_command_works_in_a_fresh_environment(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", f"{ROOT}[uvicorn]"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], env=environment, capture_output=True, text=True
    ).stdout.lower()
    assert "pytest" not in installed and "trio" not in installed  # nothing of the test extras

    port = free_port()
    argv = [str(env_dir / "bin" / "ssesup"), "demo", "--port", str(port)]
    with serve(argv, port, tmp_path, env={**environment, "PYTHONPATH": ""}) as server:
        with raw_request(port, "/ticks?every=0.1&count=3") as sock:
            received = recv_until(sock, b'data: {"tick":0}', timeout=10)
        assert received.startswith(b"HTTP/1.1 200")
        assert b"event: tick\r\nid: 0\r\n" in received
        assert "Traceback" not in server.log()
