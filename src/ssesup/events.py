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
from operator import itemgetter
from typing import Any, Final

LINE_SEPARATORS: Final = ("\r\n", "\n", "\r")

_NEWLINE = re.compile(r"\r\n|\r|\n")
_FIELDS: Final = frozenset({"data", "event", "id", "retry", "comment"})


def _plain_str(name: str, value: object) -> str:
    """``value`` as an exact ``str``.

    A ``str`` subclass (a ``(str, Enum)`` member, say) may override ``__str__``, ``__format__`` or
    ``__contains__``: what was checked would not be what is written. Only its character content counts.
    """
    if not isinstance(value, str):
        raise TypeError(f"Event {name} must be a str, not {type(value).__name__}")
    return str.__str__(value)


def _check_single_line(name: str, value: object) -> str:
    value = _plain_str(name, value)
    if "\r" in value or "\n" in value:
        raise ValueError(f"Event {name} must not contain CR or LF: {value!r}")
    return value


def _checked_fields(
    data: object, event: object, id: object, retry: object, comment: object
) -> tuple[str | None, str | None, str | None, int | None, str | None]:
    """The fields of an event, checked, as exact ``str`` and ``int`` values; or ``TypeError``/``ValueError``."""
    checked_data = checked_event = checked_id = checked_comment = None
    checked_retry = None
    if data is not None:
        if not isinstance(data, str):
            raise TypeError(f"Event data must be a str, not {type(data).__name__}; use Event.json(obj) for JSON")
        checked_data = str.__str__(data)
    if event is not None:
        checked_event = _check_single_line("event", event)
    if id is not None:
        checked_id = _check_single_line("id", id)
        if "\0" in checked_id:
            raise ValueError(f"Event id must not contain NUL: {checked_id!r}")
    if retry is not None:
        # An exact int: a subclass's __str__, __format__ or __lt__ never decides what reaches the wire.
        checked_retry = int.__index__(retry) if isinstance(retry, int) and not isinstance(retry, bool) else None
        if checked_retry is None or checked_retry < 0:
            raise ValueError(f"Event retry must be a non-negative int (milliseconds), not {retry!r}")
    if comment is not None:
        checked_comment = _plain_str("comment", comment)
    if data is None and event is None and id is None and retry is None and comment is None:
        raise ValueError("an Event needs at least one of data, event, id, retry or comment")
    return checked_data, checked_event, checked_id, checked_retry, checked_comment


class Event(tuple):
    """One server-sent event.

    ``data`` may span lines (each becomes its own ``data:`` line); ``event`` and ``id`` are single
    lines (``id`` may not contain NUL, which clients ignore); ``retry`` is the reconnection time in
    milliseconds; ``comment`` lines are ignored by clients and keep connections warm.

    Immutable (a tuple underneath, which also makes it cheap to make): the fields are checked once,
    when the event is made, so none can be changed afterwards into something that would put a field or
    a second event on the wire.
    """

    __slots__ = ()

    def __new__(
        cls,
        data: str | None = None,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comment: str | None = None,
    ) -> Event:
        if type(data) is str and event is None and id is None and retry is None and comment is None:
            return tuple.__new__(cls, (data, None, None, None, None))  # the common case: data only
        return tuple.__new__(cls, _checked_fields(data, event, id, retry, comment))

    data = property(itemgetter(0), doc="The data, or None.")
    event = property(itemgetter(1), doc="The event type, or None (clients then use 'message').")
    id = property(itemgetter(2), doc="The event id, or None.")
    retry = property(itemgetter(3), doc="The reconnection time in milliseconds, or None.")
    comment = property(itemgetter(4), doc="A comment, or None.")

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
        data, event, id, retry, comment = self
        if event is None and id is None and retry is None and comment is None and data is not None:
            return encode_data_line(data, sep)
        parts: list[str] = []
        if comment is not None:
            parts.extend(f":{' ' if line else ''}{line}" for line in _NEWLINE.split(comment))
        if event is not None:
            parts.append(f"event: {event}")
        if id is not None:
            parts.append(f"id: {id}")
        if retry is not None:
            parts.append(f"retry: {retry}")
        if data is not None:
            if "\r" in data or "\n" in data:
                parts.extend(f"data: {line}" for line in _NEWLINE.split(data))
            else:
                parts.append(f"data: {data}")
        parts.append(sep)
        return sep.join(parts).encode("utf-8")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return tuple.__ne__(self, other)

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        names = ("data", "event", "id", "retry", "comment")
        fields = ", ".join(f"{name}={value!r}" for name, value in zip(names, self, strict=True) if value is not None)
        return f"Event({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        data, event, id, retry, comment = self
        return (_rebuild, (data, event, id, retry, comment))


def _rebuild(data: Any, event: Any, id: Any, retry: Any, comment: Any) -> Event:
    return Event(data, event=event, id=id, retry=retry, comment=comment)


def encode_data_line(text: str, sep: str) -> bytes:
    """A bare ``str`` yielded by a generator: one event whose data is ``text``."""
    if type(text) is not str:
        text = _plain_str("data", text)
    if "\r" in text or "\n" in text:
        return sep.join([*(f"data: {line}" for line in _NEWLINE.split(text)), sep]).encode("utf-8")
    return f"data: {text}{sep}{sep}".encode()


def encode_item(item: object, sep: str) -> bytes:
    """Bytes for one item yielded by a generator, or ``TypeError`` naming what is accepted."""
    kind = type(item)
    if kind is str:
        return encode_data_line(item, sep)  # type: ignore[arg-type]
    if kind is Event:
        return item.encode(sep)  # type: ignore[attr-defined]
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
