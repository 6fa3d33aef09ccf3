"""The event model and the spec-exact wire encoder. Pure: no I/O, no state.

Owns: :class:`Event`, the JSON form, turning what a generator yields into bytes (objects into JSON data
with the values FastAPI's ``fastapi.sse`` sends), and the rule that user data can never inject a field or
a second event. Does not own: sending, pings, timing. Imports neither pydantic nor FastAPI: their objects
are recognised by what they offer (``model_dump_json``) or through modules already imported.

Encoding follows the WHATWG HTML standard, "Server-sent events", section "Parsing an event stream":
lines end with CRLF, LF or CR; a field is ``name: value``; a blank line dispatches the event.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import ipaddress
import json
import math
import re
import sys
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import PurePath
from types import GeneratorType
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


class EncodedEvent:
    """An event's bytes, encoded already: ``encode(sep)`` returns them as they are. What
    ``ssesup.compat``'s ``ping_factory`` returns (sse-starlette's pings, in its own field order)."""

    __slots__ = ("chunk",)

    def __init__(self, chunk: bytes) -> None:
        self.chunk = chunk

    def encode(self, sep: str = "\r\n") -> bytes:
        return self.chunk


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
        if type(data) is str and retry is None and comment is None:
            if event is None and id is None:
                _set_data(self, data)
                _set_fields(self, None)
                return
            if _set_plain(self, data, event, id):
                return
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
        """An event whose data is ``obj`` as compact JSON (NaN and infinities are refused).

        Written by orjson when it is installed (``ssesup[orjson]``, about ten times faster), else by the
        standard library; what orjson would write differently (NaN, big ints, non-str keys, subclasses,
        datetimes, dataclasses) is left to the standard library, so both accept and refuse alike. Floats
        in exponent form may be written shorter by orjson (``1e-7`` for ``1e-07``): the same value.
        """
        data = compact_json(obj)
        if retry is None and comment is None:
            made = _new_event(cls)
            if _set_plain(made, data, event, id):  # compact JSON has no raw CR, LF or NUL: data needs no check
                return made
        return cls(data, event=event, id=id, retry=retry, comment=comment)

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> Event:
        """An event from a dict of its fields (``data``, ``event``, ``id``, ``retry``, ``comment``)."""
        if not _FIELDS.issuperset(fields):
            unknown = set(fields) - _FIELDS
            raise ValueError(
                f"unknown event fields {sorted(unknown)}; known: {sorted(_FIELDS)} "
                "(to send a dict as JSON data: {'data': obj} or Event.json(obj))"
            )
        return cls(**fields)

    def encode(self, sep: str = "\r\n") -> bytes:
        """The event as UTF-8 bytes, ending with a blank line."""
        data = self._data
        if self._fields is None:
            return encode_data_line(data, sep)  # type: ignore[arg-type]  # data alone: always a str
        event, id, retry, comment = self._fields
        if retry is None and comment is None and data is not None and "\r" not in data and "\n" not in data:
            return _plain_frame(data, event, id, sep)
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


# The slots are written only here, when an event is made; assignments to an Event raise. (Looked up in
# the class's namespace: there the names are the slots' descriptors, not the attributes' declared types.)
_set_data: Callable[[Event, str | None], None] = Event.__dict__["_data"].__set__
_set_fields: Callable[[Event, tuple[Any, ...] | None], None] = Event.__dict__["_fields"].__set__
_new_event = object.__new__


def _plain(event: object, id: object) -> bool:
    """Whether ``event`` and ``id`` are each None or an exact str of printable characters (so no CR, LF
    or NUL): the common realistic event, which needs none of the full checks."""
    return (event is None or (type(event) is str and event.isprintable())) and (
        id is None or (type(id) is str and id.isprintable())
    )


def _plain_frame(data: str, event: str | None, id: str | None, sep: str) -> bytes:
    """The bytes of an event of single-line ``data`` with a name and/or an id (see :func:`_plain`)."""
    if event is None:
        return f"id: {id}{sep}data: {data}{sep}{sep}".encode()
    if id is None:
        return f"event: {event}{sep}data: {data}{sep}{sep}".encode()
    return f"event: {event}{sep}id: {id}{sep}data: {data}{sep}{sep}".encode()


def _set_plain(made: Event, data: str, event: object, id: object) -> bool:
    """Make ``made`` the event of exact-str ``data`` named ``event`` with ``id`` when :func:`_plain`
    says so; ``False`` (nothing set) for anything else, which the full checks take."""
    if _plain(event, id):
        _set_data(made, data)
        _set_fields(made, None if event is None and id is None else (event, id, None, None))
        return True
    return False


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
    # The exact types first, each tested on the one type() call: mypy narrows ``type(item) is Event`` but
    # not a comparison of ``kind``, and a cast or isinstance would cost every event a call.
    kind = type(item)
    if kind is Event:
        if item._fields is None:  # type: ignore[attr-defined]  # item is an Event (kind is Event)
            # Data alone, the event of a burst: one exact str, checked when the event was made.
            text: str = item._data  # type: ignore[attr-defined]  # item is an Event (kind is Event)
            if "\r" not in text and "\n" not in text:
                return f"data: {text}{sep}{sep}".encode()
        encoded: bytes = item.encode(sep)  # type: ignore[attr-defined]  # item is an Event (kind is Event)
        return encoded
    if kind is bytes:  # encoded already: what a hub's stream sends, once per subscriber and event
        return item  # type: ignore[return-value]  # item is bytes (kind is bytes)
    if kind is str:
        return encode_data_line(item, sep)  # type: ignore[arg-type]  # item is a str (kind is str)
    if kind is dict:
        return _mapping_bytes(item, sep)  # type: ignore[arg-type]  # item is a dict (kind is dict)
    if isinstance(item, Event):
        return item.encode(sep)
    if isinstance(item, str):
        return encode_data_line(item, sep)
    if isinstance(item, bytes):
        return item
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, Mapping):
        return _mapping_bytes(item, sep)
    fastapi_sse = sys.modules.get("fastapi.sse")
    if fastapi_sse is not None and isinstance(item, fastapi_sse.ServerSentEvent):
        return _from_fastapi_event(item).encode(sep)
    try:
        text = json_data(item)
    except TypeError as exc:
        raise TypeError(
            f"a SupervisedStream generator yielded {type(item).__name__}; it may yield Event, str (sent as data), "
            "bytes or memoryview (sent as is), a dict of event fields, or a pydantic model, a dataclass or "
            f"JSON-able data (sent as JSON data); {exc}"
        ) from None
    return encode_data_line(text, sep)


_stdlib_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _orjson_writer(default: Callable[[Any], Any] | None = None) -> partial[bytes] | None:
    """orjson's ``dumps`` (with ``default``) as ``obj -> bytes``, or ``None`` where orjson is not
    installed. Datetimes, dataclasses and subclasses are passed to ``default`` (or refused), as the
    standard library would take them, never written orjson's own way."""
    try:
        import orjson
    except ImportError:
        return None
    option = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
    return partial(orjson.dumps, default=default, option=option)


