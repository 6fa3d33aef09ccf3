"""No secret in the log. ``EventSource`` cannot send headers, so credentials travel in query strings and
cookies; with ``rich`` installed (typer and fastapi-cli pull it in), structlog's console renderer printed
each frame's local variables in tracebacks, a failing generator's token among them. A real uvicorn,
its access log on, gets credentials all three ways (query, ``Authorization``, cookie) through every
ending a test can cause on the loopback (completed, client_disconnect, error, send_timeout, expired,
revoked, drained; refused with 429, 401 and 503 while draining; the drain endpoint refusing a wrong
token); the whole log names the users and never a credential, with
structlog unconfigured and with ``configure_logging`` (console, JSON)."""

from __future__ import annotations

import importlib.util
import json
import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from apps.metrics_app import sample
from procs import free_port, serve, uvicorn_argv
from servers import wait_until
from test_revocation import Held

HOW = ("query", "header", "cookie")


def test_rich_is_installed_the_renderer_that_printed_locals():
    assert importlib.util.find_spec("rich") is not None  # the test extra installs it: the case is real


class Credentials:
    """Tokens issued by the app, sent one way each; every secret sent is kept, to be looked for."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.secrets: list[str] = []

    def token(self, user: str, ttl: float = 60) -> str:
        token = httpx.post(f"{self.url}/token", params={"user": user, "ttl": ttl}).json()["token"]
        self.secrets += [token, token.rpartition(".")[2]]
        return token

    def request(self, path: str, token: str, how: str) -> dict:
        url = httpx.URL(self.url + path)
        if how == "query":
            return {"url": url.copy_merge_params({"token": token}), "headers": {}}
        if how == "header":
            return {"url": url, "headers": {"Authorization": f"Bearer {token}"}}
        return {"url": url, "headers": {"Cookie": f"token={token}"}}

    def get(self, path: str, token: str, how: str) -> httpx.Response:
        return httpx.get(**self.request(path, token, how), timeout=10)

    def hold(self, path: str, token: str, how: str) -> Held:
        request = self.request(path, token, how)
        return Held(str(request["url"]), headers=request["headers"]).start()


@pytest.mark.parametrize("logging_mode", ["unconfigured", "console", "json"])
def test_no_credential_reaches_the_log_through_any_ending(tmp_path, logging_mode):
    port = free_port()
    env = {"SSESUP_MAX_PER_USER": "3"}
    if logging_mode != "unconfigured":
        env["SSESUP_LOG"] = logging_mode
    argv = uvicorn_argv("apps.identity_app:app", port, "--log-level", "info")  # the access log on
    with serve(argv, port, tmp_path, env=env) as server:
        credentials = Credentials(server.url)
        kept: list[Held] = []
        for how in HOW:
            user = f"user-{how}"
            # completed
            response = credentials.get("/count?n=3", credentials.token(user), how)
            assert response.status_code == 200 and response.text.count("event: tick") == 3
            # client_disconnect
            gone = credentials.hold("/plain", credentials.token(user), how)
            gone_client = httpx.Client()
            with gone_client.stream("GET", **credentials.request("/plain", credentials.token(user), how)) as early:
                next(early.iter_raw())
            gone_client.close()
            # error: the generator fails holding the request's credentials in its locals
            response = credentials.get("/fail", credentials.token(user), how)
            assert "about to fail" in response.text
            # expired
            expiring = credentials.hold("/plain", credentials.token(user, ttl=0.6), how)
            # revoked
            revoked = credentials.hold("/events?channels=news", credentials.token(user), how)
            # refused: over the per-user cap (gone, expiring, revoked and this one: 4 > 3) ...
            refused = credentials.get("/plain", credentials.token(user), how)
            assert refused.status_code == 429
            # ... and a credential that is not one (401, the app's)
            assert credentials.get("/plain", credentials.token(user) + "0", how).status_code == 401
            wait_until(lambda: expiring.ended_at, timeout=5)  # noqa: B023
            httpx.post(f"{server.url}/disconnect", params={"user": user})
            wait_until(lambda: revoked.ended_at and gone.ended_at, timeout=5)  # noqa: B023
            assert expiring.names[-1] == "expired" and revoked.names[-1] == "revoked"
            kept.append(credentials.hold("/events?channels=news", credentials.token(f"keeper-{how}"), how))
        # send_timeout: clients that stop reading a flood, each with its credential sent its own way.
        stalled = []
        for how in HOW:
            request = credentials.request("/flood", credentials.token(f"user-{how}"), how)
            target = request["url"].raw_path.decode()
            headers = "".join(f"{name}: {value}\r\n" for name, value in request["headers"].items())
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
            stalled.append(sock)
        timed_out = {"route": "/flood", "reason": "send_timeout"}
        wait_until(lambda: (sample(server.url, "ssesup_streams_closed_total", **timed_out) or 0) >= 3, timeout=20)
        for sock in stalled:
            sock.close()
        # The drain endpoint: a wrong token refused (and never logged), then the drain.
        wrong = "wrong-drain-token-that-must-not-be-logged-42"
        credentials.secrets.append(wrong)
        assert httpx.post(f"{server.url}/drain", headers={"Authorization": f"Bearer {wrong}"}).status_code == 403
        from apps.identity_app import DRAIN_TOKEN

        credentials.secrets.append(DRAIN_TOKEN)
        assert httpx.post(f"{server.url}/drain", headers={"Authorization": f"Bearer {DRAIN_TOKEN}"}).status_code == 202
        wait_until(lambda: all(h.ended_at for h in kept), timeout=10)
        for how in HOW:  # refused while draining (503), credentials and all
            assert credentials.get("/plain", credentials.token(f"user-{how}"), how).status_code == 503
        server.signal(signal.SIGTERM)
        server.process.wait(15)
        log = server.log()
    for secret in credentials.secrets:
        assert secret not in log, f"{secret!r} is in the log:\n{log}"
    for how in HOW:
        assert f"user-{how}" in log  # the log names the stream's user
    for reason in ("completed", "client_disconnect", "error", "send_timeout", "expired", "revoked", "drained"):
        assert reason in log, reason
    assert "max_streams_per_user" in log and "drain.auth_failed" in log
    assert "token=***" in log  # the access log's query values, redacted
    if logging_mode == "json":  # the traceback is there, structured, without its locals
        failed = [json.loads(line) for line in log.splitlines() if "stream.generator_failed" in line]
        assert failed and failed[0]["exception"][0]["exc_type"] == "RuntimeError"
        assert "locals" not in json.dumps(failed)
    else:  # the traceback is there, without its locals
        assert "RuntimeError: the generator failed" in log


RENDERERS = """
import logging, sys
import anyio, structlog
from starlette.applications import Starlette
from starlette.routing import Route
from ssesup import Event, SupervisedStream, Supervisor
from ssesup.testing import SSEClient
import ssesup.logs

