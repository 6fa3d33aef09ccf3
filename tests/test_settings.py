"""Every setting is checked where it is given, with a message that names what it accepts; and what a
user's hook does wrong at run time (a farewell or ping factory that raises) costs the client nothing
and the log one line, not one per occurrence."""

from __future__ import annotations

import re

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from compat_support import END_OF_BODY, read_until_end
from servers import UvicornThread, raw_request, recv_until, wait_until
from ssesup import Event, SupervisedStream, Supervisor
from ssesup.limits import StreamLimits


async def forever():
    yield Event("hello", id="1", event="greeting")
    await anyio.sleep_forever()


@pytest.mark.parametrize(
    ("settings", "error", "names"),
    [
        ({"farewell": Event("bye")}, TypeError, "farewell(stream) -> Event | None"),
        ({"ping_factory": Event("p")}, TypeError, "ping_factory() -> Event"),
        ({"limits": 5}, TypeError, "StreamLimits"),
        ({"reconnect": 5}, TypeError, "pair (low, high) of seconds"),
        ({"reconnect": (10, 1)}, ValueError, "0 <= low <= high"),
        ({"reconnect": (1, float("inf"))}, ValueError, "0 <= low <= high"),
        ({"metrics": "yes"}, TypeError, "True, False or a prometheus_client CollectorRegistry"),
        ({"drain_on_signals": "no"}, TypeError, "True or False"),
        ({"ping": -1}, ValueError, "seconds >= 0 (0 disables)"),
        ({"ping": "15"}, ValueError, "seconds >= 0 (0 disables)"),
        ({"send_timeout": float("nan")}, ValueError, "seconds >= 0"),
        ({"drain_grace": 0}, ValueError, "seconds > 0"),
        ({"retry_after": 1.5}, ValueError, "whole number >= 0"),
        ({"sync_threads": True}, ValueError, "whole number >= 1"),
        ({"max_event_size": 0}, ValueError, "bytes > 0, or None"),
        ({"sep": "\n\n"}, ValueError, r"must be one of '\r\n', '\n' or '\r'"),
    ],
)
def test_a_supervisor_refuses_a_bad_setting_when_it_is_made(settings, error, names):
    with pytest.raises(error) as raised:
        Supervisor(**settings)
    (name,) = settings
    message = str(raised.value)
    assert name in message and names in message, message


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"ping_factory": Event("p")}, "ping_factory() -> Event"),
        ({"supervisor": "default"}, "Supervisor"),
        ({"ping": -5}, "seconds >= 0"),
        ({"close_grace": "5"}, "seconds >= 0"),
        ({"drain_grace": -1}, "seconds >= 0"),
        ({"max_event_size": 1.5}, "bytes > 0"),
        ({"on_close": "close"}, "callable"),
    ],
)
def test_a_stream_refuses_a_bad_option_when_it_is_made(options, names):
    with pytest.raises((TypeError, ValueError)) as raised:
        SupervisedStream(forever(), **options)
    assert names in str(raised.value)


def test_valid_settings_are_kept_in_their_working_types():
    supervisor = Supervisor(ping=5, reconnect=[1, 2], limits=StreamLimits(max_streams=3), drain_grace=3)
    assert supervisor.ping == 5.0 and isinstance(supervisor.ping, float)
    assert supervisor.drain_settings.reconnect == (1.0, 2.0)
    assert supervisor.drain_settings.grace == 3.0


TOKEN = "settings-test-token-0123456789"


def served(supervisor: Supervisor, **stream_options) -> Starlette:
    async def stream(request):
        return SupervisedStream(forever(), **stream_options)

    app = Starlette(routes=[Route("/s", stream), Mount("/drain", supervisor.drain_endpoint(TOKEN))])
    supervisor.install(app)
    return app


def drain(server: UvicornThread) -> None:
    response = httpx.post(f"{server.url}/drain/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code in (200, 202), response.text


def test_a_farewell_that_raises_still_sends_the_reconnect_hint_and_a_clean_end(capsys):
    def farewell(stream):
        raise RuntimeError("the farewell's own bug")

    supervisor = Supervisor(ping=0, farewell=farewell, drain_on_signals=False, metrics=False)
    with UvicornThread(served(supervisor)) as server, raw_request(server.port, "/s") as sock:
        recv_until(sock, b"data: hello")
        drain(server)
        body = read_until_end(sock)
    assert re.search(rb"retry: \d+\r\n\r\n\r\n0\r\n\r\n$", body) and body.endswith(END_OF_BODY), body
    out = capsys.readouterr().out
    assert "stream.farewell_failed" in out and "the farewell's own bug" in out


def test_a_farewell_that_returns_no_event_still_sends_the_reconnect_hint(capsys):
    supervisor = Supervisor(ping=0, farewell=lambda stream: "bye", drain_on_signals=False, metrics=False)
    with UvicornThread(served(supervisor)) as server, raw_request(server.port, "/s") as sock:
        recv_until(sock, b"data: hello")
        drain(server)
        body = read_until_end(sock)
    assert re.search(rb"retry: \d+\r\n\r\n\r\n0\r\n\r\n$", body) and b"bye" not in body, body
    assert "must return an Event or None, not str" in capsys.readouterr().out


def test_a_ping_factory_that_raises_sends_the_comment_and_logs_once_per_interval(capsys):
    calls = []

    def ping_factory():
        calls.append(1)
        raise RuntimeError("no ping today")

    supervisor = Supervisor(ping=0.02, ping_factory=ping_factory, drain_on_signals=False, metrics=False)
    with (
        UvicornThread(served(supervisor)) as server,
        raw_request(server.port, "/s") as first,
        raw_request(server.port, "/s") as second,
    ):
        for sock in (first, second):
            recv_until(sock, b"data: hello")
        wait_until(lambda: len(calls) >= 40)
        for sock in (first, second):
            recv_until(sock, b": ping\r\n\r\n")
    lines = [line for line in capsys.readouterr().out.splitlines() if "stream.ping_factory_failed" in line]
    assert len(calls) >= 40
    assert len(lines) == 1, lines
    assert "RuntimeError: no ping today" in lines[0]
