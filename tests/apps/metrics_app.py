"""The app the observability tests run in real server processes (uvicorn, its workers, gunicorn).

``uvicorn apps.metrics_app:app --app-dir tests``. Routes:

* ``/users/{user_id}/events?count=N&every=S&ping=P&expires=E``: a route with a path parameter, whose
  streams serve that user; the first event tells the worker's pid, then a tick every ``S`` seconds, ``N``
  of them (0: until the client leaves); with ``E``, the stream expires ``E`` seconds after it opens;
* ``/broken``: one event, then the generator raises (closes with ``error``);
* ``/flood``: large events as fast as the client takes them (a stalled client hits the send timeout);
* ``/stuck-sync``: a sync generator that says hello, then blocks for good (its thread is abandoned when
  the client leaves);
* ``/channel?channel=C&send_timeout=S&user=U``: ``hub.stream`` of one channel (serving ``U``: counted in
  presence) of an in-memory hub (history
  of 100 events, mailboxes of 20; channel ``drops`` drops the oldest, the others close a slow consumer);
* ``POST /publish?channel=C&count=N&size=B``: publishes ``N`` events of ``B`` bytes of padding to ``C``;
* ``POST /runs?tokens=N&every=S&fail=0``: starts a run of the hub (``N`` tokens, one every ``S`` seconds;
  with ``fail=1`` its source raises after them);
* ``/admin/drain?grace=S``: drains this worker's streams (501 while the supervisor cannot drain);
* ``POST /admin/revoke?user=U``: ``supervisor.disconnect(U)`` (this worker's streams of ``U``);
* ``/pid?hold=S``: the pid of the worker and of its parent, after holding the worker's event loop ``S``
  seconds (meanwhile new connections go to another worker);
* ``/metrics``: ssesup's metrics, summed over workers in multiprocess mode.

``SSESUP_LOG_JSON=1`` turns on JSON logs. :func:`serve` runs a server command on this app for a test.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ssesup import Event, Hub, SupervisedStream, Supervisor
from ssesup.logs import configure_logging
from ssesup.metrics import metrics_app

supervisor = Supervisor(ping=0.5, send_timeout=1.0)

if os.environ.get("SSESUP_LOG_JSON"):
    configure_logging(json=True)


async def user_events(request: Request) -> SupervisedStream:
    user = request.path_params["user_id"]
    count = int(request.query_params.get("count", "0"))
    every = float(request.query_params.get("every", "0.2"))

    async def gen():
        yield Event.json({"pid": os.getpid(), "user": user}, event="hello")
        for i in itertools.count() if count <= 0 else range(count):
            await anyio.sleep(every)
            yield Event.json({"tick": i}, id=str(i), event="tick")

    ping = request.query_params.get("ping")
    expires = request.query_params.get("expires")
    expires_at = None if expires is None else time.time() + float(expires)
    return SupervisedStream(gen(), ping=None if ping is None else float(ping), user=user, expires_at=expires_at)


async def broken(request: Request) -> SupervisedStream:
    async def gen():
        yield Event("about to fail")
        raise RuntimeError("the generator failed")

    return SupervisedStream(gen())


async def flood(request: Request) -> SupervisedStream:
    async def gen():
        while True:
            yield Event("f" * 65536)
            await anyio.sleep(0)

    return SupervisedStream(gen(), ping=0)  # always busy: nothing to ping


_never = threading.Event()


def stuck_sync(request: Request) -> SupervisedStream:
    def gen():
        yield Event("hello")
        _never.wait()

    return SupervisedStream(gen())


_hub: list[Hub] = []  # made on first use: apps that never stream a channel have no hub metrics


def hub() -> Hub:
    if not _hub:
        _hub.append(Hub(history_size=100, mailbox_events=20, channel_overflow={"drops": "drop_oldest"}))
    return _hub[0]


async def channel(request: Request) -> SupervisedStream:
    send_timeout = request.query_params.get("send_timeout")
    options = {} if send_timeout is None else {"send_timeout": float(send_timeout)}
    user = request.query_params.get("user")
    return hub().stream(request, request.query_params.get("channel", "ticks"), user=user, **options)


async def publish(request: Request) -> Response:
    name = request.query_params.get("channel", "ticks")
    pad = "p" * int(request.query_params.get("size", "0"))
    count = int(request.query_params.get("count", "1"))
    ids = [await hub().publish(name, Event.json({"n": n, "pad": pad}, event="number")) for n in range(count)]
    return JSONResponse({"ids": ids})


async def revoke(request: Request) -> Response:
    return JSONResponse({"closed": await supervisor.disconnect(request.query_params["user"])})


_runs = itertools.count()


async def start_run(request: Request) -> Response:
    tokens = int(request.query_params.get("tokens", "10"))
    every = float(request.query_params.get("every", "0.1"))
    fail = request.query_params.get("fail") == "1"

    async def source():
        for i in range(tokens):
            yield Event(str(i), event="token")
            await anyio.sleep(every)
        if fail:
            raise RuntimeError("the run's source failed")

    channel = f"run:{next(_runs)}"
    await hub().start_run(channel, source())
    return JSONResponse({"channel": channel}, status_code=201)


async def drain(request: Request) -> Response:
    drain = getattr(supervisor, "drain", None)
    if drain is None:
        return JSONResponse({"drained": False}, status_code=501)
    summary = drain(float(request.query_params.get("grace", "1")))
    if inspect.isawaitable(summary):
        summary = await summary
    return JSONResponse({"drained": True, "summary": summary})


async def pid(request: Request) -> Response:
    time.sleep(float(request.query_params.get("hold", "0")))  # blocks the loop: that is the point
    return JSONResponse({"pid": os.getpid(), "ppid": os.getppid()})


app = supervisor.install(
    Starlette(
        routes=[
            Route("/users/{user_id}/events", user_events),
            Route("/broken", broken),
            Route("/flood", flood),
            Route("/stuck-sync", stuck_sync),
            Route("/channel", channel),
            Route("/publish", publish, methods=["POST"]),
            Route("/runs", start_run, methods=["POST"]),
            Route("/admin/drain", drain, methods=["POST"]),
            Route("/admin/revoke", revoke, methods=["POST"]),
            Route("/pid", pid),
            Route("/metrics", metrics_app()),
        ]
    )
)


# -- how the tests run this app ------------------------------------------------------------------------

TESTS = Path(__file__).parent.parent
APP = "apps.metrics_app:app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server command serving this app on 127.0.0.1:``port``, its output in ``log_path``."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def serve(command: Callable[[int], list[str]], log_path: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Run ``command(port)`` on a free port until it serves this app; kill its process group at the end.

    A free port can be taken by another program before the server binds it: then the server fails, or
    something else answers there. Either way the server is started again on another port.
    """
    # The tests' own PYTHONPATH after theirs (as tests/procs.py): a server runs the ssesup under test.
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    environment = {**os.environ, "PYTHONPATH": path, **(env or {})}
    for _ in range(3):
        port = free_port()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command(port), env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = Server(process, port, log_path)
        try:
            if _serves(server):
                yield server
                return
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    raise RuntimeError(f"the server did not start:\n{server.log()}")


def _serves(server: Server) -> bool:
    """Wait until ``server`` answers; whether it is the one that answers on its port."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            answer = httpx.get(server.url + "/pid", timeout=1)
        except httpx.HTTPError:
            time.sleep(0.05)
            continue
        return answer.status_code == 200 and server.process.pid in answer.json().values()
    return False


def uvicorn(*options: str) -> Callable[[int], list[str]]:
    """``python -m uvicorn`` serving this app, with ``options``, on the port it is given."""
    return lambda port: [sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(port), *options]


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """The samples ``url/metrics`` serves: ``(name, frozenset(labels.items())) -> value``."""
    response = httpx.get(url + "/metrics", timeout=5)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(url: str, name: str, **labels: str) -> float | None:
    """One sample of a scrape of ``url/metrics`` (``None`` when it is not there)."""
    return scrape(url).get((name, frozenset(labels.items())))