def _fast_json() -> Callable[[Any], str]:
    """Event.json's writer: orjson's where installed, falling back to the standard library for
    anything it would write differently; the standard library's alone otherwise."""
    writer = _orjson_writer()
    if writer is None:
        return _stdlib_json
    dumps, option = writer.func, writer.keywords["option"]  # no default: a call without it is cheaper

    def write(obj: Any) -> str:
        try:
            text = dumps(obj, option=option).decode()
        except TypeError:  # a big int, a non-str key, a datetime, a subclass...: the standard library's call
            return _stdlib_json(obj)
        if "null" in text:  # orjson writes NaN and infinities as null: the standard library refuses them
            return _stdlib_json(obj)
        return text

    return write


compact_json: Callable[[Any], str]
"""``compact_json(obj) -> str``: compact JSON, NaN refused (set on first use)."""


def _compact_json_first_use(obj: Any) -> str:
    global compact_json
    compact_json = _fast_json()
    return compact_json(obj)


compact_json = _compact_json_first_use


_PLAIN_KEYS: Final = frozenset({"data", "event", "id"})


def _mapping_bytes(fields: Mapping[str, Any], sep: str) -> bytes:
    """A dict of event fields; a ``data`` that is not a ``str`` is sent as JSON."""
    data = fields.get("data")
    if data is not None and not isinstance(data, str):
        data = json_data(data)
        if _PLAIN_KEYS.issuperset(fields):  # data, event, id: written without an Event or a dict copy
            event, id = fields.get("event"), fields.get("id")
            if event is None and id is None:
                return encode_data_line(data, sep)
            if _plain(event, id):
                return _plain_frame(data, event, id, sep)  # compact JSON: one line
        fields = {**fields, "data": data}
    return Event.from_mapping(fields).encode(sep)


