"""nginx in front of a real server, for tests/test_nginx.py: the configuration docs/deploying.md shows.

Owns: building nginx's configuration from the ```` ```nginx ```` block of docs/deploying.md, verbatim,
with one documented substitution (the doc's upstream address ``127.0.0.1:8000`` becomes the test
server's, that string only) and the edits a test names; running Debian's nginx on 127.0.0.1 with
everything it writes in a temporary directory (scripts/install-nginx.sh installs it); the upstream app
those tests serve (``uvicorn nginx_proxy:app``); and an SSE client that times what arrives.
Does not own: the measurements (the tests) or ssesup's behaviour.

The doc's block holds ``upstream`` blocks (they go into ``http {}``) and ``location`` blocks (into
``server { listen 127.0.0.1:PORT; }``); this module wraps them in that, with the pid file, logs and
temporary files in the test's directory, and starts ``nginx -p DIR -c nginx.conf -g 'daemon off;'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from doc_blocks import ROOT, Block, fenced_blocks
from ssesup import Event, SupervisedStream

DEPLOYING = ROOT / "docs" / "deploying.md"
DOC_UPSTREAM = "127.0.0.1:8000"
HTTP_LEVEL = ("upstream",)  # top-level statements of the doc's block that belong in http {}


def doc_block(lang: str, containing: str = "") -> Block:
    """The one ```` ```lang ```` block of docs/deploying.md (that contains ``containing``)."""
    blocks = [b for b in fenced_blocks(DEPLOYING, lang) if containing in b.code]
    assert len(blocks) == 1, f"docs/deploying.md has {len(blocks)} {lang} blocks containing {containing!r}"
    return blocks[0]


def top_level_statements(text: str) -> list[str]:
    """Split nginx configuration text into its top-level statements (a block, or a directive)."""
    statements, current, depth = [], "", 0
    for line in text.splitlines(keepends=True):
        current += line
        code = re.sub(r"#.*", "", re.sub(r'"[^"]*"', '""', line))  # braces in strings or comments
        for char in code:
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
        if depth == 0 and code.rstrip().endswith(("}", ";")):
            statements.append(current.strip("\n"))
            current = ""
    assert depth == 0 and not current.strip(), f"unbalanced nginx configuration:\n{text}"
    return statements


def nginx_config(directory: Path, listen_port: int, upstream_port: int, edits: dict[str, str] | None = None) -> str:
    """The doc's nginx block in a minimal ``http {}``, proxying to ``upstream_port``.

    ``edits`` replaces text in the doc's block; each text to replace must occur exactly once, so a test
    says precisely how its configuration differs from the doc's.
    """
    text = doc_block("nginx").code
    assert text.count(DOC_UPSTREAM) == 1, f"the doc's upstream is {DOC_UPSTREAM}, once"
    text = text.replace(DOC_UPSTREAM, f"127.0.0.1:{upstream_port}")
    for old, new in (edits or {}).items():
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in the doc's nginx block"
        text = text.replace(old, new)
    statements = top_level_statements(text)
    http_level = [s for s in statements if s.split()[0] in HTTP_LEVEL]
    server_level = [s for s in statements if s.split()[0] not in HTTP_LEVEL]
    return f"""\
worker_processes 1;
{"user root;" if os.geteuid() == 0 else ""}
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
{_indent(http_level, 4)}
    server {{
        listen 127.0.0.1:{listen_port};
{_indent(server_level, 8)}
    }}
}}
"""


def _indent(statements: list[str], spaces: int) -> str:
    return "\n".join(" " * spaces + line for s in statements for line in s.splitlines())


@dataclass
class Nginx:
    process: subprocess.Popen
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    assert found, "nginx is not installed: run scripts/install-nginx.sh"
    return found


@contextlib.contextmanager
def run_nginx(directory: Path, upstream_port: int, edits: dict[str, str] | None = None) -> Iterator[Nginx]:
    """nginx with the doc's configuration on a free port of 127.0.0.1, stopped (SIGTERM) at the end."""
    from procs import free_port

    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (directory / "nginx.conf").write_text(nginx_config(directory, port, upstream_port, edits))
    argv = [nginx_binary(), "-p", str(directory), "-c", "nginx.conf", "-e", "error.log", "-g", "daemon off;"]
    with open(directory / "nginx.out", "wb") as out:
        process = subprocess.Popen(argv, cwd=directory, stdout=out, stderr=subprocess.STDOUT)
    nginx = Nginx(process, port, directory)
    try:
        deadline = time.monotonic() + 10
        while not _accepts(port):
            output = (directory / "nginx.out").read_text(errors="replace")
            assert process.poll() is None, f"nginx exited ({process.returncode}): {output}{nginx.error_log()}"
            assert time.monotonic() < deadline, f"nginx did not listen: {output}{nginx.error_log()}"
            time.sleep(0.02)
        yield nginx
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# -- the upstream app ---------------------------------------------------------------------------------


async def ticks(request: Request) -> SupervisedStream:
    """``/ticks?every=S&count=N&ping=S``: the demo's ticks (ending at the last one), each stamped with
    the server's monotonic clock when it was made (``at``: CLOCK_MONOTONIC, one clock for every process
    of the machine)."""
    every = float(request.query_params.get("every", "1"))
    count = int(request.query_params.get("count", "0"))
    ping = float(request.query_params.get("ping", "15"))

    async def gen():
        for i in itertools.count() if count <= 0 else range(count):
            if i:
                await anyio.sleep(every)
            yield Event.json({"tick": i, "at": time.monotonic()}, id=str(i), event="tick")

    return SupervisedStream(gen(), ping=ping)


app = Starlette(routes=[Route("/ticks", ticks)])


# -- the client ---------------------------------------------------------------------------------------


@dataclass
class Received:
    """What one SSE client got: each event's fields with the time it arrived, and how the body ended."""

    opened_at: float
    events: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    comments: list[float] = field(default_factory=list)
    ended_at: float = 0.0
    cut: str | None = None  # why the body did not end cleanly (no chunked terminator), or None

    def latencies(self) -> list[float]:
        """Seconds from each tick being made (its ``at``) to its arrival here."""
        return [arrived - json.loads(e["data"])["at"] for arrived, e in self.events if e.get("event") == "tick"]

    def retries(self) -> list[str]:
        return [e["retry"] for _, e in self.events if "retry" in e]


async def receive(url: str, first_event: asyncio.Event | None = None, timeout: float = 30) -> Received:
    """Read the SSE stream at ``url`` to its end; set ``first_event`` when the first event arrives."""
    import httpx

    received = Received(time.monotonic())
    fields: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=timeout) as client, client.stream("GET", url) as response:
        assert response.status_code == 200, response.status_code
        try:
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    received.comments.append(time.monotonic())
                elif line:
                    name, _, value = line.partition(":")
                    fields[name] = fields.get(name, "") + value.removeprefix(" ")
                elif fields:
                    received.events.append((time.monotonic(), fields))
                    fields = {}
                    if first_event is not None:
                        first_event.set()
        except httpx.HTTPError as error:
            received.cut = f"{type(error).__name__}: {error}"
    received.ended_at = time.monotonic()
    return received
