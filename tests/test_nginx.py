"""Debian's nginx in front of ssesup, with exactly the configuration docs/deploying.md shows.

nginx and the servers run on 127.0.0.1 (tests/nginx_proxy.py builds the configuration from the doc's
```` ```nginx ```` block, substituting only the upstream address, and the edits each test names). The
figures each test prints are the ones docs/deploying.md quotes; the bounds asserted here are generous.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import time

import httpx
import pytest

from nginx_proxy import Received, doc_block, receive, run_nginx
from procs import free_port, serve, uvicorn_argv

IGNORE_HEADER = "proxy_ignore_headers X-Accel-Buffering;"
GZIP_EVENTS = "gzip on; gzip_types text/event-stream;"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory):
    """The stamped-ticks app (tests/nginx_proxy.py) under uvicorn, as its own process."""
    port = free_port()
    tmp = tmp_path_factory.mktemp("upstream")
    with serve(uvicorn_argv("nginx_proxy:app", port, "--log-level", "warning"), port, tmp) as server:
        yield server


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def arrival_spread(received: Received) -> float:
    return received.events[-1][0] - received.events[0][0]


def test_events_through_the_docs_nginx_arrive_as_fast_as_direct(upstream, tmp_path):
    path = "/ticks?every=0.02&count=50"
    with run_nginx(tmp_path, upstream.port) as nginx:
        direct = asyncio.run(receive(upstream.url + path))
        proxied = asyncio.run(receive(nginx.url + path))
    for received in (direct, proxied):
        assert len(received.latencies()) == 50
        assert received.cut is None
    direct_median, proxied_median = statistics.median(direct.latencies()), statistics.median(proxied.latencies())
    print(f"\nsingle events, median of 50: direct {milliseconds(direct_median)}, nginx {milliseconds(proxied_median)}")
    assert proxied_median < direct_median + 0.05


def test_pings_keep_a_quiet_stream_past_proxy_read_timeout_and_without_them_nginx_cuts_it(upstream, tmp_path):
    """Two ticks 5 s apart through ``proxy_read_timeout 3s``: with a ping every second, and with none."""
    with run_nginx(tmp_path, upstream.port, {"proxy_read_timeout 60s;": "proxy_read_timeout 3s;"}) as nginx:

        async def both() -> list[Received]:
            return await asyncio.gather(
                receive(nginx.url + "/ticks?every=5&count=2&ping=1"),
                receive(nginx.url + "/ticks?every=5&count=2&ping=0"),
            )

        pinged, silent = asyncio.run(both())
        error_log = nginx.error_log()
    pinged_for, silent_for = pinged.ended_at - pinged.opened_at, silent.ended_at - silent.opened_at
    print(
        f"\nproxy_read_timeout 3s, ticks 5 s apart: with pings every 1 s the stream ends cleanly after "
        f"{pinged_for:.2f} s ({len(pinged.comments)} pings, {len(pinged.events)} ticks); without pings nginx cuts it "
        f"after {silent_for:.2f} s ({len(silent.events)} tick; {silent.cut})"
    )
    assert pinged.cut is None and len(pinged.events) == 2 and len(pinged.comments) >= 3
    assert pinged_for > 4.5
    assert silent.cut is not None and len(silent.events) == 1
    assert 2.5 < silent_for < 4.5
    assert "upstream timed out" in error_log


BUFFERING_VARIANTS = {
    "the doc's (proxy_buffering off)": {},
    "proxy_buffering on": {"proxy_buffering off;": "proxy_buffering on;"},
    "proxy_buffering on, X-Accel-Buffering ignored": {"proxy_buffering off;": f"proxy_buffering on; {IGNORE_HEADER}"},
    "proxy_buffering on, gzip": {"proxy_buffering off;": f"proxy_buffering on; {GZIP_EVENTS}"},
    "proxy_buffering on, X-Accel-Buffering ignored, gzip": {
        "proxy_buffering off;": f"proxy_buffering on; {IGNORE_HEADER} {GZIP_EVENTS}"
    },
}
LUMPED = "proxy_buffering on, X-Accel-Buffering ignored, gzip"


def test_only_buffering_that_ignores_ssesups_header_with_gzip_holds_events_back(upstream, tmp_path):
    """20 ticks 0.1 s apart through five configurations at once: which deliver each tick when it is made."""
    with contextlib.ExitStack() as stack:
        proxies = {
            name: stack.enter_context(run_nginx(tmp_path / f"nginx{i}", upstream.port, edits))
            for i, (name, edits) in enumerate(BUFFERING_VARIANTS.items())
        }

        async def all_at_once() -> list[Received]:
            return await asyncio.gather(*(receive(p.url + "/ticks?every=0.1&count=20") for p in proxies.values()))

        results = dict(zip(proxies, asyncio.run(all_at_once()), strict=True))
    print()
    for name, received in results.items():
        latencies = received.latencies()
        print(
            f"{name}: median latency {milliseconds(statistics.median(latencies))}, first tick "
            f"{milliseconds(latencies[0])} late, ticks arrived over {arrival_spread(received):.2f} s"
        )
        assert len(latencies) == 20 and received.cut is None
    for name, received in results.items():
        if name == LUMPED:
            assert received.latencies()[0] > 1.5, "the first tick waits for the end of the stream"
            assert arrival_spread(received) < 0.3, "every tick arrives in one lump"
        else:
            assert statistics.median(received.latencies()) < 0.05, name
            assert arrival_spread(received) > 1.5, name


def test_sigterm_drain_of_the_docs_app_through_nginx_ends_every_client_with_its_farewell(tmp_path):
    """The doc's Kubernetes app (its Python block, as written) behind the doc's nginx: 20 streams, SIGTERM."""
    (tmp_path / "deploying_app.py").write_text(doc_block("python", "supervisor.readiness()").code)
    port, count = free_port(), 20
    argv = uvicorn_argv("deploying_app:app", port, "--log-level", "warning")
    with serve(argv, port, tmp_path, {"PYTHONPATH": str(tmp_path)}) as server, run_nginx(tmp_path, port) as nginx:

        async def scenario() -> tuple[int, float, list[int | str], list[Received]]:
            opened = [asyncio.Event() for _ in range(count)]
            tasks = [asyncio.create_task(receive(nginx.url + "/ticks?every=0.5", e)) for e in opened]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 20)
            async with httpx.AsyncClient(base_url=nginx.url, timeout=2) as client:
                ready_before = (await client.get("/ready")).status_code
                signalled = time.monotonic()
                server.signal(signal.SIGTERM)
                readiness: list[int | str] = []
                while not all(t.done() for t in tasks):
                    try:
                        readiness.append((await client.get("/ready")).status_code)
                    except httpx.HTTPError as error:
                        readiness.append(type(error).__name__)
                    await asyncio.sleep(0.05)
            return ready_before, signalled, readiness, [t.result() for t in tasks]

        ready_before, signalled, readiness, results = asyncio.run(scenario())
        server.process.wait(20)
        exited = time.monotonic()
    last_end = max(r.ended_at for r in results) - signalled
    print(
        f"\nSIGTERM with {count} streams through nginx: {sum(bool(r.retries()) for r in results)} got retry: and "
        f"{sum(r.cut is None for r in results)} a proper end of body; last stream ended {last_end:.2f} s after "
        f"the signal, the server exited after {exited - signalled:.2f} s; readiness through nginx: "
        f"{list(dict.fromkeys(readiness))}"
    )
    assert ready_before == 200
    # The first probe may beat the signal handler; from then on the app answers 503 on a connection
    # nginx kept alive, and nginx 502 once uvicorn has stopped accepting: never ready again.
    assert set(readiness[1:]) <= {503, 502}, readiness
    for received in results:
        assert received.retries(), received.events[-3:]
        assert received.cut is None, received.cut
    assert last_end < 5
    assert exited - signalled < 10
