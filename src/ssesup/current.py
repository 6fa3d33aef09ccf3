"""The stream whose code is running: one context variable.

Owns: :func:`current_stream` (for generators that watch for a drain) and :func:`running_stream` (for
ssesup's own parts that act on the stream they run in: a hub subscription that overflows, the test
client reading a response's start). Does not own the stream; the actor sets the variable for the tasks
it starts.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssesup.stream import SupervisedStream

CURRENT: contextvars.ContextVar[SupervisedStream] = contextvars.ContextVar("ssesup.current_stream")


def current_stream() -> SupervisedStream:
    """The stream whose generator is running: generators use it to see a drain coming.

    Raises ``LookupError`` outside a SupervisedStream's generator.
    """
    return CURRENT.get()


def running_stream() -> SupervisedStream | None:
    """The stream whose code is running, or ``None`` outside one."""
    return CURRENT.get(None)
