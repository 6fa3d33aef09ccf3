"""The event model and the spec-exact wire encoder. Pure: no I/O, no state.

Owns: :class:`Event`, the JSON form, turning what a generator yields into bytes, and the rule that
user data can never inject a field or a second event. Does not own: sending, pings, timing.

Encoding follows the WHATWG HTML standard, "Server-sent events", section "Parsing an event stream":
lines end with CRLF, LF or CR; a field is ``name: value``; a blank line dispatches the event.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

LineSeparator = Literal["\r\n", "\n", "\r"]
LINE_SEPARATORS: Final = ("\r\n", "\n", "\r")

_NEWLINE = re.compile(r"\r\n|\r|\n")
_FIELDS: Final = frozenset({"data", "event", "id", "retry", "comment"})


def _check_single_line(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"Event {name} must be a str, not {type(value).__name__}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"Event {name} must not contain CR or LF: {value!r}")
    return value


class Event:
    """One server-sent event.

    ``data`` may span lines (each becomes its own ``data:`` line); ``event`` and ``id`` are single
    lines (``id`` may not contain NUL, which clients ignore); ``retry`` is the reconnection time in
    milliseconds; ``comment`` lines are ignored by clients and keep connections warm.
    """

    __slots__ = ("comment", "data", "event", "id", "retry")

    def __init__(
        self,
        data: str | None = None,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comment: str | None = None,
    ) -> None:
        if data is not None and not isinstance(data, str):
            raise TypeError(f"Event data must be a str, not {type(data).__name__}; use Event.json(obj) for JSON")
        if event is not None:
            _check_single_line("event", event)
        if id is not None:
            _check_single_line("id", id)
            if "\0" in id:
                raise ValueError(f"Event id must not contain NUL: {id!r}")
        if retry is not None and (isinstance(retry, bool) or not isinstance(retry, int) or retry < 0):
            raise ValueError(f"Event retry must be a non-negative int (milliseconds), not {retry!r}")
        if comment is not None and not isinstance(comment, str):
            raise TypeError(f"Event comment must be a str, not {type(comment).__name__}")
        if data is None and event is None and id is None and retry is None and comment is None:
            raise ValueError("an Event needs at least one of data, event, id, retry or comment")
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry
        self.comment = comment

    @classmethod
    def json(
        cls,
        obj: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comment: str | None = None,
    ) -> Event:
        """An event whose data is ``obj`` as compact JSON (NaN and infinities are refused)."""
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return cls(data, event=event, id=id, retry=retry, comment=comment)

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> Event:
        """An event from a dict of its fields (``data``, ``event``, ``id``, ``retry``, ``comment``)."""
        unknown = set(fields) - _FIELDS
        if unknown:
            raise ValueError(f"unknown event fields {sorted(unknown)}; known: {sorted(_FIELDS)}")
        return cls(**fields)

    def encode(self, sep: str = "\r\n") -> bytes:
        """The event as UTF-8 bytes, ending with a blank line."""
        parts: list[str] = []
        if self.comment is not None:
            parts.extend(f":{' ' if line else ''}{line}" for line in _NEWLINE.split(self.comment))
        if self.event is not None:
            parts.append(f"event: {self.event}")
        if self.id is not None:
            parts.append(f"id: {self.id}")
        if self.retry is not None:
            parts.append(f"retry: {self.retry}")
        if self.data is not None:
            data = self.data
            if "\r" in data or "\n" in data:
                parts.extend(f"data: {line}" for line in _NEWLINE.split(data))
            else:
                parts.append(f"data: {data}")
        parts.append(sep)
        return sep.join(parts).encode("utf-8")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f) for f in self.__slots__))

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__ if getattr(self, f) is not None)
        return f"Event({fields})"


def encode_data_line(text: str, sep: str) -> bytes:
    """A bare ``str`` yielded by a generator: one event whose data is ``text``."""
    if "\r" in text or "\n" in text:
        return sep.join([*(f"data: {line}" for line in _NEWLINE.split(text)), sep]).encode("utf-8")
    return f"data: {text}{sep}{sep}".encode()


def encode_item(item: object, sep: str) -> bytes:
    """Bytes for one item yielded by a generator, or ``TypeError`` naming what is accepted."""
    if isinstance(item, Event):
        return item.encode(sep)
    if isinstance(item, str):
        return encode_data_line(item, sep)
    if isinstance(item, bytes):
        return item
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, Mapping):
        return Event.from_mapping(item).encode(sep)
    raise TypeError(
        f"a SupervisedStream generator yielded {type(item).__name__}; "
        "it may yield Event, str (sent as data), bytes or memoryview (sent as is), or a dict of event fields"
    )


def check_separator(sep: str) -> str:
    if sep not in LINE_SEPARATORS:
        raise ValueError(f"separator must be one of {LINE_SEPARATORS!r}, not {sep!r}")
    return sep
