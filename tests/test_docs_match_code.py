"""The docs' tables say what the code does: every close reason, every label value of the metrics that
are labelled by reason, every log event and every metric the code defines is in its table, and each
table names nothing the code does not have."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry

from ssesup import Supervisor
from ssesup.hub.ids import GapReason
from ssesup.hub.metrics import hub_metrics
from ssesup.limits import Admission, StreamLimits
from ssesup.metrics import AUTH_FAILURE_REASONS, metrics_observer
from ssesup.states import CloseReason

ROOT = Path(__file__).parent.parent
SRC = ROOT / "src" / "ssesup"
README = (ROOT / "README.md").read_text()
OBSERVABILITY = (ROOT / "docs" / "observability.md").read_text()
CHANNELS = (ROOT / "docs" / "channels.md").read_text()
LEVELS = ("debug", "info", "warning", "error", "exception", "critical")
EVENT = re.compile(r"[a-z_]+\.[a-z_.]+")


def table_after(text: str, header: str) -> list[list[str]]:
    """The rows of the markdown table whose header row starts with ``header``, as lists of cells."""
    lines = text[text.index(header) :].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text))


def row_of(text: str, first_cell: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]
    return line


def values_after(line: str, marker: str) -> set[str]:
    """The backticked values in ``line`` after ``marker`` (a list such as "by close reason: `a`, `b`")."""
    return backticked(line[line.index(marker) + len(marker) :])


def test_the_readme_lists_every_close_reason_and_no_other():
    rows = table_after(README, "| close reason | when | the client sees |")
    assert {row[0].strip("`") for row in rows} == {reason.value for reason in CloseReason}


def test_the_closed_metric_and_its_panel_list_every_close_reason():
    reasons = {reason.value for reason in CloseReason}
    assert values_after(row_of(OBSERVABILITY, "`ssesup_streams_closed_total`"), "by close reason:") == reasons
    assert values_after(row_of(OBSERVABILITY, "Closes per second by reason"), "why streams end:") == reasons


def test_the_rejected_and_auth_failure_metrics_list_every_reason_the_code_gives():
    admission = Admission(StreamLimits(max_streams=1, max_streams_per_client=1), clock=lambda: 0.0)
    refusals = {
        Supervisor(metrics=False).drain_refusal.reason,
        admission.busy.reason,
        admission.too_many.reason,
        admission.too_many_for_user.reason,
    }
    assert values_after(row_of(OBSERVABILITY, "`ssesup_streams_rejected_total`"), "new streams refused:") >= refusals
    rejected = row_of(OBSERVABILITY, "`ssesup_streams_rejected_total`")
    assert set(re.findall(r"`(\w+)` \(\d{3}", rejected)) == refusals
    auth = row_of(OBSERVABILITY, "`ssesup_drain_auth_failures_total`")
    assert set(re.findall(r"`(\w+)` \(\d{3}", auth)) == set(AUTH_FAILURE_REASONS)


def test_the_gap_reasons_table_lists_every_gap_reason():
    rows = table_after(CHANNELS, "| reason | when | the stream resumes |")
    assert {row[0].strip("`") for row in rows} == {reason.value for reason in GapReason}


def metric_names(collectors: object) -> set[str]:
    registry = CollectorRegistry()
    collectors(registry)  # type: ignore[operator]
    names = set()
    for metric in registry.collect():
        suffix = "_total" if metric.type == "counter" else ""
        names.add(metric.name + suffix)
    return names


def test_every_metric_is_in_a_table_and_every_table_row_is_a_metric():
    core = metric_names(metrics_observer)
    documented_core = {row[0].strip("`") for row in table_after(OBSERVABILITY, "| name | type | labels | meaning |")}
    assert documented_core == core
    hub = metric_names(hub_metrics)
    documented_hub = {re.sub(r"\{.*", "", row[0].strip("`")) for row in table_after(CHANNELS, "| metric | meaning |")}
    assert documented_hub == hub


def logged_events() -> set[str]:
    """The structlog event names ssesup's code can log: the event argument of each ``log.<level>(...)``,
    ``log.log(level, ...)`` and ``SummaryLog(...)`` call, read from the source."""
    events = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func, args = node.func, node.args
            name = ast.unparse(func)
            level_call = isinstance(func, ast.Attribute) and func.attr in LEVELS and "log" in ast.unparse(func.value)
            if isinstance(func, ast.Attribute) and func.attr == "log" and len(args) >= 2:
                event = args[1]
            elif level_call or name.endswith(("SummaryLog", "logs.debug")) or name == "debug":
                event = args[0] if args else None
            else:
                continue
            if isinstance(event, ast.Constant) and isinstance(event.value, str) and EVENT.fullmatch(event.value):
                events.add(event.value)
    return events


def test_the_log_table_lists_every_event_the_code_logs_and_no_other():
    rows = table_after(OBSERVABILITY, "| event | level | fields |")
    documented = {name for row in rows for name in backticked(row[0])}
    code = logged_events()
    assert len(code) > 20  # the scan found the code's events
    assert documented == code


def test_without_logging_configured_no_debug_line_is_printed():
    """structlog unconfigured prints every level to stdout; ssesup's own debug lines stay out of it."""
    script = textwrap.dedent(
        """
        import anyio
        from starlette.applications import Starlette
        from starlette.routing import Route
        from ssesup import Event, SupervisedStream
        from ssesup.testing import SSEClient

        async def ticks(request):
            async def gen():
                yield Event("tick", id="1", event="tick")
                await anyio.sleep_forever()
            return SupervisedStream(gen())

        app = Starlette(routes=[Route("/ticks", ticks)])
        for _ in range(3):
            assert SSEClient(app).stream("/ticks", count=1).data() == ["tick"]
        print("done")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "done"
    assert "debug" not in result.stdout, result.stdout
