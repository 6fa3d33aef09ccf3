"""Chromium over HTTP/2: more ``EventSource``s in one page than HTTP/1.1 allows, and a drain reaching each.

Debian's Chromium (``scripts/install-chromium.sh``), driven by Playwright, loads a page from a server with
a self-signed certificate (TLS with ALPN ``h2``; the page is served by tests/apps/network_app.py) whose
script opens 12 ``EventSource``s. Over HTTP/1.1 Chromium opens at most six connections to a host, so six
would stream and six would wait; over HTTP/2 all twelve share one connection. Then SIGTERM: each gets
its farewell and closes, and the server exits within its drain grace.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from netns import closes
from procs import free_port, serve, uvicorn_argv
from test_browser import CHROMIUM, CHROMIUM_FLAGS, WAIT_MS
from test_http2 import app_env, server_argv

SOURCES = 12


@pytest.fixture(scope="module")
def browser():
    import os

    from playwright.sync_api import sync_playwright

    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: run scripts/install-chromium.sh"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.mark.parametrize("kind", ["hypercorn-asyncio-tls", "granian-tls"])
def test_a_page_streams_twelve_event_sources_over_one_http2_connection_and_a_drain_reaches_each(
    kind: str, tmp_path: Path, browser
):
    grace = 3.0
    close_file = tmp_path / "closes.txt"
    port = free_port()
    argv = server_argv(kind, "127.0.0.1", port, tmp_path)
    with serve(argv, port, tmp_path, app_env(close_file, drain_grace=grace)) as server:
        context = browser.new_context(ignore_https_errors=True)
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        page.goto(f"https://127.0.0.1:{port}/page?n={SOURCES}")
        assert page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
        # Every source streams at once: over HTTP/1.1 the seventh would wait for a free connection.
        page.wait_for_function("window.sources.every(s => s.opened && s.ticks >= 2)")

        server.signal(signal.SIGTERM)
        signalled = time.monotonic()
        page.wait_for_function("window.sources.every(s => s.farewell)")
        server.process.wait(grace + 10)
        exited = time.monotonic() - signalled
        context.close()

    assert exited < grace + 4, f"exited {exited:.1f} s after SIGTERM (grace {grace} s)"
    ended = sorted(reason for _, route, reason, _ in closes(close_file) if route == "/slow")
    assert ended == ["drained"] * SOURCES


def test_over_http1_the_same_page_streams_six_event_sources_and_the_rest_wait(tmp_path: Path, browser):
    """Why users move to HTTP/2: Chromium's six connections per host hold the seventh source back."""
    close_file = tmp_path / "closes.txt"
    port = free_port()
    argv = uvicorn_argv("apps.network_app:app", port, "--log-level", "warning")
    with serve(argv, port, tmp_path, app_env(close_file)):
        context = browser.new_context()
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/page?n={SOURCES}")
        page.wait_for_function("window.sources.filter(s => s.ticks >= 4).length >= 6")
        opened = page.evaluate("window.sources.filter(s => s.opened).length")
        context.close()
    assert opened == 6
