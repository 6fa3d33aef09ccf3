"""The exceptions a stream's code and its users meet.

Owns: :class:`StreamEnding` (a source ends its stream through the table, not as an error),
:class:`SendTimeoutError` and :class:`EventTooLarge`. Does not own: when they are raised (the actor, a
hub subscription) or how an ending proceeds (``ssesup.states``). Imported by the actor and by the hub
alike, so that the hub need not import the actor.
"""

from __future__ import annotations

from ssesup.states import Trigger


class SendTimeoutError(TimeoutError):
    """A send missed the stream's send deadline (raised to the server only with ``raise_errors``)."""


class StreamEnding(Exception):
    """Raised by a stream's content to end the stream with ``trigger`` instead of ``error``: the row of
    the table for that trigger decides what follows (a hub subscription raises it with
    ``Trigger.SLOW_CONSUMER``: what is queued is flushed and the body ended)."""

    def __init__(self, trigger: Trigger, message: str = "") -> None:
        super().__init__(message or trigger.value)
        self.trigger = trigger


class EventTooLarge(ValueError):
    """An encoded event exceeds the stream's ``max_event_size``."""
