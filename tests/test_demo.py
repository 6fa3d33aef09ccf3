"""``ssesup`` on the command line and the demo it serves, as a subprocess on 127.0.0.1, read with real
sockets (the browser's view is tests/test_browser.py): ``--version``, the endpoints listed in ``--help``
and at start, the drain token, ``ssesup drain`` against the demo, resuming after ``Last-Event-ID``
(numbered streams, and the hub channel from its history), and what the page may load."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

import ssesup
from procs import free_port, serve
from servers import raw_request, read_response, recv_until
from ssesup.demo import ENDPOINTS, EVENT_NAMES, KINDS, PAGE, PUBLISH_EVERY

CLI = [sys.executable, "-m", "ssesup.cli"]
ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_version_prints_the_installed_version():
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ssesup {ssesup.__version__}"
    assert ssesup.__version__ == importlib.metadata.version("ssesup")


def test_demo_help_lists_every_endpoint():
    result = run_cli("demo", "--help")
    assert result.returncode == 0, result.stderr
    for path, what in ENDPOINTS:
        assert re.search(rf"^  {re.escape(path)} +{re.escape(what)}$", result.stdout, re.MULTILINE), path


@pytest.mark.parametrize("env_token", [None, "-a-token-that-begins-with-a-dash"], ids=["generated", "leading-dash"])
def test_the_demo_lists_its_endpoints_and_drain_token_at_start_and_ssesup_drain_drains_it(tmp_path, env_token):
    port = free_port()
    env = {"SSESUP_DRAIN_TOKEN": env_token} if env_token else {}
    with serve([*CLI, "demo", "--port", str(port)], port, tmp_path, env) as server:
        started = server.log()
        for path, _ in ENDPOINTS:
            assert f"{server.url}{path}" in started
        token = re.search(r"^drain token: (\S+)$", started, re.MULTILINE).group(1)
        assert len(token) >= 16
        assert token == env_token if env_token else not token.startswith("-")
        # The command as printed, run as a user would paste it (a token may begin with '-').
        printed = re.search(r"^drain it: +ssesup (drain \S+ --token[ =]\S+)$", started, re.MULTILINE).group(1)
        assert token in printed and f"{server.url}/drain" in printed

        with raw_request(port, "/ticks?every=0.1") as sock:
            recv_until(sock, b'data: {"tick":1}', timeout=10)
            assert run_cli("drain", f"{server.url}/drain", "--token", "not-the-token-0123456789").returncode == 1
            drained = run_cli(*shlex.split(printed))
            assert drained.returncode == 0, drained.stderr
            assert drained.stdout.startswith("drained in")
            ended = recv_until(sock, b"\r\n0\r\n\r\n", timeout=10)  # the farewell, then a clean end of body
        hint = int(re.search(rb"\r\nretry: (\d+)\r\n\r\n\r\n0\r\n\r\n$", ended).group(1))
        assert 500 <= hint <= 2000  # the demo's supervisor asks clients back within 0.5-2 s
        assert get(f"{server.url}/ready")[0] == 503
        assert get(f"{server.url}/ticks")[0] == 503
        assert get(f"{server.url}/live")[0] == 200


def test_the_demo_takes_its_drain_token_from_the_environment_and_refuses_a_short_one(tmp_path):
    port = free_port()
    env = {"SSESUP_DRAIN_TOKEN": "token-from-the-environment-0123"}
    with serve([*CLI, "demo", "--port", str(port)], port, tmp_path, env=env) as server:
        assert "drain token: token-from-the-environment-0123\n" in server.log()
        assert get(f"{server.url}/drain")[0] == 405
    short = run_cli("demo", "--port", str(free_port()), env={"SSESUP_DRAIN_TOKEN": "short", "PATH": ""})
    assert short.returncode == 2
    assert "SSESUP_DRAIN_TOKEN must be at least 16 characters" in short.stderr


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    port = free_port()
    with serve([*CLI, "demo", "--port", str(port)], port, tmp_path_factory.mktemp("demo")) as server:
        yield server


def read_stream(url: str, until: bytes, headers: dict[str, str] | None = None) -> bytes:
    """The body of an event stream (de-chunked) up to the end of ``until``."""
    import httpx

    body = b""
    with httpx.stream("GET", url, headers=headers, timeout=10) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            body += chunk
            if until in body:
                return body[: body.index(until) + len(until)]
    raise AssertionError(f"the stream ended before {until!r}")


def test_kinds_sends_every_kind_then_ticks_and_resumes_after_the_last_event_id(demo_server):
    first_tick = f"event: tick\r\nid: {len(KINDS)}\r\n".encode() + b'data: {"tick":0}\r\n\r\n'
    received = read_stream(f"{demo_server.url}/kinds?every=0.05", first_tick)
    assert received == b"".join(kind.encode() for kind in KINDS) + first_tick
    resumed = read_stream(f"{demo_server.url}/kinds?every=0.05", first_tick, {"Last-Event-ID": "5"})
    assert resumed == KINDS[6].encode() + first_tick


def test_ticks_count_per_connection_retry_hint_and_resume(demo_server):
    with raw_request(demo_server.port, "/ticks?every=0&count=2&retry=250", extra="Last-Event-ID: 41\r\n") as sock:
        head, body = read_response(sock, timeout=10)
    assert head.startswith(b"HTTP/1.1 200")
    assert body == (
        b'event: tick\r\nid: 42\r\nretry: 250\r\ndata: {"tick":42}\r\n\r\n'
        b'event: tick\r\nid: 43\r\ndata: {"tick":43}\r\n\r\n'
    )
    with raw_request(demo_server.port, "/users/ada/ticks", extra="Last-Event-ID: not-a-number\r\n") as sock:
        assert b'id: 0\r\ndata: {"user":"ada","tick":0}' in recv_until(sock, b'"tick":0}', timeout=10)


def channel_numbers(url: str, count: int, last_event_id: str | None = None) -> list[tuple[str, dict]]:
    """The ids and data of the first ``count`` numbers of ``url/channel`` (after ``last_event_id``)."""
    import httpx

    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    frames: list[str] = []
    with httpx.stream("GET", f"{url}/channel", headers=headers, timeout=10) as response:
        assert response.status_code == 200
        body = ""
        for chunk in response.iter_text():
            body += chunk
            frames = [frame for frame in body.split("\r\n\r\n")[:-1] if "event: number" in frame]
            if len(frames) >= count:
                break
    numbers = []
    for frame in frames[:count]:
        fields = dict(line.split(": ", 1) for line in frame.split("\r\n"))
        numbers.append((fields["id"], json.loads(fields["data"])))
    return numbers


def test_channel_resumes_from_the_hubs_history_after_the_last_event_id(demo_server):
    first = channel_numbers(demo_server.url, 2)
    assert [data["n"] for _, data in first] == [first[0][1]["n"], first[0][1]["n"] + 1]
    time.sleep(3 * PUBLISH_EVERY)  # numbers published while the client is away
    resumed = channel_numbers(demo_server.url, 4, last_event_id=first[-1][0])
    assert [data["n"] for _, data in resumed] == [first[-1][1]["n"] + i for i in range(1, 5)]
    assert {data["publisher"] for _, data in first + resumed} == {first[0][1]["publisher"]}
    ids = [event_id for event_id, _ in first + resumed]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("query", ["/ticks?every=soon", "/ticks?count=-1", "/kinds?every=1e9", "/ticks?retry=x"])
def test_a_bad_query_is_refused_with_400(demo_server, query):
    status, _, body = get(f"{demo_server.url}{query}")
    assert status == 400
    assert body.endswith(b"\n") and b"Traceback" not in body


def test_the_page_is_plain_html_that_loads_nothing_from_elsewhere(demo_server):
    status, headers, body = get(f"{demo_server.url}/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert body.decode() == PAGE
    assert "new EventSource(" in PAGE
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", PAGE)  # no CDN, no other host
    assert "@import" not in PAGE and "url(" not in PAGE
    assert f"const EVENT_NAMES = {list(EVENT_NAMES)!r};".replace("'", '"') in PAGE
    assert {kind.event for kind in KINDS if kind.event} <= set(EVENT_NAMES)


def test_the_built_wheel_ships_the_page(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check", str(ROOT)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("ssesup-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("ssesup/demo.html") == (ROOT / "src" / "ssesup" / "demo.html").read_bytes()


def test_docs_demo_lists_every_endpoint():
    doc = (ROOT / "docs" / "demo.md").read_text()
    for path, _ in ENDPOINTS:
        assert f"| `{path}` |" in doc, path


def test_answers_are_runs_that_a_late_viewer_reads_whole_and_a_cancel_ends(demo_server):
    import httpx

    from ssesup.demo import fake_tokens
    from ssesup.testing import EventStreamParser

    def read(stream: str) -> list:
        parser = EventStreamParser()
        with raw_request(demo_server.port, stream) as sock:
            head, body = read_response(sock, timeout=20)  # raises unless the chunked body ended properly
        assert head.startswith(b"HTTP/1.1 200")
        return parser.feed(body)

    quick = httpx.post(f"{demo_server.url}/answers", params={"every": 0}, timeout=10)
    assert quick.status_code == 201
    time.sleep(0.5)  # it ends before anyone watches
    events = read(quick.json()["stream"])
    assert [event.data for event in events if event.event == "token"] == fake_tokens()
    assert [(event.event, event.data) for event in events[-1:]] == [("end", '{"status":"completed"}')]

    slow = httpx.post(f"{demo_server.url}/answers", params={"every": 5}, timeout=10).json()
    assert httpx.post(f"{demo_server.url}/answers/{slow['id']}/cancel", timeout=10).json() == {"cancelled": True}
    assert [(event.event, event.data) for event in read(slow["stream"])] == [("end", '{"status":"cancelled"}')]
    assert get(f"{demo_server.url}/answers/not-an-id")[0] == 404
    assert httpx.post(f"{demo_server.url}/answers", params={"every": "soon"}, timeout=10).status_code == 400
