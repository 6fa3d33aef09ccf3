"""Structured log events for streams. Owns the ``ssesup`` structlog logger, the transition log and the
optional logging set-up.

The supervisor calls :func:`log_transition` once per transition: one structured event with the stream
id, route template, client address, from and to state, trigger, and, when the stream closed, its close
reason and duration. Nothing in ssesup logs a line per event sent.

Levels: a stream's opening moves (``stream.transition``, OPEN to STREAMING) are ``debug``, the start of
its drain is ``info``, its close (``stream.closed``) is ``info``, or ``warning`` when a send timed out or
the generator failed. While structlog is unconfigured (its default prints every level) the ``debug``
transition lines are left out (a line per opening stream otherwise).

ssesup logs through structlog and configures nothing on import: an app that has configured structlog
gets ssesup's events its way. :func:`configure_logging` is the one-call set-up that routes structlog
through the standard library (levels, handlers and filters of ``logging`` apply, the logger is
``ssesup``) and renders every record as console text, or with ``json=True`` as one JSON object a line.
An app with its own ``logging.config.dictConfig`` calls :func:`configure_structlog` and uses
:func:`log_formatter` as its handler's formatter.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import structlog

from ssesup.states import CloseReason, State, Transition

if TYPE_CHECKING:
    from ssesup.stream import SupervisedStream

log = structlog.get_logger("ssesup")

_WARN_ON = frozenset({CloseReason.SEND_TIMEOUT, CloseReason.ERROR})


def log_transition(stream: SupervisedStream, transition: Transition) -> None:
    to_state = transition.to_state
    drain_starts = to_state is State.DRAINING and transition.from_state is not State.DRAINING
    debug = to_state is not State.CLOSED and not drain_starts  # the opening moves
    if debug and not structlog.is_configured():
        # structlog unconfigured prints every level to stdout: a debug line per opening stream would be
        # noise nobody asked for (and, while thousands open, a sixth of a server's time). Once an app
        # (or configure_logging) configures structlog, its levels decide.
        return
    fields: dict[str, Any] = {
        "stream_id": stream.stream_id,
        "route": stream.route,
        "client": stream.client,
        "from_state": transition.from_state.value,
        "to_state": transition.to_state.value,
        "trigger": transition.trigger.value,
    }
    if to_state is State.CLOSED:
        reason = transition.close_reason
        level = logging.WARNING if reason in _WARN_ON else logging.INFO
        log.log(
            level,
            "stream.closed",
            close_reason=reason.value if reason else None,
            duration_s=round(stream.duration, 6),
            **fields,
        )
    elif debug:
        log.debug("stream.transition", **fields)
    else:
        log.info("stream.transition", **fields)


# -- optional set-up ---------------------------------------------------------------------------------

# What every record gets, from structlog or from the standard library alike.
_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_structlog() -> None:
    """Route structlog's events (ssesup's among them) into the standard library's ``logging``.

    Afterwards each event is a ``logging.LogRecord`` of the logger named like the structlog logger
    (``ssesup`` for ssesup's own), so the app's logging configuration decides levels and output; a
    handler whose formatter is :func:`log_formatter` renders the event's fields.
    """
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def log_formatter(json: bool = False) -> logging.Formatter:
    """A ``logging.Formatter`` that renders structlog events and plain records alike.

    ``json=True``: one JSON object a line (exceptions as structured tracebacks). Otherwise readable
    console text. Usable from ``dictConfig``: ``{"()": "ssesup.logs.log_formatter", "json": True}``.
    """
    if json:
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        renderer: list[Any] = [tracebacks, structlog.processors.JSONRenderer()]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )


class _Handler(logging.StreamHandler):
    """The root handler :func:`configure_logging` installs (and replaces when called again)."""


def configure_logging(*, json: bool = False, level: int | str = logging.INFO) -> None:
    """Log ssesup's events, and every other record, through ``logging`` to stderr. One call::

        ssesup.logs.configure_logging(json=True)

    Routes structlog into ``logging`` (:func:`configure_structlog`), sets the root logger's ``level`` and
    gives it one handler rendering console text, or with ``json=True`` one JSON object a line. Calling
    it again replaces that handler. Per-logger levels still apply: ``logging.getLogger("ssesup")``.
    """
    configure_structlog()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler()
    handler.setFormatter(log_formatter(json=json))
    root.addHandler(handler)
    root.setLevel(level)
