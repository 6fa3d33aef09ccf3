"""Values from the network are escaped in logs: an ESC sequence in X-Forwarded-For, which uvicorn trusts
from 127.0.0.1 by default and makes the client address, never reaches the console raw. Under a real
uvicorn subprocess with ``--http h11 --proxy-headers``, logging through ``configure_logging``."""

from __future__ import annotations

import json
import socket

import pytest

from procs import free_port, serve, uvicorn_argv
from servers import read_response, wait_until
from ssesup.logs import escape

APP = "apps.escaping_app:app"
# CSI as ESC [ (C0) and as its one-byte C1 form, which latin-1 decoding of a header keeps as U+009B.
EVIL = b"\x1b[31mevil\x9b0m"
ESCAPED = "\\x1b[31mevil\\x9b0m"


def stream_with_forwarded_for(port: int, forwarded: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /once HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: " + forwarded + b"\r\n\r\n")
        _, body = read_response(sock)
    assert b"data: hello" in body


def raw_controls(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(c in line for c in "\x1b\x9b\x85\x07")]


def test_an_escape_sequence_in_x_forwarded_for_is_escaped_in_ssesups_console_lines(tmp_path):
    port = free_port()
    argv = uvicorn_argv(APP, port, "--http", "h11", "--proxy-headers")
    with serve(argv, port, tmp_path) as server:
        stream_with_forwarded_for(port, EVIL)
        wait_until(lambda: "stream.closed" in server.log(), timeout=10)
        log = server.log()
    [closed] = [line for line in log.splitlines() if "stream.closed" in line]
    assert f"client={ESCAPED}:0" in closed
    # uvicorn's own access line goes through uvicorn's handler, not ssesup's (docs/observability.md).
    assert not [line for line in raw_controls(log) if "[ssesup]" in line]


def test_with_the_servers_records_routed_through_configure_logging_nothing_reaches_the_console_raw(tmp_path):
    config = tmp_path / "logging.json"
    config.write_text(json.dumps({"version": 1, "disable_existing_loggers": False}))
    port = free_port()
    argv = uvicorn_argv(APP, port, "--http", "h11", "--proxy-headers", "--log-config", str(config))
    with serve(argv, port, tmp_path) as server:
        stream_with_forwarded_for(port, EVIL)
        wait_until(lambda: "stream.closed" in server.log() and '"GET /once' in server.log(), timeout=10)
        log = server.log()
    assert raw_controls(log) == []
    [access] = [line for line in log.splitlines() if '"GET /once' in line]
    assert ESCAPED in access  # uvicorn's access line, escaped by configure_logging's formatter


def test_json_lines_carry_the_escaped_text(tmp_path):
    port = free_port()
    argv = uvicorn_argv(APP, port, "--http", "h11", "--proxy-headers", "--log-level", "warning")
    with serve(argv, port, tmp_path, {"SSESUP_LOG_JSON": "1"}) as server:
        stream_with_forwarded_for(port, EVIL + b", 127.0.0.1")
        wait_until(lambda: "stream.closed" in server.log(), timeout=10)
        log = server.log()
    [closed] = [json.loads(line) for line in log.splitlines() if "stream.closed" in line]
    assert closed["client"] == f"{ESCAPED}:0"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("\x00\x07\x08\t\n\r\x1b\x7f", "\\x00\\x07\\x08\\x09\\x0a\\x0d\\x1b\\x7f"),
        ("\x80\x85\x9b\x9f", "\\x80\\x85\\x9b\\x9f"),
        ("lone \ud800 and \udfff", "lone \\ud800 and \\udfff"),
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
        ("\u202eevil\u202c \u2066x\u2069", "\\u202eevil\\u202c \\u2066x\\u2069"),
        ("café, 東京, emoji 🎉, a\xa0b", "café, 東京, emoji 🎉, a\xa0b"),
    ],
)
def test_escape_rewrites_controls_surrogates_separators_and_bidi_overrides_only(value, expected):
    assert escape(value) == expected
    assert escape(expected) == expected  # escaped text is left as it is


def test_a_printable_value_is_returned_as_it_is_without_a_copy():
    value = "10.1.2.3:52144"
    assert escape(value) is value
