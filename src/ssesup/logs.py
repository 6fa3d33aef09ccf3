"""Structured log events for streams. Owns the ``ssesup`` structlog logger, the transition log and the
optional logging set-up.

The supervisor calls :func:`log_transition` once per transition: one structured event with the stream
id, route template, client address, the user it serves (when it has one), from and to state, trigger,
and, when the stream closed, its close reason and duration. Nothing in ssesup logs a line per event sent.

Levels: a stream's opening moves (``stream.transition``, OPEN to STREAMING) are ``debug``, the start of
its drain is ``info``, its close (``stream.closed``) is ``info``, or ``warning`` when a send timed out or
the generator failed. While structlog is unconfigured (its default prints every level) the ``debug``
lines (a line per opening stream otherwise, and how signals were chained) are left out.

ssesup logs through structlog and configures nothing on import: an app that has configured structlog
gets ssesup's events its way. :func:`configure_logging` is the one-call set-up that routes structlog
through the standard library (levels, handlers and filters of ``logging`` apply, the logger is
``ssesup``) and renders every record as console text, or with ``json=True`` as one JSON object a line.
An app with its own ``logging.config.dictConfig`` calls :func:`configure_structlog` and uses
:func:`log_formatter` as its handler's formatter.

Values from the network (the client address, which a proxy header may have set, header values, paths)
are escaped with :func:`escape` before they reach structlog: a control character (C0, DEL, C1), a lone
surrogate, a line or paragraph separator or a bidirectional override is written as ``\\xNN`` or
``\\uNNNN``, so no value can move a terminal's cursor, colour it or forge a line. :func:`log_formatter`
escapes the top-level text values of every record it renders as well (a plain record's message among
them, such as a server's), so nothing reaches the output raw. Events that can be repeated by anyone
who can connect (refused streams, failed authentications) are logged through :class:`SummaryLog`: one
line per kind per interval with the count, never one per occurrence.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import parse_qsl

import structlog

from ssesup.states import CloseReason, State, Transition

if TYPE_CHECKING:
    from ssesup.stream import SupervisedStream

log = structlog.get_logger("ssesup")

_WARN_ON = frozenset({CloseReason.SEND_TIMEOUT, CloseReason.ERROR})

# What escape() rewrites: C0 controls, DEL, C1 controls, lone surrogates, the line and paragraph
# separators, and the bidirectional embeddings, overrides and isolates (text that reads reversed).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(value: str) -> str:
    """``value`` safe to log: each unsafe character (see the module's docstring) as ``\\xNN`` or
    ``\\uNNNN``; other text, and a value that is already escaped, unchanged.

    Cheap when there is nothing to do (one ``str.isprintable()``): it runs on every transition logged.
    """
    if value.isprintable():
        return value
    return _UNSAFE.sub(_escaped, value)


def exception(event: str, error: BaseException | None = None, /, *, logger: Any = None, **fields: Any) -> None:
    """An ``error`` line with the traceback of ``error`` (by default the exception being handled),
    rendered without local variables whatever renders it.

    structlog's console renderer, unconfigured or configured with its defaults, prints each frame's local
    variables when ``rich`` is installed (typer and fastapi-cli pull it in): a failing generator's
    request, its token, a cookie. So unless ssesup's own set-up renders the line
    (:func:`configure_structlog`, whose :func:`log_formatter` leaves locals out), ssesup renders the
    traceback itself with the standard library's formatter (never any locals) into the ``exception``
    field, which every renderer prints as it is."""
    if error is None:
        error = sys.exc_info()[1]
    target = log if logger is None else logger
    if error is None:
        target.error(event, **fields)
    elif _configured_by_ssesup():
        target.error(event, exc_info=error, **fields)
    else:
        target.error(event, exception=traceback_text(error), **fields)


def traceback_text(error: BaseException) -> str:
    """``error``'s traceback as the standard library formats it: file, line and code, never a local."""
    return "".join(traceback.format_exception(error)).rstrip("\n")


def debug(event: str, **fields: Any) -> None:
    """A ``debug`` line, left out while structlog is unconfigured: its default prints every level, and
    nobody who configured nothing asked for debug lines. Once configured, its levels decide."""
    if structlog.is_configured():
        log.debug(event, **fields)


def log_transition(stream: SupervisedStream, transition: Transition) -> None:
    to_state = transition.to_state
    drain_starts = to_state is State.DRAINING and transition.from_state is not State.DRAINING
    debug = to_state is not State.CLOSED and not drain_starts  # the opening moves
    if debug and not structlog.is_configured():
        # structlog unconfigured prints every level to stdout: a debug line per opening stream would be
        # noise nobody asked for (and, while thousands open, a sixth of a server's time). Once an app
        # (or configure_logging) configures structlog, its levels decide.
        return
    route, client = stream.route, stream.client  # the server may have taken client from X-Forwarded-For
    fields: dict[str, Any] = {
        "stream_id": stream.stream_id,
        "route": route if route.isprintable() else escape(route),  # escape()'s own test, without a call
        "client": client if client.isprintable() else escape(client),
        "from_state": transition.from_state.value,
        "to_state": transition.to_state.value,
        "trigger": transition.trigger.value,
    }
    user = stream.user
    if user is not None:  # who the stream serves (never a credential: docs/auth.md)
        fields["user"] = user if user.isprintable() else escape(user)
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


_NEVER = float("inf")


class SummaryLog:
    """One log line per key per interval for something anyone who can connect may repeat at will.

    The first occurrence of a key is logged at once (``count=1``); later ones within ``interval``
    seconds are counted, and the line that closes the interval says how many (``count``) over how long
    (``interval_s``), with the fields of the last occurrence. A key quiet for a whole interval starts
    over. Nothing runs on its own: an interval is closed by the next :meth:`note` or :meth:`flush`,
    so the line for the tail of a burst comes with the next occurrence or flush after the interval,
    never more often. Keys are a small fixed set (reasons), so memory stays bounded.

    Callers escape what came from the network (:func:`escape`). Not thread-safe: one per event loop,
    or the caller locks.
    """

    __slots__ = ("_clock", "_due", "_event", "_interval", "_level", "_windows")

    def __init__(
        self, event: str, *, clock: Callable[[], float], interval: float = 10.0, level: int = logging.WARNING
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be a number of seconds > 0, not {interval!r}")
        self._event = event
        self._clock = clock
        self._interval = float(interval)
        self._level = level
        # key -> [interval start, occurrences since the last line, fields of the last occurrence]
        self._windows: dict[str, list[Any]] = {}
        self._due = _NEVER  # when the earliest open interval ends

    def note(self, key: str, **fields: Any) -> None:
        """One occurrence of ``key``; ``fields`` describe it (escaped by the caller, and naming the key:
        the key itself is not logged)."""
        now = self._clock()
        if now >= self._due:
            self.flush(now)
        window = self._windows.get(key)
        if window is None:
            self._windows[key] = [now, 0, fields]
            self._due = min(self._due, now + self._interval)
            log.log(self._level, self._event, count=1, interval_s=0.0, **fields)
        else:
            window[1] += 1
            window[2] = fields

    def flush(self, now: float | None = None) -> None:
        """Close the intervals that have ended: a line for each with occurrences, and a new interval.
        Costs one comparison while no interval is open."""
        if self._due == _NEVER:
            return
        if now is None:
            now = self._clock()
        if now < self._due:
            return
        due = _NEVER
        for key, window in list(self._windows.items()):
            started, count, fields = window
            if now < started + self._interval:
                due = min(due, started + self._interval)
            elif count:
                log.log(self._level, self._event, count=count, interval_s=round(now - started, 3), **fields)
                window[0], window[1] = now, 0
                due = min(due, now + self._interval)
            else:
                del self._windows[key]
        self._due = due


# -- optional set-up ---------------------------------------------------------------------------------

# What every record gets, from structlog or from the standard library alike.
_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


_processors: list[Any] | None = None  # those configure_structlog set, while they are structlog's


def _configured_by_ssesup() -> bool:
    """Whether structlog runs with :func:`configure_structlog`'s set-up (its events rendered by a
    ``logging`` formatter: :func:`log_formatter`, or the standard library's, neither showing locals)."""
    return _processors is not None and structlog.is_configured() and structlog.get_config()["processors"] is _processors


def configure_structlog() -> None:
    """Route structlog's events (ssesup's among them) into the standard library's ``logging``.

    Afterwards each event is a ``logging.LogRecord`` of the logger named like the structlog logger
    (``ssesup`` for ssesup's own), so the app's logging configuration decides levels and output; a
    handler whose formatter is :func:`log_formatter` renders the event's fields.
    """
    global _processors
    _processors = [
        structlog.stdlib.filter_by_level,
        *_SHARED_PROCESSORS,
        structlog.processors.StackInfoRenderer(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ]
    structlog.configure(
        processors=_processors,
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
        # Tracebacks as the standard library writes them: structlog's default, with rich installed,
        # prints every frame's local variables (a request's token, a cookie).
        console = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        renderer = [console]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _escape_values, *renderer],
    )


def _escape_values(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The last guard before rendering: every top-level text value escaped (a server's own record,
    whose message may hold a forwarded address, included). Escaped text passes unchanged."""
    for key, value in event_dict.items():
        if type(value) is str and not value.isprintable():
            event_dict[key] = escape(value)
    return event_dict


_QUERY = re.compile(r"\?[^\s\"']*")


def _redacted_query(match: re.Match[str]) -> str:
    pairs = parse_qsl(match.group()[1:], keep_blank_values=True)
    if not pairs:
        return match.group()
    return "?" + "&".join(f"{name}=***" for name, _ in pairs)


def redact_query(text: str) -> str:
    """``text`` with the value of every query-string parameter in it replaced by ``***``
    (``/events?token=abc&x=1`` -> ``/events?token=***&x=***``)."""
    return _QUERY.sub(_redacted_query, text) if "?" in text else text


class RedactQueryStrings(logging.Filter):
    """A ``logging`` filter that writes every query-string value of a record's message and text arguments
    as ``***``: a server's access log (uvicorn's ``uvicorn.access``, gunicorn's ``gunicorn.access``)
    writes each request's path with its query, where an ``EventSource``'s token travels. Add it to the
    access logger::

        logging.getLogger("uvicorn.access").addFilter(ssesup.logs.RedactQueryStrings())

    :func:`configure_logging` adds it to its handler (every record it writes). Keeping tokens out of
    URLs (a cookie, a single-use ticket) is better still: docs/deploying.md."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(redact_query(arg) if isinstance(arg, str) else arg for arg in args)
        elif isinstance(args, dict):
            record.args = {key: redact_query(v) if isinstance(v, str) else v for key, v in args.items()}
        return True


class _Handler(logging.StreamHandler[TextIO]):
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
    handler.addFilter(RedactQueryStrings())
    handler.setFormatter(log_formatter(json=json))
    root.addHandler(handler)
    root.setLevel(level)
