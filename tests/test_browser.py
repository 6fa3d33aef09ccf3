"""The demo's page in a real browser: Debian's headless Chromium (``scripts/install-chromium.sh``), driven
by Playwright, against ``ssesup demo`` running as a subprocess on 127.0.0.1.

What a browser's ``EventSource`` sees: every kind of event intact, named events at their listeners, the
``retry:`` delay, a deploy (SIGTERM, a new process on the same port) as one reconnect that resumes after
the last event id, an endpoint drain as a refusal it does not retry, a page whose counts match the
server's metrics, and a hub channel on Redis that a deploy hands from one process to the next without
losing or repeating an event. A run keeps a screenshot of the page (``docs/demo.png`` with SSESUP_UPDATE_SCREENSHOT=1).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from procs import ServerProcess, free_port, serve
from servers import wait_until
from ssesup.demo import FAKE_ANSWER, KINDS, PUBLISH_EVERY, fake_tokens
from test_demo import channel_numbers
from test_hub_redis import RedisServer

CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that reaches outside hosts: the machine has no network but 127.0.0.1.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUM_DEFAULT_RECONNECT_MS = 3000
TOKEN = "browser-test-drain-token-0123456789"
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "demo.png"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: run scripts/install-chromium.sh"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(WAIT_MS)
    yield context
    context.close()


@contextlib.contextmanager
def demo(tmp_path: Path, port: int | None = None, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """``ssesup demo`` on ``port`` (a free one by default), its log in a directory of its own."""
    port = port or free_port()
    logs = Path(tmp_path) / f"demo-{len(list(Path(tmp_path).glob('demo-*')))}"
    logs.mkdir()
    argv = [sys.executable, "-m", "ssesup.cli", "demo", "--port", str(port)]
    with serve(argv, port, logs, env={"SSESUP_DRAIN_TOKEN": TOKEN, **(env or {})}) as server:
        yield server


def open_page(context, server: ServerProcess, src: str):
    page = context.new_page()
    page.goto(f"{server.url}/?src={urllib.parse.quote(src, safe='/')}")
    return page


def wait_for(page, condition: str, arg: object = None) -> None:
    """Wait until the JS expression ``condition`` (over ``demo``, the page's state, and ``arg``) holds."""
    page.wait_for_function(f"arg => {{ const demo = window.demo; return {condition}; }}", arg=arg)


def received(page) -> list[tuple[str, str, str]]:
    return [tuple(event) for event in page.evaluate("() => window.demo.events.map(e => [e.type, e.id, e.data])")]


def state(page) -> dict[str, str]:
    """The page's state as its DOM shows it (the data attributes of ``#status``)."""
    return page.evaluate("() => ({...document.getElementById('status').dataset})")


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in scrape(server).items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def as_dispatched(data: str) -> str:
    """``data`` as a browser dispatches it: every line break (CRLF, CR, LF) read as LF."""
    return data.replace("\r\n", "\n").replace("\r", "\n")


def keep_screenshot(page, tmp_path: Path) -> Path:
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot))
    if os.environ.get("SSESUP_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)
    return shot


def test_every_kind_of_event_arrives_intact_and_named_events_reach_their_listeners(context, tmp_path):
    with demo(tmp_path) as server:
        page = open_page(context, server, "/kinds?every=0.5")
        wait_for(page, "demo.events.length >= arg", len(KINDS) + 2)
        events = received(page)
        shot = keep_screenshot(page, tmp_path)

        expected = [(kind.event or "message", kind.id, as_dispatched(kind.data)) for kind in KINDS]
        assert events[: len(KINDS)] == expected
        assert events[len(KINDS) : len(KINDS) + 2] == [
            ("tick", str(len(KINDS)), '{"tick":0}'),
            ("tick", str(len(KINDS) + 1), '{"tick":1}'),
        ]
        large = next(data for kind, _, data in events if kind == "large")
        assert len(large.encode()) > 256 * 1000 and large == as_dispatched(KINDS[5].data)
        assert page.locator("#events tr[data-type=unicode] td.data").inner_text() == KINDS[1].data
        assert page.locator("#events tr[data-type=tricky]").count() == 1  # data lines made no second event
        rows, shown = page.evaluate("[document.querySelectorAll('#events tr').length, demo.events.length]")
        assert rows == shown  # one row per event (read at one moment: ticks go on arriving)
        assert state(page)["state"] == "open" and state(page)["reconnects"] == "0"
        assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 10_000


def test_retry_sets_the_reconnect_delay_and_each_reconnect_resumes_after_the_last_event_id(context, tmp_path):
    with demo(tmp_path) as server:
        quick = open_page(context, server, "/ticks?count=2&every=0.05&retry=100")
        slow = open_page(context, server, "/ticks?count=2&every=0.05&retry=4000")
        wait_for(quick, "demo.reconnects >= 2")
        wait_for(slow, "demo.reconnects >= 1 && demo.events.length >= 4")
        quick_gaps = quick.evaluate("() => window.demo.reconnectGaps")
        slow_gaps = slow.evaluate("() => window.demo.reconnectGaps")
        slow_events = received(slow)

    # Chromium waits 3 s without a retry: field; 100 ms brings it back sooner, 4000 ms later.
    assert all(gap < CHROMIUM_DEFAULT_RECONNECT_MS for gap in quick_gaps), quick_gaps
    assert slow_gaps[0] >= 3900 > CHROMIUM_DEFAULT_RECONNECT_MS, slow_gaps
    assert [event_id for _, event_id, _ in slow_events[:4]] == ["0", "1", "2", "3"]


def test_a_deploy_drains_the_page_and_it_reconnects_to_the_new_process_after_its_last_event_id(context, tmp_path):
    port = free_port()
    with demo(tmp_path, port) as old:
        page = open_page(context, old, "/ticks?every=0.2")
        wait_for(page, "demo.events.length >= 3")
        old.signal()  # SIGTERM: a deploy stops the old process ...
        assert old.process.wait(30) == -signal.SIGTERM  # uvicorn ends by re-raising the signal it shut down on
        before = len(received(page))
        assert "close_reason=drained" in old.log()
    with demo(tmp_path, port):  # ... and starts the new one on the same port
        wait_for(page, "demo.reconnects === 1 && demo.events.length >= arg", before + 3)
        events = received(page)
        page_state = state(page)

    ids = [int(event_id) for _, event_id, _ in events]
    assert ids == list(range(len(ids)))  # no tick lost, none twice: the new process went on after the last id
    assert page_state["state"] == "open" and page_state["opens"] == "2"
    assert int(page_state["reconnectMs"]) >= 500  # the farewell's retry: hint, 0.5-2 s in the demo


def test_after_an_endpoint_drain_the_page_reconnects_into_the_refusal_and_stops(context, tmp_path):
    with demo(tmp_path) as server:
        page = open_page(context, server, "/ticks?every=0.2")
        wait_for(page, "demo.state === 'open' && demo.events.length >= 2")
        drain = subprocess.run(
            [sys.executable, "-m", "ssesup.cli", "drain", f"{server.url}/drain", "--token", TOKEN],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert drain.returncode == 0, drain.stderr
        assert drain.stdout.startswith("drained in")
        wait_for(page, "demo.state === 'closed'")
        wait_until(
            lambda: metric(server, "ssesup_streams_rejected_total", reason="draining") == 1, timeout=10, interval=0.1
        )
        assert state(page)["opens"] == "1" and state(page)["reconnects"] == "0"
        assert metric(server, "ssesup_streams_closed_total", route="/ticks", reason="drained") == 1


def test_the_page_state_matches_the_server_metrics(context, tmp_path):
    with demo(tmp_path) as server:
        page = open_page(context, server, "/kinds?every=3600")  # every kind, then quiet
        wait_for(page, "demo.state === 'open' && demo.events.length === arg", len(KINDS))

        # The supervisor reports what streams sent once a second.
        wait_until(
            lambda: metric(server, "ssesup_events_sent_total", route="/kinds") == len(KINDS), timeout=10, interval=0.1
        )
        assert int(state(page)["events"]) == len(KINDS)
        assert metric(server, "ssesup_streams_opened_total", route="/kinds") == int(state(page)["opens"]) == 1
        assert metric(server, "ssesup_streams_active", route="/kinds") == 1
        assert state(page)["lastEventId"] == str(len(KINDS) - 1)

        page.click("#close")
        assert state(page)["state"] == "closed"
        wait_until(lambda: metric(server, "ssesup_streams_active", route="/kinds") == 0, timeout=10, interval=0.1)
        assert metric(server, "ssesup_streams_closed_total", route="/kinds", reason="client_disconnect") == 1
        assert metric(server, "ssesup_events_sent_total", route="/kinds") == int(state(page)["events"])


def test_a_deploy_hands_a_hub_channel_to_the_next_process_and_the_page_misses_nothing(context, tmp_path):
    (tmp_path / "redis").mkdir()
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    env = {"SSESUP_HUB_URL": redis_server.url}
    port = free_port()
    try:
        # Another process on the same Redis publishes all along, while the page has no process to talk to.
        with demo(tmp_path, env=env) as other:
            with demo(tmp_path, port, env=env) as old:
                page = open_page(context, old, "/channel")
                wait_for(page, "demo.state === 'open' && demo.events.length >= 4")
                old.signal()  # SIGTERM: the old process drains, and publishes until its lifespan ends
                assert old.process.wait(30) == -signal.SIGTERM
                before = len(received(page))
                assert "close_reason=drained" in old.log()
            with demo(tmp_path, port, env=env):  # the new process resumes the page from Redis's history
                wait_for(page, "demo.reconnects === 1 && demo.events.length >= arg", before + 6)
                events = received(page)
                page_state = state(page)
            # What history holds after the page's first event, read by a plain client of the other process.
            history = channel_numbers(other.url, len(events) - 1, last_event_id=events[0][1])
    finally:
        redis_server.stop()

    assert page_state["state"] == "open" and page_state["opens"] == "2"
    assert {kind for kind, _, _ in events} == {"number"}  # no gap: the id was honoured across processes
    assert [(event_id, json.loads(data)) for _, event_id, data in events[1:]] == history
    positions = [int(event_id.rsplit(".", 1)[1], 36) for _, event_id, _ in events]
    assert positions == sorted(set(positions))  # each once, in order
    numbers: dict[int, list[int]] = {}
    for _, _, data in events:
        numbers.setdefault(json.loads(data)["publisher"], []).append(json.loads(data)["n"])
    for published in numbers.values():  # each publisher's numbers, none missing between its first and last
        assert published == list(range(published[0], published[0] + len(published))), numbers
    # The other process published while the page was away (longer than it takes to publish one), and
    # its numbers are on both sides of the seam: those of the gap came from history.
    assert int(page_state["reconnectMs"]) >= PUBLISH_EVERY * 1000
    seen_before = {json.loads(data)["publisher"] for _, _, data in events[:before]}
    seen_after = {json.loads(data)["publisher"] for _, _, data in events[before:]}
    assert other.process.pid in seen_before & seen_after


def test_a_page_reloaded_mid_answer_shows_the_whole_answer_once(context, tmp_path):
    """The fake model's answer is a run: a reload mid-answer opens a new EventSource (no id), which starts
    at the run's first token, so the page shows the whole answer, each token once; on end it closes."""
    with demo(tmp_path) as server:
        page = context.new_page()
        page.goto(f"{server.url}/")
        page.click("#ask")
        page.wait_for_url("**/?src=%2Fanswers%2F*")
        wait_for(page, "demo.tokens >= 10")
        before = page.evaluate("() => window.demo.tokens")
        assert before < len(fake_tokens())  # mid-answer
        page.reload()
        wait_for(page, "demo.ended !== ''")
        answer = page.evaluate("() => ({...window.demo, events: window.demo.events.map(e => e.type)})")
        panel = page.evaluate("() => ({...document.getElementById('answer').dataset})")
        assert answer["ended"] == "completed" and panel == {"tokens": str(len(fake_tokens())), "ended": "completed"}
        assert answer["answer"] == FAKE_ANSWER == page.text_content("#answer-text")
        assert answer["events"] == ["token"] * len(fake_tokens()) + ["end"]
        assert answer["opens"] == 1 and page.evaluate("() => window.demo.source.readyState") == 2  # closed
        assert state(page)["state"] == "closed"
