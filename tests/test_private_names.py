"""ssesup calls no other library's private names, but for the few it must, each said here and in its
module's header.

Read from the source (the AST of every module of src/ssesup): every ``x._name`` it reads or calls, and
every ``getattr``/``hasattr`` of a ``"_name"``, must be a name ssesup defines itself (a function, class,
slot, or an attribute it assigns). A private name of Starlette, anyio, uvicorn, redis, structlog or
prometheus-client may change in any release, with no notice: where a public way exists ssesup takes it.
A name ssesup uses that another library happens to define too is not caught; dunders are public.

What ssesup reaches on purpose, with no public way to do it, is listed in ``DELIBERATE`` below with the
module that explains it. ``connection.py`` reaching the server's transport through the closures behind
an ASGI ``send`` reads them by name from a table (``_LEADS``) and is described in ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "src" / "ssesup"

# (module, private name) -> why: each guarded, so a release that drops it degrades, never breaks.
DELIBERATE = {
    ("_loop.py", "_unregister_task"): (
        "asyncio's own bookkeeping of the loop's tasks: a generator that swallows every cancellation would "
        "make asyncio.run wait forever; read with getattr, skipped where absent"
    ),
    ("edge/daphne.py", "_tempDataLen"): (
        "what Twisted's transport buffers but has not joined to dataBuffer yet: no public count of the bytes a "
        "transport holds; read under an AttributeError guard (a version without it counts 0, the bound stays "
        "on dataBuffer)"
    ),
    ("edge/hypercorn.py", "_flush"): (
        "hypercorn's own send path for a frame queued outside a send (the RST_STREAM of a stream reset alone): "
        "no public way to flush; looked up with getattr, and where absent the frame leaves with the next send"
    ),
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_names() -> set[str]:
    """Every name ssesup defines: functions, classes, assigned names and attributes, slots."""
    names: set[str] = set()
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
                names.add(node.attr)
            elif isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "__slots__" for target in node.targets
            ):
                names.update(
                    element.value
                    for element in ast.walk(node.value)
                    if isinstance(element, ast.Constant) and isinstance(element.value, str)
                )
    return names


def private_uses(path: Path) -> list[tuple[int, str, str]]:
    """``(line, name, code)`` for each private attribute ``path`` reads, and each private name it looks up
    with ``getattr``/``hasattr``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and is_private(node.attr):
            found.append((node.lineno, node.attr, ast.unparse(node)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and is_private(node.args[1].value)
        ):
            found.append((node.lineno, node.args[1].value, ast.unparse(node)))
    return found


def test_the_walk_sees_private_names():
    """ssesup's own private names are seen (a walk that saw none would pass the test below)."""
    uses = {name for path in modules() for _, name, _ in private_uses(path)}
    assert {"_machine", "_delivery", "_fire"} <= uses


def test_every_private_name_ssesup_uses_is_its_own_or_said_why():
    own = defined_names()
    foreign = [
        f"{path.relative_to(PACKAGE)}:{line}: {code}"
        for path in modules()
        for line, name, code in private_uses(path)
        if name not in own and (str(path.relative_to(PACKAGE)), name) not in DELIBERATE
    ]
    assert not foreign, "private names of other libraries: " + "; ".join(foreign)


def test_each_deliberate_use_is_still_there_and_explained_in_its_module():
    for (module, name), _ in DELIBERATE.items():
        source = (PACKAGE / module).read_text()
        assert name in source, f"{module} no longer uses {name}: drop it from DELIBERATE"
        header = ast.get_docstring(ast.parse(source)) or ""
        assert name in header, f"{module}'s header does not say why it uses {name}"
