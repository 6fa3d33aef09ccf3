"""Every ```` ```python ```` block of README.md and docs/*.md runs as written, and the apps they make answer.

Each block runs in a fresh Python process of its own (this file is also the runner: ``python
tests/test_doc_snippets.py PROGRAM.json RESULT.json``), with ``__name__`` set to ``"__snippet__"``, in an
empty working directory, with ``SSESUP_DRAIN_TOKEN`` set (the docs read it from the environment).
Tracebacks name the Markdown file and line. A block that leaves an ASGI ``app`` behind is served with
uvicorn on 127.0.0.1, and every route it declares (in ``app.routes``, and in a ``routes`` list if the
block keeps one) gets a ``GET``: none may answer a redirect, 404 or 5xx.

Marks (rare; see tests/doc_blocks.py): ``<!-- snippet: continues -->`` runs the block after the previous
Python block of the same file, in the same namespace; ``<!-- snippet: not-run (why) -->`` only compiles
it. Only ```` ```python ```` blocks run: ```` ```sh ````, ```` ```yaml ```` and the like are not Python.

Does not own: the docs themselves, or what their nginx block does (tests/test_nginx.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from doc_blocks import ROOT, Block, fenced_blocks

DRAIN_TOKEN = "snippet-test-token-0123456789abcdef"
NOT_RUN = re.compile(r"^not-run \((?P<reason>.+)\)$")
RUN_TIMEOUT = 180


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def programs() -> dict[str, list[Block]]:
    """Each Python block, keyed by where it is, with the blocks it continues (first to last)."""
    found: dict[str, list[Block]] = {}
    for path in markdown_files():
        previous: list[Block] = []
        for block in fenced_blocks(path, "python"):
            chain = [*previous, block] if block.mark == "continues" else [block]
            found[block.where] = chain
            previous = chain
    return found


PROGRAMS = programs()


def mark_problem(block: Block) -> str | None:
    if block.mark is None or NOT_RUN.match(block.mark):
        return None
    if block.mark == "continues":
        earlier = [b for b in fenced_blocks(block.path, "python") if b.line < block.line]
        return None if earlier else "continues, but no Python block comes before it"
    return f"unknown mark {block.mark!r} (continues, or not-run (why))"


def test_every_mark_is_known_and_says_why() -> None:
    problems = [
        f"{block.where}: {problem}"
        for path in markdown_files()
        for block in fenced_blocks(path)
        if (problem := mark_problem(block))
    ]
    assert not problems


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.Popen, Path, Path]]:
    """Every program started at once (each in its own process), so the module takes the time of a few."""
    started = {}
    for where, chain in PROGRAMS.items():
        if chain[-1].mark and NOT_RUN.match(chain[-1].mark):
            continue
        work = tmp_path_factory.mktemp("snippet")
        (work / "program.json").write_text(
            json.dumps([{"path": str(b.path.relative_to(ROOT)), "line": b.line, "code": b.code} for b in chain])
        )
        started[where] = (_start_runner(work / "program.json", work / "result.json", work), work / "result.json", work)
    return started


def _start_runner(program: Path, result: Path, work: Path) -> subprocess.Popen:
    env = {**os.environ, "SSESUP_DRAIN_TOKEN": DRAIN_TOKEN}
    with open(work / "output.txt", "wb") as output:
        return subprocess.Popen(
            [sys.executable, __file__, str(program), str(result)],
            cwd=work,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def finished(process: subprocess.Popen, work: Path) -> tuple[int, str]:
    try:
        code = process.wait(RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = -9
    return code, (work / "output.txt").read_text(errors="replace")


def answers_as_declared(status: int) -> bool:
    """A success, or a refusal of the method or the caller (405, 401, ...): not a redirect, 404 or 5xx."""
    return 200 <= status < 300 or (400 <= status < 500 and status != 404)


def wrong_answers(result: Path) -> list[tuple[str, int]]:
    probed = json.loads(result.read_text())["probed"]
    return [(path, status) for path, status in probed if not answers_as_declared(status)]


@pytest.mark.parametrize("where", list(PROGRAMS))
def test_documented_snippet_runs_as_written(where: str, runs: dict) -> None:
    chain = PROGRAMS[where]
    if where not in runs:  # marked not-run: it must still be Python
        compile(chain[-1].code, where, "exec")
        return
    process, result, work = runs[where]
    code, output = finished(process, work)
    assert code == 0, f"{where} does not run as written:\n{output}"
    assert not wrong_answers(result), f"{where}: routes that do not answer as declared: {wrong_answers(result)}"


def test_the_runner_catches_routes_added_after_the_app_copied_them(tmp_path: Path) -> None:
    """The probe snippet's old bug: routes appended after ``Starlette(routes=...)`` copied the list 404."""
    broken = (
        "from starlette.applications import Starlette\n"
        "from starlette.routing import Route\n"
        "from ssesup import Supervisor\n"
        "supervisor = Supervisor()\n"
        "routes = [Route('/live', supervisor.liveness())]\n"
        "app = Starlette(routes=routes)\n"
        "routes += [Route('/ready', supervisor.readiness())]\n"
    )
    (tmp_path / "program.json").write_text(json.dumps([{"path": "broken.md", "line": 1, "code": broken}]))
    code, output = finished(_start_runner(tmp_path / "program.json", tmp_path / "result.json", tmp_path), tmp_path)
    assert code == 0, output
    assert wrong_answers(tmp_path / "result.json") == [("/ready", 404)]


# -- the runner (in the snippet's own process) --------------------------------------------------------


def declared_paths(app: Any, routes: Any) -> list[str]:
    """The paths a GET can reach, from ``app.routes`` and a ``routes`` list the snippet kept."""
    from starlette.routing import BaseRoute, Mount, Route

    paths: list[str] = []

    def walk(items: Any, prefix: str) -> None:
        for item in items:
            if isinstance(item, Mount):
                if item.routes:
                    walk(item.routes, prefix + item.path)
                else:
                    paths.append(prefix + item.path + "/")
            elif isinstance(item, Route):
                paths.append(prefix + re.sub(r"\{[^}]+\}", "1", item.path))

    walk(getattr(app, "routes", []), "")
    if isinstance(routes, list) and all(isinstance(r, BaseRoute) for r in routes):
        walk(routes, "")
    return list(dict.fromkeys(paths))


def run_program(program: Path, result: Path) -> None:
    module = types.ModuleType("__snippet__")  # a real module, so dataclasses and pickling find it
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    for part in json.loads(program.read_text()):
        # Blank lines in front, so that tracebacks give the line in the Markdown file.
        exec(compile("\n" * part["line"] + part["code"], str(ROOT / part["path"]), "exec"), namespace)
    app = namespace.get("app")
    probed: list[tuple[str, int]] = []
    if callable(app):
        import httpx

        from servers import UvicornThread

        with UvicornThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
            for path in declared_paths(app, namespace.get("routes")):
                with client.stream("GET", path) as response:
                    probed.append((path, response.status_code))
    result.write_text(json.dumps({"probed": probed}))


if __name__ == "__main__":
    run_program(Path(sys.argv[1]), Path(sys.argv[2]))
