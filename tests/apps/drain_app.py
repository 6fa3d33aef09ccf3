"""The app the drain tests run under real servers as a subprocess.

Each generator appends a line to ``$SSESUP_TEST_FINALLY_FILE`` when its ``finally`` runs, so a test
can count them after the process is gone. ``/cooperative`` streams watch for the drain and say goodbye.
"""

from __future__ import annotations

import os

import anyio
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from ssesup import Event, SupervisedStream, Supervisor, current_stream

FINALLY_FILE = os.environ.get("SSESUP_TEST_FINALLY_FILE", os.devnull)
GRACE = float(os.environ.get("SSESUP_TEST_GRACE", "3"))
TOKEN = os.environ.get("SSESUP_TEST_TOKEN", "test-token-0123456789abcdef")

supervisor = Supervisor(
    drain_grace=GRACE,
    ping=0,
    farewell=lambda stream: Event("goodbye", event="farewell"),
)


def _finally(kind: str) -> None:
    with open(FINALLY_FILE, "a") as f:
        f.write(f"{kind} {os.getpid()}\n")


async def forever(request):
    async def gen():
        try:
            yield Event("hello", id="0")
            await anyio.sleep_forever()
        finally:
            _finally("forever")

    return SupervisedStream(gen())


async def cooperative(request):
    async def gen():
        stream = current_stream()
        try:
            yield Event("hello", id="0")
            await stream.wait_draining()
            yield Event("saving my place", event="last")
        finally:
            _finally("cooperative")

    return SupervisedStream(gen())


async def stubborn(request):
    """Ignores the drain and never reaches a yield again until its turn comes."""

    async def gen():
        try:
            yield Event("hello", id="0")
            while True:
                await anyio.sleep(3600)
        finally:
            _finally("stubborn")

    return SupervisedStream(gen())


app = Starlette(
    routes=[
        Route("/forever", forever),
        Route("/cooperative", cooperative),
        Route("/stubborn", stubborn),
        Mount("/ready", supervisor.readiness()),
        Mount("/live", supervisor.liveness()),
        Mount("/ops/drain", supervisor.drain_endpoint(TOKEN)),
    ]
)
supervisor.install(app)