# --------------------------------------------------------------------------------------------------
# Objects as JSON data, with the values fastapi.sse sends (its jsonable_encoder, non-finite floats null)
# --------------------------------------------------------------------------------------------------

_IP_TYPES: Final = (
    ipaddress.IPv4Address,
    ipaddress.IPv4Interface,
    ipaddress.IPv4Network,
    ipaddress.IPv6Address,
    ipaddress.IPv6Interface,
    ipaddress.IPv6Network,
)


def json_data(obj: object) -> str:
    """``obj`` as compact JSON text: the data of the event sent for an object a generator yields.

    A pydantic model is written by its own ``model_dump_json(by_alias=True)``; anything else by ``json``,
    which takes what it cannot write itself to :func:`_jsonable`. The values are those FastAPI's
    ``fastapi.sse`` sends; NaN and infinities become ``null``, as there and in JavaScript's
    ``JSON.stringify``. ``TypeError`` names what is not JSON-able.
    """
    kind = type(obj)
    if kind is not dict and kind is not list:  # neither is a pydantic model
        dump = getattr(obj, "model_dump_json", None)
        if dump is not None and not isinstance(obj, type):
            dumped: str = dump(by_alias=True)
            return dumped
    fast = _orjson_data()
    if fast is not None:
        # orjson writes NaN as null, as fastapi.sse sends it; what it refuses, the standard library decides.
        try:
            return fast(obj).decode()
        except TypeError:
            pass
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_jsonable)
    except ValueError as exc:
        if not str(exc).startswith("Out of range float"):
            raise
    # Rare: a NaN or an infinity. Written again with every float that json or _jsonable meets made finite.
    return json.dumps(
        _finite(obj),
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=lambda value: _finite(_jsonable(value)),
    )


_UNSET: Any = object()
_orjson_data_writer: Any = _UNSET


def _orjson_data() -> Callable[[Any], bytes] | None:
    """orjson's writer for yielded objects (``default`` :func:`_jsonable`), or ``None``; resolved once."""
    global _orjson_data_writer
    if _orjson_data_writer is _UNSET:
        _orjson_data_writer = _orjson_writer(_jsonable)
    writer: Callable[[Any], bytes] | None = _orjson_data_writer
    return writer


def _jsonable(obj: Any) -> Any:
    """One step towards JSON for what ``json`` cannot write, as FastAPI's ``jsonable_encoder`` takes it."""
    if hasattr(obj, "model_dump") and not isinstance(obj, type):  # a pydantic model inside other data
        return obj.model_dump(mode="json", by_alias=True)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {field.name: getattr(obj, field.name) for field in dataclasses.fields(obj)}
    if isinstance(obj, (datetime.date, datetime.time)):  # datetime is a date
        return obj.isoformat()
    if isinstance(obj, datetime.timedelta):
        return obj.total_seconds()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset, deque, GeneratorType)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode()
    if isinstance(obj, re.Pattern):
        return obj.pattern
    if isinstance(obj, (uuid.UUID, PurePath, *_IP_TYPES)):
        return str(obj)
    decimal = sys.modules.get("decimal")  # a Decimal exists only once its module is imported
    if decimal is not None and isinstance(obj, decimal.Decimal):
        exponent = obj.as_tuple().exponent
        return int(obj) if isinstance(exponent, int) and exponent >= 0 else float(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-able")


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinity in its dicts and lists (and tuples) replaced by ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    return obj


def _from_fastapi_event(item: Any) -> Event:
    """A ``fastapi.sse.ServerSentEvent`` as fastapi.sse sends it: ``data`` as JSON, ``raw_data`` as is.

    fastapi.sse writes a model in ``data`` with ``model_dump_json()``: by field name, not by alias.
    """
    if item.raw_data is not None:
        data = item.raw_data
    elif hasattr(item.data, "model_dump_json"):
        data = item.data.model_dump_json()
    else:
        data = None if item.data is None else json_data(item.data)
    return Event(data, event=item.event, id=item.id, retry=item.retry, comment=item.comment)


def check_separator(sep: str) -> str:
    if sep not in LINE_SEPARATORS:
        raise ValueError(f"sep, the line separator, must be one of '\\r\\n', '\\n' or '\\r', not {sep!r}")
    return sep
