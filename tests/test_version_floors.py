"""ssesup works with the lowest version of each dependency pyproject.toml allows.

A fresh virtual environment gets each declared dependency (``[project] dependencies`` and the ``redis``
and ``uvicorn`` extras) at exactly its floor, the ``>=`` of its requirement, with the tools the tests
need at the pinned versions below, and ssesup from this tree (a ``.pth`` file, as an editable install
makes). There the core tests run: timers and the producer on asyncio and trio, the stream against a
real uvicorn, hooks, limits, logs, metrics, drains and signals with uvicorn as a subprocess, and the
hub in memory and on a real redis-server. A floor raised or lowered in pyproject.toml is what this test
installs next time; a requirement without a floor fails it.

The tests left out need programs that are no dependency of ssesup (hypercorn, gunicorn; FastAPI, whose
releases require Starlettes of their own) or take long (several servers sharing a Redis, a Redis
restart); they run, with the newest versions, in the suite. The environment takes about 15 s with
pip's cache, the tests 35 s more on an idle machine. Needs PyPI where pip's cache lacks a version.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from xml.etree import ElementTree

from packaging.version import Version

ROOT = Path(__file__).parent.parent
TESTED_EXTRAS = ("redis", "uvicorn")
# What the core tests run with besides ssesup's dependencies: pinned, so that only the floors vary.
TOOLS = (
    "pytest==9.0.3",
    "httpx==0.29.0",
    "httpx-sse==0.4.3",
    "hypothesis==6.155.2",
    "trio==0.35.0",  # anyio's other backend, which ssesup supports
)
# The tests of what touches a dependency. Not the machine's or the events' own: states/machine.py and
# events.py import none (their tests exercise hypothesis and httpx-sse, tools pinned here anyway).
CORE = (
    "tests/test_timers.py",
    "tests/test_producer.py",
    "tests/test_stream.py",
    "tests/test_hooks.py",
    "tests/test_limits.py",
    "tests/test_logs.py",
    "tests/test_metrics.py",
    "tests/test_hub.py",
    "tests/test_hub_redis.py",
    "tests/test_drain.py",
    "tests/test_signals.py",
)
LEFT_OUT = (
    "tests/test_limits.py::test_the_caps_hold_under_trio_too",  # hypercorn
    "tests/test_metrics.py::test_metrics_app_mounts_in_one_line[fastapi-add-route]",  # FastAPI: its own floors
    "tests/test_drain.py::test_sigterm_drains_under_other_servers",  # gunicorn, hypercorn
    "tests/test_signals.py::test_a_server_without_signal_handlers_gets_a_warning_at_the_first_stream",  # hypercorn
    "tests/test_hub_redis.py::test_a_client_drained_off_one_instance_resumes_on_another_with_every_event_once",
    "tests/test_hub_redis.py::test_through_uvicorn_workers_a_client_reconnects_to_whichever_worker_answers",
    "tests/test_hub_redis.py::test_through_a_redis_restart_every_acknowledged_publish_is_delivered_once",
    "tests/test_hub_redis.py::test_a_stuck_redis_is_unavailable_at_the_deadline_and_subscriptions_carry_on",
    "tests/test_hub_redis.py::test_a_subscriber_that_does_not_take_a_backlog_still_overflows_its_mailbox",
)
# Fewer passing than this (105 when it was written) means tests were lost on the way.
AT_LEAST = 95

_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?P<extras>\[[^\]]*\])?(?P<spec>.*)$")


def floors() -> dict[str, str]:
    """``{requirement name with its extras: floor}`` for each dependency and tested extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in TESTED_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    found = {}
    for requirement in requirements:
        parsed = _REQUIREMENT.match(requirement.replace(" ", ""))
        assert parsed, f"cannot read the requirement {requirement!r}"
        lower = [part[2:] for part in parsed["spec"].split(",") if part.startswith(">=")]
        assert len(lower) == 1, f"{requirement!r} needs one floor (>=X)"
        found[parsed["name"] + (parsed["extras"] or "")] = lower[0]
    return found


def distribution(requirement: str) -> str:
    return requirement.split("[")[0]


def test_every_dependency_has_a_floor_and_the_core_tests_pass_there(tmp_path):
    pins = floors()
    assert {distribution(name) for name in pins} >= {
        "starlette",
        "anyio",
        "structlog",
        "prometheus-client",
        "redis",
        "uvicorn",
    }
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet"]
    installed = subprocess.run(
        [*install, *(f"{name}=={version}" for name, version in pins.items()), *TOOLS],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # ssesup from this tree, its dependencies as installed above.
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert site != sysconfig.get_path("purelib")
    (Path(site) / "ssesup-under-test.pth").write_text(str(ROOT / "src") + "\n")
    environment = {
        name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    environment["PYTHONNOUSERSITE"] = "1"
    probe = "import importlib.metadata as m, ssesup, sys; print(ssesup.__file__); "
    probe += "print(*(m.version(name) for name in sys.argv[1:]))"
    names = [distribution(name) for name in pins]
    seen = subprocess.run(
        [python, "-c", probe, *names], capture_output=True, text=True, check=True, env=environment
    ).stdout.split("\n")
    assert seen[0] == str(ROOT / "src" / "ssesup" / "__init__.py")
    versions = {name: Version(version) for name, version in zip(names, seen[1].split(), strict=True)}
    assert versions == {distribution(name): Version(version) for name, version in pins.items()}

    report = tmp_path / "floors.xml"
    run = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=line", "--maxfail=10", f"--junitxml={report}"]
        + list(CORE)
        + [f"--deselect={test}" for test in LEFT_OUT],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, f"at the floors {pins}:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    passed: dict[str, int] = {}
    for case in ElementTree.parse(report).iter("testcase"):
        assert not list(case), f"{case.get('classname')}::{case.get('name')}: {[child.tag for child in case]}"
        module = "tests/" + case.get("classname", "").split(".")[1] + ".py"
        passed[module] = passed.get(module, 0) + 1
    assert set(passed) == set(CORE), f"no test passed in {set(CORE) - set(passed)}"
    assert sum(passed.values()) >= AT_LEAST, passed
