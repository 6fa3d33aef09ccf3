"""Every name the docs use can be imported from where the docs say, and ``ssesup`` exports its API.

The docs (README.md and docs/*.md) show names in Python blocks and in inline code: ``from ssesup import
Event``, ``ssesup.metrics.metrics_app()``, or a bare ``StreamLimits(max_streams=...)`` in a table. A
reader who meets a bare name imports it from ``ssesup``, so each name of ssesup's API that a doc uses
must be importable from ``ssesup``, or from a module of ssesup the same doc names (``ssesup.compat`` in
the migration guide, ``ssesup.testing`` in the testing guide). ssesup's API is every class and function
defined in a module of the package, but for its private modules (``_loop``) and its programs (``cli``,
``demo``). A name counts where it is used as code: a class anywhere, a function where it is called (a
bare lowercase word in backticks is a log field or a label). docs/benchmarks.md is left out: it is a
measurement report that names internals where time goes (``Waiter``, ``encode_data_line``), not a
guide to the API.

Does not own: running the Python blocks (tests/test_doc_snippets.py).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import types
from pathlib import Path

import pytest

import ssesup
from doc_blocks import ROOT, fenced_blocks

GUIDES = [ROOT / "README.md", *sorted(path for path in (ROOT / "docs").glob("*.md") if path.name != "benchmarks.md")]
NOT_API_MODULES = {"ssesup.cli", "ssesup.demo"}
# Names a guide uses in code that are not ssesup's there: (page, name) -> what they are.
NOT_SSESUP_THERE = {
    ("fastapi.md", "EventSourceResponse"): "FastAPI's own (fastapi.sse), mapped to ssesup in a table",
    ("fastapi.md", "ServerSentEvent"): "FastAPI's own (fastapi.sse), mapped to ssesup in a table",
    ("README.md", "Connection"): "the HTTP header (sse-starlette sends Connection: keep-alive)",
    ("migrating.md", "Connection"): "the HTTP header (sse-starlette sends Connection: keep-alive)",
}

_FENCED = re.compile(r"^[ \t]*(`{3,}|~{3,}).*?^[ \t]*\1[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
# A name used as code: a class (capitalised) anywhere, a function where it is called. A bare lowercase
# word in backticks is a field, a label or a value far more often than a function of the same name.
_USED = re.compile(r"(?<![\w.])(?:[A-Z]\w*|[a-z_]\w*(?=\())")
_DOTTED = re.compile(r"(?<![\w./-])ssesup(?:\.\w+)+")  # not a file: dashboards/ssesup.json
_FROM_IMPORT = re.compile(r"\bfrom\s+(ssesup(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n]+)")


def code_of(path: Path) -> list[str]:
    """The Python blocks and the inline code spans of a Markdown file."""
    text = path.read_text()
    blocks = [block.code for block in fenced_blocks(path, "python")]
    spans = [match[2] for match in _INLINE.finditer(_FENCED.sub("", text))]
    return blocks + spans


def imported_names(code: str) -> list[tuple[str, str]]:
    """``(module, name)`` for each name of each ``from ssesup... import`` in ``code``."""
    found = []
    for module, names in _FROM_IMPORT.findall(code):
        for item in names.strip("()").split(","):
            name = item.split("#")[0].split(" as ")[0].strip()
            if name.isidentifier():
                found.append((module, name))
    return found


def resolve(dotted: str) -> object:
    """The object ``dotted`` (``ssesup.metrics.metrics_app``) names: the longest importable module
    prefix, then attributes. ``LookupError`` when it names nothing."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            if not hasattr(found, attribute):
                raise LookupError(f"{dotted}: {'.'.join(parts[:split])} has no {attribute!r} on the way")
            found = getattr(found, attribute)
        return found
    raise LookupError(f"{dotted}: no such module")


def api() -> dict[str, list[str]]:
    """Each public class and function defined in ssesup, with the modules that define it."""
    names: dict[str, list[str]] = {}
    for module_info in pkgutil.walk_packages(ssesup.__path__, "ssesup."):
        name = module_info.name
        if name in NOT_API_MODULES or any(part.startswith("_") for part in name.split(".")):
            continue
        module = importlib.import_module(name)
        for attribute, value in vars(module).items():
            if attribute.startswith("_") or not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            if getattr(value, "__module__", None) == name:
                names.setdefault(attribute, []).append(name)
    return names


API = api()


def test_the_api_is_found():
    """The walk finds the API (a broken walk would make every other test here pass)."""
    assert {"Event", "SupervisedStream", "Supervisor", "StreamLimits", "Hub", "EventSourceResponse"} <= set(API)


@pytest.mark.parametrize("path", GUIDES, ids=lambda path: path.name)
def test_every_import_and_dotted_name_in_the_docs_resolves(path):
    code = "\n".join(code_of(path))
    problems = []
    for module, name in imported_names(code):
        try:
            resolve(f"{module}.{name}")
        except LookupError as error:
            problems.append(f"from {module} import {name}: {error}")
    for dotted in sorted(set(_DOTTED.findall(code))):
        try:
            resolve(dotted)
        except LookupError as error:
            problems.append(str(error))
    assert not problems, f"{path.name}: " + "; ".join(problems)


@pytest.mark.parametrize("path", GUIDES, ids=lambda path: path.name)
def test_every_api_name_a_doc_uses_is_importable_from_ssesup_or_a_module_the_doc_names(path):
    code = "\n".join(code_of(path))
    namespaces = {"ssesup": ssesup}
    for dotted in set(_DOTTED.findall(code)) | {module for module, _ in imported_names(code)}:
        module = resolve_module(dotted)
        if module is not None:
            namespaces[module.__name__] = module
    used = set(_USED.findall(code)) & set(API)
    missing = sorted(
        name
        for name in used
        if (path.name, name) not in NOT_SSESUP_THERE
        and not any(hasattr(namespace, name) for namespace in namespaces.values())
    )
    assert not missing, (
        f"{path.name} uses {missing}, which neither ssesup nor a module the page names "
        f"({sorted(namespaces)}) exports; defined in "
        f"{ {name: API[name] for name in missing} }"
    )


def resolve_module(dotted: str) -> types.ModuleType | None:
    """The longest prefix of ``dotted`` that is a module of ssesup."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            return importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
    return None


def test_all_is_exactly_what_ssesup_exports_and_each_name_imports():
    bound = {
        name
        for name, value in vars(ssesup).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert len(ssesup.__all__) == len(set(ssesup.__all__))
    assert sorted(ssesup.__all__) == sorted(bound)
    namespace: dict[str, object] = {}
    exec(f"from ssesup import {', '.join(ssesup.__all__)}", namespace)
    assert set(ssesup.__all__) <= set(namespace)


def test_the_readmes_configuration_names_import_from_ssesup():
    """The README's configuration table shows ``StreamLimits(...)`` bare, beside ``Supervisor(...)``."""
    from ssesup import StreamLimits, Supervisor

    assert Supervisor(limits=StreamLimits(max_streams=10), metrics=False).limits.max_streams == 10