mode = sys.argv[1]
if mode == "configure_logging":
    ssesup.logs.configure_logging()
elif mode == "app_console":  # an app that configured structlog itself, with its console renderer's defaults
    structlog.configure(processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer()])
elif mode == "structlog_stdlib":  # configure_structlog and a dictConfig with ssesup's formatter
    ssesup.logs.configure_structlog()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ssesup.logs.log_formatter())
    logging.getLogger("ssesup").addHandler(handler)

async def route(request):
    async def gen():
        secret_token = request.query_params["token"]
        yield Event("hello")
        raise RuntimeError("the generator failed")
    return SupervisedStream(gen())

app = Starlette(routes=[Route("/e", route)])
Supervisor(metrics=False).install(app)
SSEClient(app).stream("/e?token=TOKEN-IN-A-LOCAL-0123")
"""


@pytest.mark.parametrize("mode", ["unconfigured", "configure_logging", "app_console", "structlog_stdlib"])
def test_tracebacks_carry_no_local_variables_whatever_renders_them(mode):
    script = textwrap.dedent(RENDERERS)
    result = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert "RuntimeError: the generator failed" in output, output
    assert "stream.generator_failed" in output
    assert "TOKEN-IN-A-LOCAL" not in output, output


def test_redact_query_writes_every_value_as_stars():
    from ssesup.logs import redact_query

    line = '127.0.0.1:5000 - "GET /events?token=abc.def&channels=a%2Cb HTTP/1.1" 200'
    assert redact_query(line) == '127.0.0.1:5000 - "GET /events?token=***&channels=*** HTTP/1.1" 200'
    assert redact_query("/plain") == "/plain"
    assert redact_query("/x?") == "/x?"
    started = time.perf_counter()
    for _ in range(1000):
        redact_query("/plain")
    assert time.perf_counter() - started < 0.05  # no query: one membership test
