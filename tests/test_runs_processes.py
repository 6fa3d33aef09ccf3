"""Runs across processes on one Redis (two uvicorn subprocesses of ``apps.runs_app``): a run of process A
cancelled through process B ends within a second, its ``finally`` run in A, and a viewer on B gets
``end`` ``cancelled``; SIGTERM to A lets the run go on for A's drain grace, then a viewer on B gets
``end`` ``interrupted``, and A exits within the grace and a second."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from procs import free_port, serve, uvicorn_argv
from test_runs import Watched, watch


def runs_server(url: str, tmp_path: Path, grace: float = 2.0):
    port = free_port()
    argv = uvicorn_argv("apps.runs_app:app", port, "--log-level", "warning")
    return serve(argv, port, tmp_path, env={"SSESUP_HUB_URL": url, "RUNS_DRAIN_GRACE": str(grace)})


def watch_in_thread(url: str, last_event_id: str = "") -> tuple[threading.Thread, list[Watched]]:
    result: list[Watched] = []
    thread = threading.Thread(target=lambda: result.append(watch(url, last_event_id)), daemon=True)
    thread.start()
    return thread, result


def test_a_cancel_through_another_process_ends_the_run_within_a_second_and_its_finally_runs(redis_url, tmp_path):
    with runs_server(redis_url, tmp_path) as a, runs_server(redis_url, tmp_path) as b:
        started = httpx.post(f"{a.url}/runs/job", params={"tokens": 100_000, "every": 0.01, "cleanup": 0.2})
        assert started.status_code == 201 and started.json()["pid"] == a.process.pid
        assert httpx.post(f"{b.url}/runs/job", timeout=10).status_code == 409  # active, in another process
        seen = watch(f"{b.url}/runs/job", tokens=20)  # a viewer on B, of A's run
        thread, result = watch_in_thread(f"{b.url}/runs/job", seen.last_event_id)
        time.sleep(0.3)
        cancelled_at = time.monotonic()
        assert httpx.post(f"{b.url}/runs/job/cancel", timeout=10).json() == {"cancelled": True}
        thread.join(10)
        (rest,) = result
        assert rest.ends() == [{"status": "cancelled"}] and rest.completed
        ended_after = rest.events[-1][1] - cancelled_at
        assert ended_after < 1.0, f"the end came {ended_after:.3f} s after the cancel"
        tokens = seen.tokens() + rest.tokens()
        assert tokens == [str(i) for i in range(len(tokens))]  # each once, in order, to the end
        # Its finally (a 0.2 s cleanup) ran in A, before the end was published.
        assert httpx.get(f"{a.url}/runs/job/status").json() == {"status": "cancelled", "cleaned": True}
        assert httpx.get(f"{b.url}/runs/job/status").json() == {"status": "cancelled", "cleaned": False}
        assert httpx.post(f"{b.url}/runs/job/cancel", timeout=10).json() == {"cancelled": False}


def test_sigterm_to_the_process_of_a_run_gives_viewers_elsewhere_interrupted_and_it_exits_within_grace(
    redis_url, tmp_path
):
    """A's drain (grace 2 s) lets the run go on for the grace, then interrupts it; its lifespan's shutdown
    waits for that, so the end is published before A exits, within the grace and a second."""
    grace = 2.0
    with runs_server(redis_url, tmp_path, grace) as a, runs_server(redis_url, tmp_path) as b:
        assert httpx.post(f"{a.url}/runs/long", params={"tokens": 100_000, "every": 0.01}).status_code == 201
        thread, result = watch_in_thread(f"{b.url}/runs/long")  # a viewer on B, from the run's start
        time.sleep(0.5)
        signalled = time.monotonic()
        a.signal()
        a.process.wait(grace + 5)
        exited = time.monotonic() - signalled
        thread.join(10)
        (viewer,) = result
        assert exited <= grace + 1.0, f"A exited {exited:.2f} s after SIGTERM"
        assert viewer.ends() == [{"status": "interrupted"}] and viewer.completed
        tokens = viewer.tokens()
        assert tokens == [str(i) for i in range(len(tokens))]
        token_times = [at for event, at in viewer.events if event.event == "token"]
        assert token_times[-1] - signalled >= grace - 0.3  # the run went on through the drain's grace
        ended = viewer.events[-1][1] - signalled
        assert grace - 0.1 <= ended <= grace + 1.0, ended
        assert httpx.get(f"{b.url}/runs/long/status").json()["status"] == "interrupted"
