"""Graceful drains under real servers run as subprocesses, with real signals and real sockets."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import time

import httpx
import pytest

from procs import free_port, open_stream, open_streams, serve, uvicorn_argv
from servers import wait_until

APP = "apps.drain_app:app"
TOKEN = "test-token-0123456789abcdef"


def finally_count(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def drain_env(tmp_path, grace: float) -> dict[str, str]:
    return {"SSESUP_TEST_FINALLY_FILE": str(tmp_path / "finally.txt"), "SSESUP_TEST_GRACE": str(grace)}


def assert_drained(results, finally_file, count: int) -> None:
    assert len(results) == count
    for result in results:
        assert b"event: farewell\r\ndata: goodbye\r\n\r\n" in result.body
        assert b"retry: " in result.body
        assert result.ended_cleanly, result.body[-200:]
    assert finally_count(finally_file) == count
    retries = {line for r in results for line in r.body.split(b"\r\n") if line.startswith(b"retry: ")}
    assert len(retries) > 1, "reconnect hints carry jitter"


def test_sigterm_under_uvicorn_drains_500_streams_in_waves_and_exits_within_grace(tmp_path):
    grace, count = 4.0, 500
    port = free_port()
    argv = uvicorn_argv(APP, port, "--log-level", "warning", "--limit-concurrency", "2000")
    with serve(argv, port, tmp_path, drain_env(tmp_path, grace)) as server:

        async def scenario():
            tasks, _ = await open_streams(port, "/forever", count)
            ready_before = await asyncio.to_thread(httpx.get, server.url + "/ready/")
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            readiness = []
            while not all(t.done() for t in tasks):
                try:
                    r = await asyncio.to_thread(httpx.get, server.url + "/ready/", timeout=0.5)
                    readiness.append(r.status_code)
                except httpx.HTTPError:
                    readiness.append("refused")
                await asyncio.sleep(0.05)
            return ready_before, signalled, readiness, [t.result() for t in tasks]

        ready_before, signalled, readiness, results = asyncio.run(scenario())
        server.process.wait(grace + 5)
        exited = time.monotonic()
    assert ready_before.status_code == 200
    # The first probe may beat the signal's handler (as in test_nginx.py); from then on, never ready.
    assert 200 not in readiness[1:], readiness
    assert_drained(results, tmp_path / "finally.txt", count)
    assert exited - signalled < grace + 3  # room for a loaded machine, as test_network.EXIT_SLACK
    # Waves: closes spread over the window, not all at once.
    offsets = sorted(r.closed_at - signalled for r in results)
    assert offsets[-1] - offsets[0] > grace / 4
    clusters = 1 + sum(1 for a, b in itertools.pairwise(offsets) if b - a > 0.1)
    assert clusters >= 5, offsets


@pytest.mark.parametrize(
    "argv_of",
    [
        pytest.param(
            lambda port: [
                sys.executable,
                "-m",
                "gunicorn",
                APP,
                "--workers",
                "2",
                "--worker-class",
                "uvicorn_worker.UvicornWorker",
                "--bind",
                f"127.0.0.1:{port}",
                "--graceful-timeout",
                "20",
                "--log-level",
                "warning",
            ],
            id="gunicorn-2-uvicorn-workers",
        ),
        pytest.param(
            lambda port: uvicorn_argv(APP, port, "--workers", "2", "--log-level", "warning"),
            id="uvicorn-workers-2",
        ),
        pytest.param(
            lambda port: [
                sys.executable,
                "-m",
                "hypercorn",
                APP,
                # No worker processes: hypercorn tells its worker processes to stop through a
                # multiprocessing event that no app can see, never a signal (see docs/deploying.md).
                "--workers",
                "0",
                "--bind",
                f"127.0.0.1:{port}",
                "--graceful-timeout",
                "20",
            ],
            id="hypercorn",
        ),
        pytest.param(
            lambda port: [
                sys.executable,
                "-m",
                "granian",
                "--interface",
                "asgi",
                APP,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "2",
                "--no-access-log",
            ],
            id="granian-workers-2",
        ),
        pytest.param(
            lambda port: [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), APP],
            id="daphne",
        ),
    ],
)
def test_sigterm_drains_under_other_servers(tmp_path, argv_of):
    grace, count = 3.0, 60
    port = free_port()
    argv = argv_of(port)
    with serve(argv, port, tmp_path, drain_env(tmp_path, grace)) as server:
        if "granian" in argv:
            # granian answers once one worker listens; a worker still starting when SIGTERM arrives never
            # exits (granian's own race, not a drain's): wait until both have started.
            wait_until(lambda: server.log().count("Started worker-") >= 2, timeout=20)

        async def scenario():
            tasks, _ = await open_streams(port, "/forever", count)
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            return signalled, await asyncio.gather(*tasks)

        signalled, results = asyncio.run(scenario())
        server.process.wait(grace + 5)
        exited = time.monotonic()
    assert_drained(results, tmp_path / "finally.txt", count)
    assert exited - signalled < grace + 3  # room for a loaded machine, as test_network.EXIT_SLACK


def test_cooperative_generators_send_their_last_event_before_the_farewell(tmp_path):
    port = free_port()
    with serve(uvicorn_argv(APP, port), port, tmp_path, drain_env(tmp_path, 3)) as server:

        async def scenario():
            tasks, _ = await open_streams(port, "/cooperative", 3)
            server.signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

        results = asyncio.run(scenario())
        server.process.wait(5)
    for result in results:
        last = result.body.index(b"event: last\r\ndata: saving my place")
        assert last < result.body.index(b"event: farewell") < result.body.index(b"retry: ")
        assert result.ended_cleanly


def test_a_second_sigint_during_a_long_grace_forces_quit(tmp_path):
    port = free_port()
    with serve(uvicorn_argv(APP, port), port, tmp_path, drain_env(tmp_path, 60)) as server:

        async def scenario():
            # 120 streams: three waves spread over half a minute.
            tasks, _ = await open_streams(port, "/stubborn", 120)
            server.signal(signal.SIGINT)
            await asyncio.sleep(1.5)
            assert server.process.poll() is None, "still draining after the first Ctrl-C"
            forced = time.monotonic()
            server.signal(signal.SIGINT)
            results = await asyncio.gather(*tasks)
            return forced, results

        forced, results = asyncio.run(scenario())
        server.process.wait(10)
        exited = time.monotonic()
    assert exited - forced < 5  # the waves alone would take 30 s
    assert finally_count(tmp_path / "finally.txt") == 120
    assert all(r.ended_cleanly for r in results)


def test_new_streams_during_a_drain_are_refused_with_503_and_retry_after(tmp_path):
    port = free_port()
    with serve(uvicorn_argv(APP, port), port, tmp_path, drain_env(tmp_path, 30)) as server:

        async def scenario():
            tasks, _ = await open_streams(port, "/stubborn", 60)
            async with httpx.AsyncClient(base_url=server.url) as client:
                response = await client.post("/ops/drain/", headers={"Authorization": f"Bearer {TOKEN}"})
                assert response.status_code == 202
                refused = await client.get("/forever")
                ready = await client.get("/ready/")
                live = await client.get("/live/")
            for task in tasks:
                task.cancel()
            return refused, ready, live

        refused, ready, live = asyncio.run(scenario())
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert ready.status_code == 503
    assert live.status_code == 200


def test_the_drain_endpoint_refuses_without_the_right_token_and_the_cli_waits_for_the_drain(tmp_path):
    port = free_port()
    with serve(uvicorn_argv(APP, port), port, tmp_path, drain_env(tmp_path, 3)) as server:
        url = server.url + "/ops/drain/"
        assert httpx.get(url).status_code == 405
        assert httpx.post(url).status_code == 401
        assert httpx.post(url, headers={"Authorization": "Basic abc"}).status_code == 401
        assert httpx.post(url, headers={"Authorization": "Bearer wrong-token"}).status_code == 403
        assert httpx.get(server.url + "/ready/").status_code == 200

        async def scenario():
            tasks, _ = await open_streams(port, "/forever", 5)
            started = time.monotonic()
            cli = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ssesup.cli",
                "drain",
                url,
                "--token",
                TOKEN,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            output, _ = await cli.communicate()
            done = time.monotonic()
            results = await asyncio.gather(*tasks)
            return cli.returncode, output, started, done, results

        returncode, output, started, done, results = asyncio.run(scenario())
        assert returncode == 0, output
        assert b"drained" in output
        # The CLI waited for the drain: through its lead time, until the streams were closing.
        assert done - started >= 0.3
        assert all(-0.5 < done - r.closed_at < 3 for r in results), [done - r.closed_at for r in results]
        assert httpx.get(server.url + "/ready/").status_code == 503
    assert_drained(results, tmp_path / "finally.txt", 5)


def test_uvicorn_reload_with_an_open_stream_reloads_instead_of_hanging(tmp_path):
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "app_marker.py").write_text("VERSION = 1\n")
    port = free_port()
    argv = uvicorn_argv(APP, port, "--reload", "--reload-dir", str(watched), "--reload-include", "*.py")
    with serve(argv, port, tmp_path, drain_env(tmp_path, 20)) as server:

        async def scenario():
            stream = asyncio.create_task(open_stream(port, "/forever"))
            await asyncio.sleep(1)
            (watched / "app_marker.py").write_text("VERSION = 2\n")
            started = time.monotonic()
            result = await asyncio.wait_for(stream, 15)
            return started, result

        started, result = asyncio.run(scenario())
        assert result.ended_cleanly
        assert b"retry: " in result.body
        assert result.closed_at - started < 5
        # The reloaded server answers again.
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(server.url + "/live/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)


def test_a_grace_not_shorter_than_the_servers_own_timeout_is_warned_about(tmp_path):
    port = free_port()
    argv = uvicorn_argv(APP, port, "--timeout-graceful-shutdown", "5")
    with serve(argv, port, tmp_path, drain_env(tmp_path, 20)) as server:

        async def scenario():
            tasks, _ = await open_streams(port, "/forever", 1)
            for task in tasks:
                task.cancel()

        asyncio.run(scenario())
        deadline = time.monotonic() + 5
        while "drain.grace_exceeds_server_timeout" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
    assert "drain_grace_s=20.0" in server.log() and "server_graceful_timeout_s=5.0" in server.log()
