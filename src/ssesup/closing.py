"""Closing a stream's generator within its grace, whatever the generator does in its ``finally``.

Owns: stopping the producer (one cancellation on asyncio, so a generator waiting inside an ``await``
can still await its cleanup), closing the generator (``aclose``) so that its ``finally`` blocks run,
cutting a cleanup that outlasts its grace (logged ``stream.cleanup_cut``) and leaving behind one that
swallows even that. Does not own when a stream ends (the table) or the grace's length (its settings).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import structlog

from ssesup import logs
from ssesup._loop import abandon_task

log = structlog.get_logger("ssesup")

# How long a generator whose cleanup was cut (cancelled past its close grace) may take to end before
# it is left behind.
CUT_WAIT = 0.1


async def close_generator(
    producer: asyncio.Task[None] | None,
    cancel_producer: bool,
    iterator: AsyncIterator[Any],
    grace: float,
    clock: Callable[[], float],
    **fields: str,
) -> None:
    """Stop ``producer`` (asyncio: the task that pulls the generator; ``cancel_producer`` unless it was
    cancelled already, once only) and close ``iterator``, within ``grace`` seconds; past it, the cleanup
    is cut and logged with ``fields``. One that keeps running past the cut is abandoned (it no longer
    holds up its stream or the loop's shutdown). A failure in the cleanup is logged, never raised."""
    deadline = clock() + grace
    if producer is not None and not producer.done():
        if cancel_producer:
            producer.cancel()
        with anyio.move_on_after(grace, shield=True):
            await asyncio.wait((producer,))
        if not producer.done():
            log.error("stream.cleanup_cut", close_grace_s=grace, **fields)
            producer.cancel()  # cut the cleanup; one that swallows this too is left behind
            with anyio.move_on_after(CUT_WAIT, shield=True):
                await asyncio.wait((producer,))
            if not producer.done():
                abandon_task(producer)
            return
    with anyio.move_on_after(max(0.0, deadline - clock()), shield=True) as scope:
        try:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        except Exception:
            logs.exception("stream.generator_close_failed", **fields)
    if scope.cancel_called:  # cut, also when the generator swallowed the cancellation
        log.error("stream.cleanup_cut", close_grace_s=grace, **fields)
