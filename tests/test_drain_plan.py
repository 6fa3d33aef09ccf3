"""The drain plan (pure) and a programmatic drain on an in-process server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random

import httpx
import pytest

from apps.core import make_app
from servers import UvicornThread, raw_request, recv_until, wait_until
from ssesup import Supervisor
from ssesup.drain import MAX_WAVES, WAVE_SIZE, DrainSettings, reconnect_ms, wave_offsets


def test_a_few_streams_close_together_after_a_short_lead():
    assert wave_offsets(0, 20) == []
    assert wave_offsets(1, 20) == [1.0]
    assert wave_offsets(WAVE_SIZE, 2) == [0.2] * WAVE_SIZE


def test_many_streams_are_spread_in_waves_over_half_the_grace():
    offsets = wave_offsets(500, 20)
    waves = sorted(set(offsets))
    assert len(waves) == MAX_WAVES
    assert waves[0] == 1.0 and waves[-1] == pytest.approx(10.0)
    assert all(offsets.count(w) == 50 for w in waves)


def test_reconnect_hints_are_drawn_from_the_range():
    rng = random.Random(7)
    hints = [reconnect_ms((1.0, 10.0), rng) for _ in range(200)]
    assert all(1000 <= h <= 10000 for h in hints)
    assert len(set(hints)) > 100


@pytest.mark.parametrize(
    "kwargs", [{"grace": 0}, {"grace": -1}, {"retry_after": -1}, {"retry_after": 1.5}, {"reconnect": (5, 1)}]
)
def test_bad_drain_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        DrainSettings(**kwargs)


def test_a_programmatic_drain_moves_streams_through_draining_to_drained():
    supervisor = Supervisor(drain_grace=2, ping=0, drain_on_signals=False)
    app, recorder = make_app(supervisor)
    with UvicornThread(app) as server, contextlib.ExitStack() as stack:
        socks = [stack.enter_context(raw_request(server.port, "/wait")) for _ in range(3)]
        for sock in socks:
            recv_until(sock, b"data: waiting")
        report = asyncio.run_coroutine_threadsafe(supervisor.drain(), server.loop).result(10)
        assert report["done"] and report["streams"] == 0 and report["duration"] < 2
        for sock in socks:
            body = recv_until(sock, b"0\r\n\r\n")
            assert b"retry: " in body
        refused = httpx.get(server.url + "/count?n=1")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    with recorder.lock:
        path = [(f, t) for _, f, t in recorder.transitions]
    assert path.count(("streaming", "draining")) == 3
    assert path.count(("draining", "closed")) == 3
    assert recorder.reasons("/wait") == ["drained"] * 3


def test_force_close_ends_every_stream_with_shutdown_and_a_clean_body():
    supervisor = Supervisor(ping=0, drain_on_signals=False)
    app, recorder = make_app(supervisor)
    with UvicornThread(app) as server, raw_request(server.port, "/wait") as sock:
        recv_until(sock, b"data: waiting")
        server.call(supervisor.force_close)
        body = recv_until(sock, b"\r\n0\r\n\r\n")
        assert b"retry: " in body
        wait_until(lambda: recorder.reasons("/wait") == ["shutdown"])
        wait_until(lambda: "wait" in recorder.finally_ran)


# The senders the forced close started are cancelled before their first step, as at a real forced exit:
# their coroutines never run (collected below, so that the warning is raised here and filtered).
@pytest.mark.filterwarnings("ignore:coroutine 'Delivery.send_queued' was never awaited")
def test_streams_the_server_cancels_right_after_a_forced_close_still_get_their_farewell():
    # A server's forced exit (uvicorn's, after a second signal) cancels every task, maybe in the loop
    # turn right after the supervisor closed every stream and before any stream's sender ran.
    supervisor = Supervisor(ping=0, drain_on_signals=False)
    app, _ = make_app(supervisor)
    with UvicornThread(app) as server, contextlib.ExitStack() as stack:
        socks = [stack.enter_context(raw_request(server.port, "/wait")) for _ in range(5)]
        for sock in socks:
            recv_until(sock, b"data: waiting")

        def force_close_then_cancel() -> list[str]:
            supervisor.force_close()
            # As asyncio.run does at the end: every task of the app at once, the senders just started too.
            server_tasks = ("UvicornThread.", "Server.")
            current = asyncio.current_task()
            tasks = [task for task in asyncio.all_tasks() if task is not current]
            cancelled = [task for task in tasks if not task.get_coro().__qualname__.startswith(server_tasks)]
            for task in cancelled:
                task.cancel()
            return sorted(task.get_coro().__qualname__ for task in cancelled)

        cancelled = server.call(force_close_then_cancel)
        assert cancelled.count("RequestResponseCycle.run_asgi") == 5, cancelled
        for sock in socks:
            body = recv_until(sock, b"0\r\n\r\n")  # the proper end of the chunked body, not a reset
            assert b"retry: " in body
    gc.collect()
