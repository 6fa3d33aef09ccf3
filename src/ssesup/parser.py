"""A pure event-stream parser, as a browser's ``EventSource`` reads a stream.

Owns: :class:`EventStreamParser` (the WHATWG HTML standard's "Parsing an event stream" and
"Interpreting an event stream", incremental: a chunk may end anywhere) and :class:`ServerSentEvent`, one
event as an ``EventSource`` dispatches it. Does not own reading from anywhere: the test client
(``ssesup.testing``) and the benchmarks feed it bytes.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["EventStreamParser", "ServerSentEvent"]

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ServerSentEvent:
    """One event as an ``EventSource`` dispatches it.

    ``id`` is the stream's last event id when the event was dispatched (ids carry over to later events,
    as the standard says); ``retry`` is the ``retry:`` field of this event's own lines, if it had one.
    """

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None

    def json(self) -> Any:
        """The data parsed as JSON."""
        return json.loads(self.data)


class EventStreamParser:
    """An incremental event-stream parser: ``feed(chunk)`` returns the events the chunk completed.

    Follows the WHATWG HTML standard, "Parsing an event stream" and "Interpreting an event stream": UTF-8
    with invalid bytes replaced, one leading BOM ignored, lines ended by CRLF, LF or CR (a chunk may end
    between CR and LF), comments, the ``data``/``event``/``id``/``retry`` fields (others ignored), the
    last event id kept across events (an ``id`` with NUL ignored), ``retry`` only when all ASCII digits,
    and no event dispatched when no ``data`` line came. Comments and the reconnection time are kept.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""
        self._retry: int | None = None
        self._last_event_id = ""
        self.last_event_id = ""
        """The last event id of the stream (the standard's "last event ID string")."""
        self.retry: int | None = None
        """The reconnection time in milliseconds the stream set last (``None``: never set)."""
        self.comments: list[str] = []
        """Every comment line's text, without the colon and one leading space (pings are ``"ping"``)."""

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        text = self._decoder.decode(chunk)
        if not self._started:
            if not text:
                return []
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        buffer = self._buffer + text
        events: list[ServerSentEvent] = []
        start = 0
        for line_end in _LINE_END.finditer(buffer):
            if line_end.group() == "\r" and line_end.end() == len(buffer):
                break  # a CR that ends the chunk may be the first half of a CRLF
            self._line(buffer[start : line_end.start()], events)
            start = line_end.end()
        self._buffer = buffer[start:]
        return events

    def close(self) -> list[ServerSentEvent]:
        """The end of the stream: returns the event a last line ended by CR completes, if it does; an
        event left incomplete is discarded, as the standard says."""
        buffer = self._buffer + self._decoder.decode(b"", final=True)
        self._buffer = ""
        events: list[ServerSentEvent] = []
        if buffer.endswith("\r"):
            self._line(buffer[:-1], events)
        return events

    def _line(self, line: str, events: list[ServerSentEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line[0] == ":":
            self.comments.append(line[2:] if line.startswith(": ") else line[1:])
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = self.retry = int(value)

    def _dispatch(self, events: list[ServerSentEvent]) -> None:
        self.last_event_id = self._last_event_id
        if self._data:
            events.append(
                ServerSentEvent("\n".join(self._data), self._event or "message", self.last_event_id, self._retry)
            )
        self._data = []
        self._event = ""
        self._retry = None
