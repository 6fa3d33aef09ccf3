"""sse-starlette 3.7.0's own tests, as published in its sdist, run against ``ssesup.compat``.

The sdist is downloaded here, at test time (nothing of it is kept in this repository), and its tests run
in a subprocess in which ``sse_starlette`` is ssesup's alias package (tests/upstream_compat/alias), with
the harness the sdist does not ship (tests/upstream_compat: ``conftest.py``, ``anyio_compat.py``). Each
test passes, or is in ``DESELECTED`` with its reason: a deliberate difference (listed in
docs/migrating.md), a private name of sse-starlette's, or a file of sse-starlette's repository that the
sdist lacks. The same harness runs the tests against the installed sse-starlette 3.7.0 too, so that a
failure on ``ssesup.compat`` is never the harness's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import ssesup

VERSION = "3.7.0"
HARNESS = Path(__file__).resolve().parent / "upstream_compat"

# Not runnable from the sdist, whatever the library: they need files of sse-starlette's repository.
NOT_IN_THE_SDIST = {
    "tests/test_broadcasting_example.py": "tests examples/02_broadcasting.py of sse-starlette's repository, an "
    "example app that the sdist does not ship (no code of the library)",
    "tests/test_sse.py::TestEventSourceResponse::test_disconnect_whenClientDisconnects_thenHandlesGracefully": (
        "needs the httpx_client fixture and its app from the conftest.py of sse-starlette's repository, which the "
        "sdist does not ship, and reads the library's debug log line of every chunk"
    ),
}

_LISTEN = "replaces EventSourceResponse._listen_for_exit_signal (private: sse-starlette's shutdown watcher)"

# Every test left out on ssesup.compat, with its reason: a deliberate difference (docs/migrating.md,
# "Deliberate differences", by number), a private name of sse-starlette's, or NOT_IN_THE_SDIST. A name
# ending in .py is a whole module (not even imported), any other a node id prefix (every parameter).
DESELECTED: dict[str, str] = {
    **NOT_IN_THE_SDIST,
    # Deliberate differences.
    "tests/test_sse.py::TestEventSourceResponse::test_headers_whenCustomHeadersProvided_thenMergesCorrectly": (
        "deliberate difference 1: no Connection: keep-alive header (hop-by-hop; HTTP/2 and HTTP/3 forbid it)"
    ),
    "tests/test_sse.py::TestEventSourceResponse::test_ping_whenConcurrentWithEvents_thenRespectsLocking": (
        "deliberate difference 2: never two sends at once (it expects a ping sent while a data send is unfinished)"
    ),
    # Private names.
    "tests/test_issue132.py": "imports _get_shutdown_state, _get_uvicorn_server and _shutdown_watcher (private: "
    "sse-starlette's shutdown watcher)",
    "tests/test_issue152.py": "imports _ensure_watcher_started_on_this_loop, _get_shutdown_state and "
    "_shutdown_watcher (private: sse-starlette's shutdown watcher)",
    "tests/test_multi_loop.py": "imports _get_shutdown_state and calls EventSourceResponse._listen_for_exit_signal "
    "(private: sse-starlette's shutdown watcher)",
    "tests/test_sse.py::TestEventSourceResponse::test_send_whenInterrupted_thenClosesSuspendedGenerator": _LISTEN,
    "tests/test_sse.py::TestEventSourceResponse::test_ping_whenTimerTicks_thenSendsOneMessagePerTick": (
        "calls EventSourceResponse._ping and sets .active (private: sse-starlette's ping task)"
    ),
    "tests/test_sse.py::TestEventSourceResponse::test_ping_whenSendTimesOut_thenRaisesSendTimeoutError": (
        "calls EventSourceResponse._ping (private: sse-starlette's ping task)"
    ),
    "tests/test_issue217.py::test_send_whenInterruptedAndCleanupStuck_thenDeadlineCancelsCleanup": _LISTEN,
    "tests/test_issue217.py::test_closingFrame_whenSendStalls_thenInterruptionEndsResponse": _LISTEN,
}

# Tests that run and pass on ssesup.compat: all of the sdist's 140 but the 51 in DESELECTED.
IN_THE_SDIST = 140
PASSED_ON_COMPAT = 89
# Tests that run and pass on sse-starlette itself: all but the 9 in NOT_IN_THE_SDIST.
PASSED_ON_SSE_STARLETTE = 131


def named(node: str, name: str) -> bool:
    """Whether the test ``node`` is one that ``name`` (a module, a test or a test's prefix) stands for."""
    return node == name or node.startswith((f"{name}::", f"{name}["))


@dataclass
class Run:
    """One run of the upstream tests: the outcome of each test, by node id, and pytest's output."""

    returncode: int
    output: str
    imported: str  # what the harness found sse_starlette to be
    outcomes: dict[str, str] = field(default_factory=dict)

    def with_outcome(self, outcome: str) -> list[str]:
        return sorted(name for name, seen in self.outcomes.items() if seen == outcome)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sse-starlette's tests from its sdist on PyPI, beside our harness: the folder to run them in."""
    root = tmp_path_factory.mktemp("upstream")
    # As CI would by hand: pip download --no-binary :all: --no-deps sse-starlette==3.7.0
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "download", "--no-binary", ":all:"]
    download = subprocess.run(
        [*pip, "--no-deps", "--dest", str(root / "sdist"), f"sse-starlette=={VERSION}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert download.returncode == 0, download.stdout + download.stderr
    [sdist] = (root / "sdist").glob("*.tar.gz")
    tests = root / "run" / "tests"
    tests.mkdir(parents=True)
    prefix = f"sse_starlette-{VERSION}/tests/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.isfile() and m.name.startswith(prefix)]
        for member in members:
            name = member.name.removeprefix(prefix)
            assert "/" not in name and name.endswith(".py"), name
            (tests / name).write_bytes(archive.extractfile(member).read())
    assert not (tests / "conftest.py").exists(), "the sdist ships a conftest.py now: compare it with ours"
    for name in ("conftest.py", "anyio_compat.py"):
        shutil.copy(HARNESS / name, tests / name)
    (tests / "__init__.py").write_text("")
    (root / "run" / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    return root / "run"


def run_upstream(run_dir: Path, under_test: str, deselected: dict[str, str]) -> Run:
    """Run the upstream tests in ``run_dir`` against ``under_test`` (``ssesup.compat`` or
    ``sse_starlette``), without ``deselected``: a whole module is ignored (it may not even import),
    a test is deselected."""
    alias = HARNESS / "alias"
    env = dict(os.environ)
    # The ssesup this process imports (its folder first, so that a relative PYTHONPATH or an install
    # elsewhere cannot change it), after the alias when the alias is under test.
    paths = [str(alias)] if under_test == "ssesup.compat" else []
    paths.append(str(Path(ssesup.__file__).resolve().parent.parent))
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["SSE_SSESUP"] = str(Path(ssesup.__file__).resolve())
    env["SSE_UNDER_TEST"] = under_test
    env["SSE_ALIAS"] = str(alias)
    seen = run_dir / f"seen-{under_test}"
    seen.unlink(missing_ok=True)
    env["SSE_SEEN"] = str(seen)
    report = run_dir / f"report-{under_test}.xml"
    argv = [sys.executable, "-m", "pytest", "-c", str(run_dir / "pytest.ini"), "--rootdir", str(run_dir)]
    argv += ["-q", "-rfE", f"--junitxml={report}", "-o", "junit_family=xunit2"]
    for name in deselected:
        argv += ["--ignore", name] if name.endswith(".py") else ["--deselect", name]
    argv.append("tests")
    done = subprocess.run(argv, cwd=run_dir, env=env, capture_output=True, text=True, timeout=900)
    run = Run(done.returncode, done.stdout + done.stderr, seen.read_text() if seen.exists() else "")
    if report.exists():
        for case in ET.parse(report).iter("testcase"):
            module = case.get("classname", "").replace(".", "/")
            # classname is module(.Class); the node id is path.py(::Class)::name
            parts = module.split("/")
            path = "/".join(parts[:2]) + ".py"
            node = "::".join([path, *parts[2:], case.get("name", "")])
            kinds = {child.tag for child in case}
            outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
            run.outcomes[node] = outcome
    return run


def test_sse_starlettes_own_tests_pass_on_ssesup_compat(upstream: Path) -> None:
    run = run_upstream(upstream, "ssesup.compat", DESELECTED)
    assert run.imported == f"ssesup.compat {HARNESS / 'alias' / 'sse_starlette' / '__init__.py'}", run.output
    assert run.with_outcome("failure") == [] and run.with_outcome("error") == [], run.output
    assert run.with_outcome("skipped") == [], run.output
    assert run.returncode == 0, run.output
    assert [node for node in run.outcomes if any(named(node, name) for name in DESELECTED)] == []
    assert len(run.with_outcome("passed")) == PASSED_ON_COMPAT, run.output


def test_the_harness_passes_sse_starlette_itself(upstream: Path) -> None:
    """The same tests and harness against the installed sse-starlette 3.7.0: every test the sdist can run
    passes, those left out on ssesup.compat included, so each name in DESELECTED is a real, passing test."""
    run = run_upstream(upstream, "sse_starlette", NOT_IN_THE_SDIST)
    assert run.imported.startswith("sse_starlette ") and "site-packages" in run.imported, run.output
    assert run.returncode == 0, run.output
    assert run.with_outcome("passed") == sorted(run.outcomes), run.output
    assert len(run.outcomes) == PASSED_ON_SSE_STARLETTE, run.output
    for name in DESELECTED.keys() - NOT_IN_THE_SDIST.keys():
        assert any(named(node, name) for node in run.outcomes), name


def test_docs_migrating_names_every_difference_left_out():
    """The deliberate differences left out are those docs/migrating.md lists, by number and test name."""
    doc = (Path(__file__).parent.parent / "docs" / "migrating.md").read_text()
    assert f"{PASSED_ON_COMPAT} of its {IN_THE_SDIST} tests pass" in " ".join(doc.split())
    for name, reason in DESELECTED.items():
        if reason.startswith("deliberate difference "):
            number = reason.removeprefix("deliberate difference ").split(":")[0]
            assert f"\n{number}. **" in doc, reason
            assert f"`{name.rsplit('::', 1)[1]}`" in doc, name
