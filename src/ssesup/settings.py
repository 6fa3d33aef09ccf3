"""A stream's settings: one frozen record, checked once, shared by the supervisor and its streams.

Owns: :class:`StreamSettings` (ping, send deadline, dead-peer timeout, close grace, event size limit,
line separator, ping factory), checking each value where it is given (``ssesup.checks``), and merging
a stream's own overrides onto its supervisor's settings. Does not own: what a setting does (the actor,
the timers) or the drain's settings (``ssesup.drain``).

A supervisor holds one ``StreamSettings``; a stream without overrides uses that very object, so ten
thousand streams share one record. A stream with overrides gets its own, made once when it starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ssesup import checks
from ssesup.events import EncodedEvent, Event, check_separator

PingFactory = Callable[[], Event | EncodedEvent]


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How streams behave; every field is checked when the record is made.

    ``ping``: seconds of idleness before a keep-alive (0 disables). ``send_timeout``: seconds one send
    may take (0 disables). ``dead_peer_timeout``: seconds sent bytes may stay unacknowledged (0
    disables). ``close_grace``: seconds a generator's cleanup may take once its stream ended.
    ``max_event_size``: bytes an encoded event may have (``None``: no limit). ``sep``: the line
    separator. ``ping_factory``: makes the ping event instead of the ``: ping`` comment.
    """

    ping: float = 15.0
    send_timeout: float = 30.0
    dead_peer_timeout: float = 30.0
    close_grace: float = 5.0
    max_event_size: int | None = None
    sep: str = "\r\n"
    ping_factory: PingFactory | None = None
    ping_comment: bytes = dataclasses.field(init=False, repr=False, compare=False)
    """The default ping, ``: ping`` and a blank line in this separator (made once)."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if field.init:
                object.__setattr__(self, field.name, _CHECKS[field.name](field.name, getattr(self, field.name)))
        object.__setattr__(self, "ping_comment", b": ping" + self.sep.encode() * 2)

    def merged(self, overrides: Mapping[str, Any]) -> StreamSettings:
        """These settings with ``overrides`` (from :func:`stream_overrides`); this very record when
        there are none."""
        return dataclasses.replace(self, **overrides) if overrides else self


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "ping": checks.seconds,
    "send_timeout": checks.seconds,
    "dead_peer_timeout": checks.seconds,
    "close_grace": checks.seconds,
    "max_event_size": checks.size,
    "sep": lambda name, value: check_separator(value),
    "ping_factory": lambda name, value: checks.optional_callable(name, value, "ping_factory() -> Event"),
}


def stream_overrides(given: Mapping[str, Any]) -> dict[str, Any]:
    """A stream's own settings, checked: ``given`` maps names of :class:`StreamSettings`' fields to a
    value, or to ``None`` for the supervisor's (left out)."""
    overrides = {}
    for name, value in given.items():
        check = _CHECKS.get(name)
        if check is None:
            raise TypeError(f"{name!r} is not a stream setting (one of {', '.join(_CHECKS)})")
        if value is not None:
            overrides[name] = check(name, value)
    return overrides
