"""sse-starlette's event classes, byte for byte: ``ServerSentEvent``, ``JSONServerSentEvent``, ``ensure_bytes``.

Owns: the encoder of sse-starlette 3.7 (field order comment, id, event, data, retry; ``str()`` of any
data; a ``": "`` before every comment line), so that what a migrated app sends is what it sent before.
Does not own: ssesup's own :class:`~ssesup.Event` and encoder (``ssesup.events``), sending, pings.

Deliberate differences, checked when an event is encoded (a ``ServerSentEvent`` is editable, so that is
the one moment its fields are final): CR or LF in ``id`` or ``event`` raise ``ValueError`` (sse-starlette
strips them, silently changing the id a client resumes from), so does NUL in ``id`` (clients ignore such
an id) and a negative ``retry`` (clients ignore it); a ``bool`` retry raises ``TypeError``. Field values
are written as their plain characters, so a ``str`` or ``int`` subclass cannot change what is written.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ssesup.events import _check_single_line


class ServerSentEvent:
    """One event, encoded by :meth:`encode` exactly as sse-starlette encodes it (fields are editable)."""

    _LINE_SEP_EXPR = re.compile(r"\r\n|\r|\n")
    DEFAULT_SEPARATOR = "\r\n"

    def __init__(
        self,
        data: Any | None = None,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comment: str | None = None,
        sep: str | None = None,
    ) -> None:
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry
        self.comment = comment
        self._sep = sep if sep is not None else self.DEFAULT_SEPARATOR

    def encode(self) -> bytes:
        sep = self._sep
        split = self._LINE_SEP_EXPR.split
        lines: list[str] = []
        if self.comment is not None:
            lines.extend(f": {chunk}{sep}" for chunk in split(str(self.comment)))
        if self.id is not None:
            id = _check_single_line("id", self.id)
            if "\0" in id:
                raise ValueError(f"Event id must not contain NUL: {id!r}")
            lines.append(f"id: {id}{sep}")
        if self.event is not None:
            lines.append(f"event: {_check_single_line('event', self.event)}{sep}")
        if self.data is not None:
            lines.extend(f"data: {chunk}{sep}" for chunk in split(str(self.data)))
        if self.retry is not None:
            retry = self.retry
            if not isinstance(retry, int) or isinstance(retry, bool):
                raise TypeError("retry argument must be int")
            if retry < 0:
                raise ValueError(f"retry must be a non-negative int (milliseconds), not {retry!r}")
            lines.append(f"retry: {int.__repr__(retry)}{sep}")
        lines.append(sep)
        return "".join(lines).encode("utf-8")


class JSONServerSentEvent(ServerSentEvent):
    """A ``ServerSentEvent`` whose data is ``data`` as compact JSON (``NaN`` and infinities refused)."""

    def __init__(self, data: Any | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(
            json.dumps(data, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
            if data is not None
            else None,
            *args,
            **kwargs,
        )


def ensure_bytes(data: bytes | dict[str, Any] | ServerSentEvent | Any, sep: str) -> bytes:
    """What a generator yielded, as sse-starlette sends it: bytes as they are, an event encoded with its
    own separator, a dict as the fields of an event, anything else as the ``str()`` of its data."""
    if isinstance(data, (bytes, memoryview)):
        return bytes(data)
    if isinstance(data, ServerSentEvent):
        return data.encode()
    if isinstance(data, dict):
        return ServerSentEvent(**{**data, "sep": sep}).encode()
    return ServerSentEvent(str(data), sep=sep).encode()
