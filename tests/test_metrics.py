"""Prometheus metrics: the observer's bookkeeping, then what a scrape of ``/metrics`` shows while real
streams run on a real uvicorn, and that a failure to record never fails a stream."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import structlog
from prometheus_client import REGISTRY, CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from apps.core import make_app
from apps.metrics_app import sample, scrape
from servers import UvicornThread, raw_request, read_response, recv_until, wait_until
from ssesup import Supervisor
from ssesup.metrics import StreamMetrics, gunicorn_child_exit, metrics_app, metrics_observer, remove_dead_workers
from ssesup.states import CloseReason, State, Transition, Trigger

ROOT = Path(__file__).parent.parent
USERS = "/users/{user_id}/events"


@dataclass
class FakeStream:
    """What the observer reads of a stream."""

    route: str = USERS
    duration: float = 2.5


def transition(from_state: State, trigger: Trigger) -> Transition:
    from ssesup.states import StreamMachine

    machine = StreamMachine()
    machine.state = from_state
    return machine.fire(trigger)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def observer(registry) -> StreamMetrics:
    return metrics_observer(registry)


# -- the observer ----------------------------------------------------------------------------------------


def test_a_streams_life_moves_the_active_gauge_and_counts_its_open_close_and_duration(registry, observer):
    stream = FakeStream(duration=2.5)
    observer.opened(stream)
    assert value(registry, "ssesup_streams_active", route=USERS, state="open") == 1
    assert value(registry, "ssesup_streams_opened_total", route=USERS) == 1

    observer.transitioned(stream, transition(State.OPEN, Trigger.FIRST_SEND))
    assert value(registry, "ssesup_streams_active", route=USERS, state="open") == 0
    assert value(registry, "ssesup_streams_active", route=USERS, state="streaming") == 1

    observer.transitioned(stream, transition(State.STREAMING, Trigger.EXHAUSTED))
    assert value(registry, "ssesup_streams_active", route=USERS, state="streaming") == 0
    assert value(registry, "ssesup_streams_closed_total", route=USERS, reason="completed") == 1
    assert value(registry, "ssesup_stream_duration_seconds_count", route=USERS, reason="completed") == 1
    assert value(registry, "ssesup_stream_duration_seconds_sum", route=USERS, reason="completed") == 2.5
    assert value(registry, "ssesup_stream_duration_seconds_bucket", route=USERS, reason="completed", le="1.0") == 0
    assert value(registry, "ssesup_stream_duration_seconds_bucket", route=USERS, reason="completed", le="5.0") == 1
    assert value(registry, "ssesup_state_transitions_total", from_state="open", to_state="streaming") == 1
    assert value(registry, "ssesup_state_transitions_total", from_state="streaming", to_state="closed") == 1
    assert value(registry, "ssesup_send_timeouts_total", route=USERS) == 0


def test_a_drained_stream_counts_as_draining_until_it_closes_drained(registry, observer):
    stream = FakeStream()
    observer.opened(stream)
    observer.transitioned(stream, transition(State.OPEN, Trigger.DRAIN))
    # Its response start goes out while it drains: a transition to the same state, still one stream.
    observer.transitioned(stream, transition(State.DRAINING, Trigger.FIRST_SEND))
    assert value(registry, "ssesup_streams_active", route=USERS, state="draining") == 1
    assert value(registry, "ssesup_streams_active", route=USERS, state="open") == 0
    assert value(registry, "ssesup_state_transitions_total", from_state="draining", to_state="draining") == 1

    observer.transitioned(stream, transition(State.DRAINING, Trigger.DRAIN_CLOSE))
    assert value(registry, "ssesup_streams_active", route=USERS, state="draining") == 0
    assert value(registry, "ssesup_streams_closed_total", route=USERS, reason="drained") == 1


def test_a_send_timeout_is_counted_with_its_close_reason(registry, observer):
    stream = FakeStream()
    observer.opened(stream)
    observer.transitioned(stream, transition(State.OPEN, Trigger.FIRST_SEND))
    observer.transitioned(stream, transition(State.STREAMING, Trigger.SEND_TIMEOUT))
    assert value(registry, "ssesup_send_timeouts_total", route=USERS) == 1
    assert value(registry, "ssesup_streams_closed_total", route=USERS, reason="send_timeout") == 1
    assert value(registry, "ssesup_streams_active", route=USERS, state="streaming") == 0


def test_each_body_chunk_adds_its_events_pings_and_bytes(registry, observer):
    stream = FakeStream()
    observer.opened(stream)
    observer.sent(stream, 3, 0, 120)
    observer.sent(stream, 0, 1, 8)
    observer.sent(stream, 2, 1, 50)
    assert value(registry, "ssesup_events_sent_total", route=USERS) == 5
    assert value(registry, "ssesup_pings_sent_total", route=USERS) == 2
    assert value(registry, "ssesup_bytes_sent_total", route=USERS) == 178


def test_every_series_of_a_route_exists_at_zero_from_its_first_stream(registry, observer):
    observer.opened(FakeStream(route="/ticks"))
    for reason in CloseReason:
        assert value(registry, "ssesup_streams_closed_total", route="/ticks", reason=reason.value) == 0
        assert value(registry, "ssesup_stream_duration_seconds_count", route="/ticks", reason=reason.value) == 0
    for state in ("streaming", "draining"):
        assert value(registry, "ssesup_streams_active", route="/ticks", state=state) == 0
    for name in ("events_sent", "bytes_sent", "pings_sent", "send_timeouts"):
        assert value(registry, f"ssesup_{name}_total", route="/ticks") == 0
    assert value(registry, "ssesup_streams_rejected_total", reason="draining") == 0
    assert value(registry, "ssesup_draining") == 0
    assert value(registry, "ssesup_drain_duration_seconds_count") == 0


def test_a_stream_served_outside_a_router_is_labelled_unknown(registry, observer):
    observer.opened(FakeStream(route=""))
    assert value(registry, "ssesup_streams_opened_total", route="unknown") == 1


def test_rejections_and_drains_are_counted_and_the_flag_holds_until_the_last_drain_ends(registry, observer):
    observer.rejected("draining")
    observer.rejected("draining")
    assert value(registry, "ssesup_streams_rejected_total", reason="draining") == 2

    # Two event loops of one process drain: the process drains until both are done.
    observer.drain_started(20.0)
    observer.drain_started(20.0)
    assert value(registry, "ssesup_draining") == 1
    assert value(registry, "ssesup_drain_grace_seconds") == 20
    assert value(registry, "ssesup_drain_started_timestamp_seconds") > 1_600_000_000
    observer.drain_finished(3.0)
    assert value(registry, "ssesup_draining") == 1
    observer.drain_finished(4.0)
    assert value(registry, "ssesup_draining") == 0
    assert value(registry, "ssesup_drain_duration_seconds_count") == 2
    assert value(registry, "ssesup_drain_duration_seconds_sum") == 7


def test_supervisors_share_one_set_of_collectors_per_registry(registry):
    one, two = Supervisor(metrics=registry), Supervisor(metrics=registry)
    one.notify("opened", FakeStream(route="/shared"))
    two.notify("opened", FakeStream(route="/shared"))
    assert value(registry, "ssesup_streams_opened_total", route="/shared") == 2
    assert metrics_observer(registry) is metrics_observer(registry)


def test_by_default_metrics_go_to_prometheus_clients_registry_and_can_be_turned_off():
    route = "/default-registry-test"
    Supervisor().notify("opened", FakeStream(route=route))
    assert value(REGISTRY, "ssesup_streams_opened_total", route=route) == 1
    Supervisor(metrics=False).notify("opened", FakeStream(route=route))
    assert value(REGISTRY, "ssesup_streams_opened_total", route=route) == 1


# -- multiprocess bookkeeping (the real multi-worker servers are in test_metrics_multiprocess.py) ------


def test_live_values_of_dead_workers_are_removed_and_everything_else_is_kept(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits, and is not reaped until wait()
    wait_until(lambda: _state(zombie.pid) == "Z")
    alive = os.getpid()
    names = [
        f"gauge_livesum_{finished.pid}.db",
        f"gauge_livemax_{finished.pid}.db",
        f"gauge_livesum_{zombie.pid}.db",
        f"gauge_livesum_{alive}.db",
        f"counter_{finished.pid}.db",
        f"histogram_{finished.pid}.db",
        f"gauge_all_{finished.pid}.db",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    try:
        assert remove_dead_workers(str(tmp_path)) == sorted([finished.pid, zombie.pid])
    finally:
        zombie.wait()
    kept = [f"gauge_livesum_{alive}.db", f"counter_{finished.pid}.db", f"histogram_{finished.pid}.db"]
    kept.append(f"gauge_all_{finished.pid}.db")  # not a live mode: kept like a counter
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_the_gunicorn_hook_removes_the_live_values_of_the_worker_that_exited(tmp_path, monkeypatch):
    @dataclass
    class Worker:
        pid: int

    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"")
    (tmp_path / "gauge_livesum_4343.db").write_bytes(b"")
    (tmp_path / "counter_4242.db").write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    gunicorn_child_exit(None, Worker(4242))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_4242.db", "gauge_livesum_4343.db"]


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0].decode()


# -- a real server, real sockets, a real scrape ----------------------------------------------------------


@pytest.fixture
def server(registry):
    """The core test app with its own supervisor and registry, and /metrics, under uvicorn."""
    supervisor = Supervisor(ping=15, send_timeout=30, metrics=registry)
    core, recorder = make_app(supervisor)
    app = Starlette(routes=[Route("/metrics", metrics_app(registry)), Mount("", app=core)])
    with UvicornThread(app) as running:
        running.recorder = recorder
        yield running


def test_the_route_label_is_the_template_never_the_raw_path(server):
    for user in ("alice", "bob", "carol"):
        with raw_request(server.port, f"/users/{user}/events") as sock:
            _, body = read_response(sock)
        assert body == f"data: hello {user}\r\n\r\n".encode()
    wait_until(lambda: sample(server.url, "ssesup_streams_closed_total", route=USERS, reason="completed") == 3)
    scraped = scrape(server.url)
    assert scraped[("ssesup_streams_opened_total", frozenset({("route", USERS)}))] == 3
    routes = {dict(labels).get("route") for _, labels in scraped} - {None}
    assert routes == {USERS}
    assert not any(user in repr(scraped) for user in ("alice", "bob", "carol"))


def test_events_and_bytes_counted_are_what_the_client_received(server):
    with raw_request(server.port, "/count?n=5&size=100") as sock:
        _, body = read_response(sock)
    assert body.count(b"\r\n\r\n") == 5
    wait_until(lambda: sample(server.url, "ssesup_streams_closed_total", route="/count", reason="completed") == 1)
    assert sample(server.url, "ssesup_events_sent_total", route="/count") == 5
    assert sample(server.url, "ssesup_bytes_sent_total", route="/count") == len(body)
    assert sample(server.url, "ssesup_pings_sent_total", route="/count") == 0


def test_active_streams_follow_open_connections_and_idle_streams_ping(server):
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    for sock in socks:
        sock.sendall(b"GET /wait?ping=0.1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        recv_until(sock, b"waiting")
    try:
        assert sample(server.url, "ssesup_streams_active", route="/wait", state="streaming") == 3
        wait_until(lambda: sample(server.url, "ssesup_pings_sent_total", route="/wait") >= 3)
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: sample(server.url, "ssesup_streams_active", route="/wait", state="streaming") == 0)
    assert sample(server.url, "ssesup_streams_closed_total", route="/wait", reason="client_disconnect") == 3
    assert sample(server.url, "ssesup_stream_duration_seconds_count", route="/wait", reason="client_disconnect") == 3


def test_a_client_that_stops_reading_is_counted_as_a_send_timeout(server):
    with raw_request(server.port, "/flood?send_timeout=0.3", rcvbuf=4096):
        wait_until(lambda: sample(server.url, "ssesup_send_timeouts_total", route="/flood") == 1, timeout=10)
    assert sample(server.url, "ssesup_streams_closed_total", route="/flood", reason="send_timeout") == 1
    assert sample(server.url, "ssesup_streams_active", route="/flood", state="streaming") == 0


def test_a_failing_generator_is_counted_as_an_error_close(server):
    with raw_request(server.port, "/fail") as sock:
        read_response(sock)
    wait_until(lambda: sample(server.url, "ssesup_streams_closed_total", route="/fail", reason="error") == 1)


def test_the_metrics_endpoint_passes_promtool_check_metrics(server):
    with raw_request(server.port, "/users/dave/events") as sock:
        read_response(sock)
    with raw_request(server.port, "/wait?ping=0.1") as sock:
        recv_until(sock, b": ping")
        response = httpx.get(server.url + "/metrics", timeout=5)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'ssesup_streams_active{route="/wait",state="streaming"} 1.0' in response.text
    check = subprocess.run(["promtool", "check", "metrics"], input=response.text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    openmetrics = httpx.get(server.url + "/metrics", headers={"accept": "application/openmetrics-text"}, timeout=5)
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


def test_a_failure_to_record_is_logged_and_the_stream_goes_on(server, monkeypatch):
    def broken(*args: object) -> None:
        raise OSError("no space left on device")

    for method in ("opened", "transitioned", "sent"):
        monkeypatch.setattr(StreamMetrics, method, broken)
    with structlog.testing.capture_logs() as logs:
        with raw_request(server.port, "/count?n=4") as sock:
            head, body = read_response(sock)
        wait_until(lambda: "completed" in server.recorder.reasons("/count"))
        # What a stream sent is reported once it has ended its body: the last of the three calls.
        wait_until(lambda: any(entry.get("method") == "sent" for entry in logs))
    assert head.startswith(b"HTTP/1.1 200")
    assert body.count(b"\r\n\r\n") == 4
    failures = [entry for entry in logs if entry["event"] == "observer.failed"]
    assert {entry["method"] for entry in failures} == {"opened", "transitioned", "sent"}
    assert {entry["observer"] for entry in failures} == {"StreamMetrics"}


@pytest.mark.parametrize("mount", ["starlette-route", "starlette-mount", "fastapi-add-route"])
def test_metrics_app_mounts_in_one_line(mount, registry):
    metrics_observer(registry).opened(FakeStream(route="/mounted"))
    if mount == "starlette-route":
        app = Starlette(routes=[Route("/metrics", metrics_app(registry))])
    elif mount == "starlette-mount":
        app = Starlette(routes=[Mount("/metrics", metrics_app(registry))])
    else:
        from fastapi import FastAPI  # here: tests/test_version_floors.py runs this module without FastAPI

        app = FastAPI()
        app.add_route("/metrics", metrics_app(registry))
    with UvicornThread(app) as running:
        response = httpx.get(running.url + "/metrics", follow_redirects=True, timeout=5)
    assert response.status_code == 200
    assert 'ssesup_streams_opened_total{route="/mounted"} 1.0' in response.text


def test_every_metric_is_in_the_documented_table(registry, observer):
    observer.opened(FakeStream())
    exposed = {family.name + ("_total" if family.type == "counter" else "") for family in registry.collect()}
    table = (ROOT / "docs" / "observability.md").read_text()
    documented = set(re.findall(r"^\| `(ssesup_\w+)`", table, re.MULTILINE))
    assert exposed == documented
