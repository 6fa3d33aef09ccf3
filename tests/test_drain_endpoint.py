"""The drain endpoint under brute force, under a real uvicorn with clients on several loopback addresses:
wrong tokens earn a growing back-off (429 with Retry-After, per peer and for all peers together), the
right token works once it is over, refusals are counted and logged once per reason per interval, with
the peer escaped and never the token; memory for peers is bounded."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount

from servers import UvicornThread, recv_until, wait_until
from ssesup import Supervisor
from ssesup.endpoints import DrainEndpoint

TOKEN = "right-token-0123456789abcdef"
WRONG = "wrong-token-0123456789abcdef"


@contextlib.contextmanager
def drain_server(http: str = "auto", **settings: Any) -> Iterator[tuple[UvicornThread, CollectorRegistry]]:
    registry = CollectorRegistry()
    supervisor = Supervisor(metrics=registry, ping=0)
    app = Starlette(routes=[Mount("/ops/drain", DrainEndpoint(supervisor, TOKEN, **settings))])
    with UvicornThread(app, http=http) as server:
        yield server, registry


def post(port: int, source: str, token: str | None = TOKEN, extra: bytes = b"") -> tuple[int, dict[str, str]]:
    """POST to the drain endpoint from ``source``; the status and headers of the answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        authorization = b"" if token is None else b"Authorization: Bearer " + token.encode() + b"\r\n"
        sock.sendall(
            b"POST /ops/drain/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n" + authorization + extra + b"\r\n"
        )
        head = recv_until(sock, b"\r\n\r\n").split(b"\r\n\r\n")[0].decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers


def status(port: int, source: str, token: str | None = TOKEN) -> int:
    return post(port, source, token)[0]


def failures(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("ssesup_drain_auth_failures_total", {"reason": reason})


def test_wrong_tokens_earn_a_growing_back_off_and_the_right_token_works_once_it_is_over():
    with drain_server(free_failures=1, global_free_failures=100, backoff=(1.0, 4.0)) as (server, registry):
        port, guesser = server.port, "127.0.0.2"
        assert status(port, guesser, WRONG) == 403  # the free one
        assert status(port, guesser, WRONG) == 403  # earns 1 s
        refused, headers = post(port, guesser, TOKEN)
        assert (refused, headers["retry-after"]) == (429, "1"), "during the back-off the token is not compared"
        assert status(port, "127.0.0.3", WRONG) == 403, "another peer has its own count"
        wait_until(lambda: status(port, guesser, WRONG) == 403, timeout=5, interval=0.2)  # earns 2 s
        refused, headers = post(port, guesser, WRONG)
        assert (refused, headers["retry-after"]) == (429, "2")
        wait_until(lambda: status(port, guesser, TOKEN) == 202, timeout=6, interval=0.2)
        # The right token reset the count: the next wrong one is free again.
        assert status(port, guesser, WRONG) == 403
        assert status(port, guesser, TOKEN) == 202
    assert failures(registry, "wrong_token") >= 5
    assert failures(registry, "backoff") >= 2


def test_wrong_tokens_from_many_peers_make_every_peer_wait():
    with drain_server(free_failures=10, global_free_failures=2, backoff=(1.0, 4.0)) as (server, _):
        port = server.port
        for guesser in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):  # an attacker rotating addresses
            assert status(port, guesser, WRONG) == 403
        refused, headers = post(port, "127.0.0.5", TOKEN)
        assert (refused, headers["retry-after"]) == (429, "1")
        wait_until(lambda: status(port, "127.0.0.5", TOKEN) == 202, timeout=5, interval=0.2)


def test_requests_without_a_token_are_counted_but_earn_no_back_off():
    with drain_server(free_failures=0) as (server, registry):
        for _ in range(5):
            assert status(server.port, "127.0.0.2", None) == 401
        assert status(server.port, "127.0.0.2", TOKEN) == 202
    assert failures(registry, "missing_token") == 5
    assert failures(registry, "wrong_token") == failures(registry, "backoff") == 0


def test_refusals_are_logged_once_per_reason_per_interval_with_the_peer_escaped_and_never_the_token():
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default: the peer is whatever the header says
    # (h11 takes an ESC in a header value; httptools refuses the request).
    evil = b"X-Forwarded-For: \x1b[31mevil\r\n"
    long_back_off = drain_server("h11", free_failures=2, backoff=(30.0, 60.0))  # posts 4 to 9 fall in it
    with structlog.testing.capture_logs() as entries, long_back_off as (server, registry):
        for _ in range(6):
            post(server.port, "127.0.0.1", WRONG, evil)
        for _ in range(3):
            post(server.port, "127.0.0.1", None, evil)
    lines = [entry for entry in entries if entry["event"] == "drain.auth_failed"]
    assert sorted((line["reason"], line["count"]) for line in lines) == [
        ("backoff", 1),
        ("wrong_token", 1),
    ], "one line per reason; the rest are counted into the next line"
    assert {line["peer"] for line in lines} == {"\\x1b[31mevil"}
    assert all(line["log_level"] == "warning" for line in lines)
    assert WRONG not in repr(entries) and TOKEN not in repr(entries)
    assert failures(registry, "wrong_token") == 3  # two free, the third earned the wait
    assert failures(registry, "backoff") == 6


def test_at_most_max_peers_are_remembered_the_longest_quiet_forgotten_first():
    with drain_server(free_failures=0, global_free_failures=100, max_peers=2) as (server, _):
        port = server.port
        for guesser in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            assert status(port, guesser, WRONG) == 403
        assert status(port, "127.0.0.4", TOKEN) == 429
        assert status(port, "127.0.0.2", TOKEN) == 202, "forgotten: a third peer took its place"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"free_failures": -1}, "free_failures must be a whole number >= 0"),
        ({"global_free_failures": 1.5}, "global_free_failures must be a whole number >= 0"),
        ({"backoff": (0, 1)}, "backoff must be"),
        ({"backoff": (5, 1)}, "backoff must be"),
        ({"forget_after": 10}, "forget_after must be at least the longest back-off"),
        ({"max_peers": 0}, "max_peers must be a whole number >= 1"),
    ],
)
def test_settings_are_checked_with_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        DrainEndpoint(Supervisor(metrics=False), TOKEN, **settings)
