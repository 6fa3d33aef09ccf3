"""``collapse_excgroups`` for sse-starlette's published tests (``from tests.anyio_compat import ...``):
an exception group of one exception, however deeply nested, is raised as that exception."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def collapse_excgroups() -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        raise exc
