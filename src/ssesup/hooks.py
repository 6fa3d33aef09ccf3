"""The hooks of one stream: what its creator asked to be told or run beside it.

Owns: :class:`StreamHooks`, the record of one stream's ``on_close``, ``companion``, ``drain_event``,
``drain_grace`` and ``raise_errors`` (checked when given), the first error to raise to the server, and
running the companion and ``on_close`` (their failures logged and handed to the stream). Does not own
when they run (the actor: at its start, its drain and its end). Most streams have no hooks: they hold
``None`` instead of this record.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from ssesup import checks, logs

log = structlog.get_logger("ssesup")

if TYPE_CHECKING:
    from ssesup.stream import SupervisedStream


class StreamHooks:
    """The hooks of one stream (one slot on the stream, ``None`` for most streams)."""

    __slots__ = ("companion", "drain_event", "drain_grace", "error", "on_close", "raise_errors")

    def __init__(
        self,
        on_close: Callable[[SupervisedStream], Awaitable[None] | None] | None,
        companion: Callable[[], Awaitable[None]] | None,
        drain_event: Any,
        drain_grace: float | None,
        raise_errors: bool,
    ) -> None:
        self.on_close = checks.optional_callable("on_close", on_close, "on_close(stream)")
        self.companion = checks.optional_callable("companion", companion, "companion()")
        if drain_event is not None and not callable(getattr(drain_event, "set", None)):
            raise TypeError(f"drain_event must have a set() method (an anyio.Event), not {type(drain_event).__name__}")
        self.drain_event = drain_event
        self.drain_grace = checks.optional_seconds("drain_grace", drain_grace)
        self.raise_errors = bool(raise_errors)
        self.error: BaseException | None = None

    @staticmethod
    def of(
        on_close: Callable[[SupervisedStream], Awaitable[None] | None] | None,
        companion: Callable[[], Awaitable[None]] | None,
        drain_event: Any,
        drain_grace: float | None,
        raise_errors: bool,
    ) -> StreamHooks | None:
        """The record, or ``None`` when no hook is given."""
        if on_close is None and companion is None and drain_event is None and drain_grace is None and not raise_errors:
            return None
        return StreamHooks(on_close, companion, drain_event, drain_grace, raise_errors)

    def keep_error(self, error: BaseException) -> None:
        """With ``raise_errors``, the first error is raised to the server once the stream has ended."""
        if self.raise_errors and self.error is None:
            self.error = error


async def run_companion(
    companion: Callable[[], Awaitable[None]], failed: Callable[[Exception], None], **fields: str
) -> None:
    """The companion task: runs beside the generator until the stream ends (the stream's task group
    cancels it); its failure is logged and handed to ``failed`` (which ends the stream with ``error``)."""
    try:
        await companion()
    except Exception as exc:
        logs.exception("stream.companion_failed", **fields)
        failed(exc)


async def call_on_close(
    on_close: Callable[[SupervisedStream], Awaitable[None] | None],
    stream: SupervisedStream,
    grace: float,
    failed: Callable[[Exception], None],
    **fields: str,
) -> None:
    """Call ``on_close(stream)`` once, shielded, within ``grace`` seconds; a failure is logged and handed
    to ``failed``."""
    with anyio.move_on_after(grace, shield=True):
        try:
            result = on_close(stream)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            logs.exception("stream.on_close_failed", **fields)
            failed(exc)
