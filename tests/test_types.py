"""The static checks, run as tests so that CI's one command (the README's) runs them: mypy over the
package (``[tool.mypy]`` in pyproject.toml: strict), ``ruff check`` and ``ruff format --check`` over
src, tests and bench. Each runs the tool installed with the test extra, from the repository's root.

Does not own: the configuration itself (pyproject.toml).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
LINTED = ["src", "tests", "bench"]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_mypy_finds_no_error_in_the_package(tmp_path):
    # A cache of its own: a run never reads results a different tree left behind.
    result = run("mypy", "--cache-dir", str(tmp_path / "mypy-cache"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
    checked = int(result.stdout.rsplit(" in ", 1)[1].split()[0])
    assert checked == len(list((ROOT / "src" / "ssesup").rglob("*.py")))


def test_ruff_finds_nothing_to_fix():
    result = run("ruff", "check", *LINTED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_would_change_nothing():
    result = run("ruff", "format", "--check", *LINTED)
    assert result.returncode == 0, result.stdout + result.stderr
