"""Structured logs: one event per transition with the stream's identity, through stdlib logging, as JSON
with one setting, and never a line per event sent."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import socket
from dataclasses import dataclass

import pytest
import structlog

from apps.core import make_app
from servers import UvicornThread, raw_request, read_response, recv_until, wait_until
from ssesup import Supervisor
from ssesup.logs import configure_logging, configure_structlog, log_transition
from ssesup.states import State, StreamMachine, Transition, Trigger


@pytest.fixture(autouse=True)
def _restore_logging():
    """Each test sets logging up its own way; put back the suite's set-up afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    ssesup = logging.getLogger("ssesup")
    ssesup_handlers, ssesup_level, ssesup_propagate = ssesup.handlers[:], ssesup.level, ssesup.propagate
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
    ssesup.handlers[:] = ssesup_handlers
    ssesup.setLevel(ssesup_level)
    ssesup.propagate = ssesup_propagate


@pytest.fixture(scope="module")
def server():
    supervisor = Supervisor(ping=15, send_timeout=30, metrics=False)
    app, recorder = make_app(supervisor)
    with UvicornThread(app) as running:
        running.recorder = recorder
        yield running


@dataclass
class FakeStream:
    """What log_transition reads of a stream."""

    stream_id: str = "7"
    route: str = "/ticks"
    client: str = "10.0.0.1:5000"
    duration: float = 1.0
    user: str | None = None


def all_levels_captured():
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    return structlog.testing.capture_logs()


def run(server, path: str) -> bytes:
    """Read the whole stream at ``path``; return its body once the server has closed it."""
    before = len(server.recorder.reasons())
    with raw_request(server.port, path) as sock:
        _, body = read_response(sock)
    wait_until(lambda: len(server.recorder.reasons()) > before)
    return body


def stream_logs(entries: list[dict], route: str) -> list[dict]:
    return [entry for entry in entries if entry.get("route") == route and entry["event"].startswith("stream.")]


def test_every_transition_is_one_event_with_the_streams_identity(server):
    with all_levels_captured() as entries:
        run(server, "/users/zoe/events")
    opened, closed = stream_logs(entries, "/users/{user_id}/events")
    assert opened["event"] == "stream.transition"
    assert opened["log_level"] == "debug"
    assert (opened["from_state"], opened["to_state"], opened["trigger"]) == ("open", "streaming", "first_send")
    assert closed["event"] == "stream.closed"
    assert closed["log_level"] == "info"
    assert (closed["from_state"], closed["to_state"], closed["trigger"]) == ("streaming", "closed", "exhausted")
    assert closed["close_reason"] == "completed"
    assert 0 < closed["duration_s"] < 5
    assert opened["stream_id"] == closed["stream_id"] != ""
    host, port = closed["client"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert opened["client"] == closed["client"]
    assert "zoe" not in json.dumps(entries)


def test_with_structlog_unconfigured_the_opening_debug_line_is_left_out(capsys):
    """structlog's default prints every level: ssesup leaves its per-opening debug line out until an app
    configures structlog, and still prints the close."""

    machine = StreamMachine()
    opened = machine.fire(Trigger.FIRST_SEND)
    closed = machine.fire(Trigger.EXHAUSTED)
    structlog.reset_defaults()
    assert not structlog.is_configured()
    log_transition(FakeStream(), opened)  # type: ignore[arg-type]
    log_transition(FakeStream(), closed)  # type: ignore[arg-type]
    printed = capsys.readouterr().out
    assert "stream.closed" in printed and "close_reason=completed" in printed
    assert "stream.transition" not in printed
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    log_transition(FakeStream(), opened)  # type: ignore[arg-type]
    assert "stream.transition" in capsys.readouterr().out


def test_a_failed_or_stalled_stream_closes_with_a_warning(server):
    with all_levels_captured() as entries:
        run(server, "/fail")
        with raw_request(server.port, "/flood?send_timeout=0.3", rcvbuf=4096):
            wait_until(lambda: "send_timeout" in server.recorder.reasons("/flood"), timeout=10)
    failed = [e for e in stream_logs(entries, "/fail") if e["event"] == "stream.closed"]
    stalled = [e for e in stream_logs(entries, "/flood") if e["event"] == "stream.closed"]
    assert [(e["log_level"], e["close_reason"], e["trigger"]) for e in failed] == [("warning", "error", "error")]
    assert [(e["log_level"], e["close_reason"]) for e in stalled] == [("warning", "send_timeout")]


def test_the_start_of_a_drain_is_logged_at_info_and_its_first_send_at_debug():
    machine = StreamMachine()
    transitions: list[Transition] = [machine.fire(Trigger.DRAIN), machine.fire(Trigger.FIRST_SEND)]
    transitions.append(machine.fire(Trigger.DRAIN_CLOSE))
    with all_levels_captured() as entries:
        for transition in transitions:
            log_transition(FakeStream(), transition)  # type: ignore[arg-type]
    assert [(e["log_level"], e["from_state"], e["to_state"]) for e in entries] == [
        ("info", "open", "draining"),
        ("debug", "draining", "draining"),
        ("info", "draining", "closed"),
    ]
    assert entries[2]["close_reason"] == "drained"
    assert machine.state is State.CLOSED


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_logs_are_one_setting_and_one_object_a_line(server, capsys):
    configure_logging(json=True)
    capsys.readouterr()
    run(server, "/users/yann/events")
    err = capsys.readouterr().err
    lines = json_lines(err)
    closes = [line for line in lines if line["event"] == "stream.closed"]
    assert len(closes) == 1
    close = closes[0]
    assert close["route"] == "/users/{user_id}/events"
    assert close["close_reason"] == "completed"
    assert close["level"] == "info"
    assert close["logger"] == "ssesup"
    assert close["timestamp"].endswith("Z")
    assert {"stream_id", "client", "from_state", "to_state", "trigger", "duration_s"} <= close.keys()
    assert not [line for line in lines if line["level"] == "debug"]


def test_no_line_is_logged_per_event_sent_at_the_default_level(server, capsys):
    configure_logging(json=True)
    counts = []
    for n in (2, 200):
        capsys.readouterr()
        body = run(server, f"/count?n={n}")
        assert body.count(b"\r\n\r\n") == n
        counts.append(len(json_lines(capsys.readouterr().err)))
    assert counts[0] == counts[1] == 1


def test_stdlib_logging_configuration_decides_levels_and_output(server):
    configure_structlog()
    output = io.StringIO()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": "ssesup.logs.log_formatter", "json": True}},
            "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "json", "stream": output}},
            "loggers": {"ssesup": {"handlers": ["out"], "level": "WARNING", "propagate": False}},
        }
    )
    run(server, "/count?n=3")
    run(server, "/fail")
    lines = json_lines(output.getvalue())
    closes = [(line["route"], line["close_reason"]) for line in lines if line["event"] == "stream.closed"]
    assert closes == [("/fail", "error")]
    assert {line["level"] for line in lines} <= {"warning", "error"}
    failed = [line for line in lines if line["event"] == "stream.generator_failed"]
    assert failed and failed[0]["exception"][0]["exc_type"] == "RuntimeError"
    assert "locals" not in json.dumps(failed)


def test_console_output_is_the_default_rendering(server, capsys):
    configure_logging()
    capsys.readouterr()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /wait?ping=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        recv_until(sock, b"waiting")
    wait_until(lambda: "client_disconnect" in server.recorder.reasons("/wait"))
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "stream.closed" in line]
    assert "close_reason=client_disconnect" in line
    assert "route=/wait" in line
    assert "[info" in line
