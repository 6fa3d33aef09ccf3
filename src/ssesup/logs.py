"""Structured log events for streams. Owns the ``ssesup`` structlog logger and the transition log.

The supervisor calls :func:`log_transition` once per transition; nothing else in ssesup logs stream
state. No line is written per event sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from ssesup.states import State, Transition

if TYPE_CHECKING:
    from ssesup.stream import SupervisedStream

log = structlog.get_logger("ssesup")


def log_transition(stream: SupervisedStream, transition: Transition) -> None:
    fields = {
        "stream_id": stream.stream_id,
        "route": stream.route,
        "client": stream.client,
        "from_state": transition.from_state.value,
        "to_state": transition.to_state.value,
        "trigger": transition.trigger.value,
    }
    if transition.to_state is State.CLOSED:
        reason = transition.close_reason.value if transition.close_reason else None
        log.info("stream.closed", close_reason=reason, duration_s=round(stream.duration, 6), **fields)
    else:
        log.debug("stream.transition", **fields)
