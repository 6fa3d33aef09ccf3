"""A browser page whose credential expires (Debian's headless Chromium, driven by Playwright): on the
stream's ``expired`` event it fetches a fresh credential and opens the stream again after its last event
id; every number published reaches it once, in order, across the expiries."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from procs import free_port, serve, uvicorn_argv
from test_browser import browser, context  # noqa: F401 (the browser's fixtures)


@pytest.fixture
def server(tmp_path):
    port = free_port()
    with serve(uvicorn_argv("apps.identity_app:app", port, "--log-level", "warning"), port, tmp_path) as server:
        yield server


def test_a_page_whose_credential_expires_fetches_a_new_one_and_resumes_with_no_gap_and_no_duplicate(
    context,  # noqa: F811
    server,
):
    page = context.new_page()
    page.goto(f"{server.url}/page?ttl=1.2")
    page.wait_for_function("() => window.state.open")
    time.sleep(0.3)  # the stream has joined its channel
    published = 0
    stop = threading.Event()

    def publish() -> None:
        nonlocal published
        while not stop.is_set():
            httpx.post(f"{server.url}/publish", params={"channel": "orders", "start": published, "count": 1})
            published += 1
            time.sleep(0.02)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    page.wait_for_function("() => window.state.expiries >= 3", timeout=30_000)
    stop.set()
    publisher.join(10)
    page.wait_for_function(f"() => window.state.numbers.length >= {published}", timeout=30_000)
    time.sleep(0.3)  # nothing more arrives
    state = page.evaluate("() => window.state")
    assert state["numbers"] == list(range(published)), state["numbers"]  # no gap, no duplicate
    assert state["expiries"] >= 3 and state["connects"] == state["expiries"] + 1
    assert state["errors"] == 0  # every end was an expiry the page handled, never a failed connection
    assert server.log().count("close_reason=expired") >= 3
