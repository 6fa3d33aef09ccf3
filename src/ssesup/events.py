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


class Event:
    """One server-sent event.

    ``data`` may span lines (each becomes its own ``data:`` line); ``event`` and ``id`` are single
    lines (``id`` may not contain NUL, which clients ignore); ``retry`` is the reconnection time in
    milliseconds; ``comment`` lines are ignored by clients and keep connections warm.

    Read-only: the fields are checked once, when the event is made; assigning or deleting an attribute
    of an event raises, so none can be changed afterwards into something that would put a field or a
    second event on the wire.
    """

    # Two slots, not five: an event of data alone (the common case, made once per event sent) stores
    # its data and ``None``; the other fields live together in one tuple, only when one is set.
    __slots__ = ("_data", "_fields")

    def __init__(
        self,
        data: str | None = None,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comment: str | None = None,
    ) -> None:
        if type(data) is str and event is None and id is None and retry is None and comment is None:
            _set_data(self, data)
            _set_fields(self, None)
        else:
            data, event, id, retry, comment = _checked_fields(data, event, id, retry, comment)
            _set_data(self, data)
            _set_fields(self, (event, id, retry, comment))

    _data: str | None
    _fields: tuple[str | None, str | None, int | None, str | None] | None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"an Event is read-only: it cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"an Event is read-only: it cannot delete {name!r}")

    @property
    def data(self) -> str | None:
        """The data, or None."""
        return self._data

    @property
    def event(self) -> str | None:
        """The event type, or None (clients then use 'message')."""
        return None if self._fields is None else self._fields[0]

    @property
    def id(self) -> str | None:
        """The event id, or None."""
        return None if self._fields is None else self._fields[1]

    @property
    def retry(self) -> int | None:
        """The reconnection time in milliseconds, or None."""
        return None if self._fields is None else self._fields[2]

    @property
    def comment(self) -> str | None:
        """A comment, or None."""
        return None if self._fields is None else self._fields[3]

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
        data = self._data
        if self._fields is None:
            return encode_data_line(data, sep)  # type: ignore[arg-type]
        event, id, retry, comment = self._fields
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

    def _all(self) -> tuple[Any, ...]:
        """data, event, id, retry, comment."""
        return (self._data, *(self._fields or (None, None, None, None)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return self._all() == other._all()

    def __hash__(self) -> int:
        return hash(self._all())

    def __repr__(self) -> str:
        names = ("data", "event", "id", "retry", "comment")
        shown = (f"{name}={value!r}" for name, value in zip(names, self._all(), strict=True) if value is not None)
        return f"Event({', '.join(shown)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, self._all())  # the same five arguments as events pickled by earlier versions


# The slots are written only here, when an event is made; assignments to an Event raise.
_set_data = Event._data.__set__  # type: ignore[attr-defined]
_set_fields = Event._fields.__set__  # type: ignore[attr-defined]


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
    if kind is Event:
        if item._fields is None:  # type: ignore[attr-defined]
            # Data alone, the event of a burst: one exact str, checked when the event was made.
            text: str = item._data  # type: ignore[attr-defined]
            if "\r" not in text and "\n" not in text:
                return f"data: {text}{sep}{sep}".encode()
        return item.encode(sep)  # type: ignore[attr-defined]
    if kind is str:
        return encode_data_line(item, sep)  # type: ignore[arg-type]
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
