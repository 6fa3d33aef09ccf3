"""The Grafana dashboard and the Prometheus alert rules, checked for real: promtool checks the rules
(and their unit tests) and a live scrape, then a real Prometheus scrapes the test app while a load opens,
completes, breaks, stalls and drains streams, and every panel query, dashboard variable and alert
expression is evaluated through Prometheus's HTTP API."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from apps.metrics_app import free_port, sample, serve, uvicorn
from servers import raw_request, read_response, recv_until, wait_until
from ssesup.hub.metrics import HubMetrics
from ssesup.metrics import StreamMetrics

ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "dashboards" / "ssesup.json"
ALERTS = ROOT / "dashboards" / "alerts.yml"
ALERT_TESTS = ROOT / "dashboards" / "alerts-test.yml"
START_PROMETHEUS = ROOT / "scripts" / "start-prometheus.sh"

# What Grafana would put in place of its variables, for queries run straight against Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "10m", "$job": "ssesup", "$route": ".*"}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    assert shutil.which("promtool"), "promtool is missing: run scripts/install-prometheus.sh"
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, cwd=ROOT)


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def panel_queries() -> list[tuple[str, dict]]:
    return [(panel["title"], target) for panel in panels() for target in panel["targets"]]


def promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, expr
    return expr


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", ALERTS.read_text(), re.MULTILINE)


# -- static checks -------------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check_rules():
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_each_alert_fires_in_its_case_and_not_in_the_healthy_one():
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert tested == set(alert_names())


def test_the_dashboard_is_an_importable_grafana_dashboard_with_the_datasource_as_a_variable():
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = [panel["title"] for panel in board["panels"]]
    assert len(titles) == len(set(titles))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        box = panel["gridPos"]
        assert box["x"] >= 0 and box["x"] + box["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    for panel in panels():
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource
            used = set(re.findall(r"\$\w+", target["expr"]))
            assert used <= {"$job", "$route", "$__rate_interval", "$__range"}, used
    for name in ("job", "route"):
        assert variables[name]["datasource"] == datasource
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"


def test_every_ssesup_metric_is_on_the_dashboard():
    registry = CollectorRegistry()
    StreamMetrics(registry)
    HubMetrics(registry)
    exprs = " ".join(target["expr"] for _, target in panel_queries())
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        if name in ("ssesup_drain_grace_seconds", "ssesup_drain_started_timestamp_seconds"):
            continue  # for the drain-stuck alert, not a panel
        assert name in exprs, f"{name} is on no panel"


# -- a real Prometheus ---------------------------------------------------------------------------------


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: object) -> dict:
        response = httpx.get(self.url + path, params=params, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float) -> list[dict]:
        return self.get("/api/v1/query_range", query=expr, start=start, end=end, step=1)["result"]


@pytest.fixture
def app_server(tmp_path):
    with serve(uvicorn("--log-level", "warning"), tmp_path / "app.log") as server:
        yield server


@pytest.fixture
def prometheus(app_server, tmp_path):
    port = free_port()
    command = ["sh", str(START_PROMETHEUS), "-l", f"127.0.0.1:{port}", "-d", str(tmp_path / "prometheus"), "-i", "1s"]
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed below, after the process)
    process = subprocess.Popen([*command, f"127.0.0.1:{app_server.port}"], stdout=log, stderr=subprocess.STDOUT)
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def ready() -> bool:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                return httpx.get(server.url + "/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=20, interval=0.1)
        wait_until(lambda: [r["value"][1] for r in server.query('up{job="ssesup"}')] == ["1"], timeout=10)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        log.close()


def run_load(port: int, seconds: float) -> bool:
    """Streams that complete, are broken by their client, fail, stall, idle and ping; hub channels that
    are published to, resumed, resumed with a bad id, overflowed and stalled; runs that complete and
    fail; then a drain (which interrupts the runs still going).

    Returns whether the app could drain (its supervisor has ``drain``).
    """
    stop = threading.Event()

    def read_whole(path: str) -> None:
        with raw_request(port, path) as sock:
            read_response(sock)

    def hold(path: str, until: bytes = b"hello") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        recv_until(sock, until)
        return sock

    def churn(kind: int) -> None:
        for i in range(1000):
            if stop.is_set():
                return
            if kind == 0:
                read_whole(f"/users/done{i}/events?count=3&every=0.05&ping=0")
            elif kind == 1:
                hold(f"/users/gone{i}/events?every=0.1&ping=0").close()
            elif kind == 2:
                read_whole("/broken")
            elif kind == 3:
                read_whole(f"/users/expiring{i}/events?every=0.1&ping=0&expires=0.3")  # ends expired
            else:
                with hold(f"/users/revoked{i}/events?every=0.1&ping=0"):
                    httpx.post(f"http://127.0.0.1:{port}/admin/revoke?user=revoked{i}", timeout=10)
            time.sleep(0.2)

    def stall() -> None:
        # Held until the app's send timeout (1 s) has closed it, however long a loaded machine takes.
        timed_out = {"route": "/flood", "reason": "send_timeout"}
        url = f"http://127.0.0.1:{port}"
        with raw_request(port, "/flood", rcvbuf=4096):
            wait_until(lambda: sample(url, "ssesup_streams_closed_total", **timed_out), timeout=15, interval=0.1)

    def publish(channel: str, count: int, size: int = 0) -> list[str]:
        url = f"http://127.0.0.1:{port}/publish?channel={channel}&count={count}&size={size}"
        return httpx.post(url, timeout=10).json()["ids"]

    def resume() -> None:
        first = publish("ticks", 3)[0]
        while not stop.is_set():
            publish("ticks", 3)  # delivered live to the held subscriber
            hold(f"/channel?channel=ticks&last_event_id={first}", b"number").close()  # replayed
            hold("/channel?channel=ticks&last_event_id=bad", b"gap").close()  # a malformed id's gap
            time.sleep(0.2)

    def stall_channels() -> None:
        # Mailboxes of 20 events: "slow" closes its stalled subscriber, "drops" keeps its own full.
        with (
            raw_request(port, "/channel?channel=slow", rcvbuf=4096) as slow,
            raw_request(port, "/channel?channel=drops&send_timeout=30", rcvbuf=4096) as drops,
        ):
            recv_until(slow, b"id:")
            recv_until(drops, b"id:")

            def mailbox_full() -> bool:  # once the socket buffers are full too
                publish("drops", 20, size=65536)
                return (sample(f"http://127.0.0.1:{port}", "ssesup_hub_mailbox_events") or 0) > 0

            wait_until(mailbox_full, timeout=10, interval=0.1)
            stop.wait(1.5)  # a scrape of the close counter at 0 first (the app's scrape interval is 1 s)
            publish("slow", 100, size=65536)
            stop.wait()

    def runs() -> None:
        for n in itertools.count():
            started = httpx.post(f"http://127.0.0.1:{port}/runs?tokens=15&every=0.1&fail={n % 2}", timeout=10)
            assert started.status_code == 201, started.text
            if stop.wait(0.3):
                return

    held = [hold(f"/users/held{i}/events?every=0.2&ping=0") for i in range(4)]
    held += [hold(f"/users/idle{i}/events?every=30") for i in range(2)]  # idle: pinged every 0.5 s
    held.append(hold("/channel?channel=ticks", b"id:"))
    held.append(hold("/channel?channel=ticks&user=viewer", b"id:"))  # counted in presence
    hold("/stuck-sync").close()  # its blocked thread is abandoned
    try:
        with ThreadPoolExecutor(9) as pool:
            futures = [pool.submit(churn, kind) for kind in range(5)] + [pool.submit(stall)]
            futures += [pool.submit(resume), pool.submit(stall_channels), pool.submit(runs)]
            time.sleep(seconds)
            stop.set()
            for future in futures:
                future.result()
        drain = httpx.post(f"http://127.0.0.1:{port}/admin/drain?grace=1", timeout=10)
        assert drain.status_code in (200, 501), drain.text
    finally:
        for sock in held:
            sock.close()
    if drain.status_code == 200:
        refused = httpx.get(f"http://127.0.0.1:{port}/users/late/events", timeout=5)
        assert refused.status_code == 503
    return drain.status_code == 200


def test_prometheus_scrapes_the_app_under_load_and_every_panel_and_alert_evaluates(app_server, prometheus):
    start = time.time()
    drained = run_load(app_server.port, seconds=5)
    scrape = httpx.get(app_server.url + "/metrics", timeout=5).text
    check = promtool("check", "metrics", stdin=scrape)
    assert check.returncode == 0, check.stdout + check.stderr
    time.sleep(2.5)  # the last state scraped
    end = time.time()

    # Panels about drains and rejections show data above 0 only when the app could drain; the drain
    # flag never does here: a drain of a few streams is over before the next scrape.
    drain_panels = {"Drain duration", "Rejected streams per second"}
    positive_needed = {title for title, _ in panel_queries()} - (set() if drained else drain_panels)
    positive_needed -= {"Draining now", "Drain in progress by instance"}
    # The in-memory hub's engine never fails: its errors stay at 0 (a failing engine is the alert
    # SSESupHubBackendErrors, tested in alerts-test.yml).
    positive_needed -= {"Hub backend errors per second"}
    positive: set[str] = set()
    for title, target in panel_queries():
        expr = promql(target["expr"])
        if target.get("instant"):
            result = prometheus.query(expr)
            values = [float(series["value"][1]) for series in result]
        else:
            result = prometheus.query_range(expr, start, end)
            values = [float(v) for series in result for _, v in series["values"]]
        assert result, f"panel {title!r}: no data for {expr}"
        if any(v > 0 and not math.isnan(v) for v in values):
            positive.add(title)
    assert positive >= positive_needed, f"panels that never showed a value above 0: {positive_needed - positive}"

    reasons = prometheus.query(promql('sum by (reason) (ssesup_streams_closed_total{job=~"$job"}) > 0'))
    expected = {"completed", "client_disconnect", "error", "send_timeout", "expired", "revoked"}
    expected |= {"drained"} if drained else set()
    assert {series["metric"]["reason"] for series in reasons} >= expected

    routes = prometheus.get("/api/v1/label/route/values", **{"match[]": "ssesup_streams_opened_total"})
    assert set(routes) == {"/users/{user_id}/events", "/broken", "/flood", "/stuck-sync", "/channel"}

    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"]).groups()
        values = prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": promql(selector)})
        assert values, f"variable {variable['name']} has no values"

    def rules() -> list[dict]:
        return [rule for group in prometheus.get("/api/v1/rules")["groups"] for rule in group["rules"]]

    assert sorted(rule["name"] for rule in rules()) == sorted(alert_names())
    for rule in rules():
        prometheus.query(rule["query"])  # parses and evaluates, firing or not

    def every_rule_evaluated() -> bool:
        assert all(rule["health"] != "err" for rule in rules()), rules()
        return all(rule["health"] == "ok" for rule in rules())

    wait_until(every_rule_evaluated, timeout=10, interval=0.2)
