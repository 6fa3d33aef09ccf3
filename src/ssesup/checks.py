"""Checks of settings and arguments, made where they are given.

Owns: one validator per kind of value (seconds, whole numbers, byte sizes, ranges, callables, flags),
each returning the value in its working type or raising with a message that names the setting and what
it accepts. Does not own: what a setting means (the class that takes it) or defaults.

A setting that is accepted and fails later (at a drain, at each ping, in every stream) fails where
nobody sees it: so everything a user passes is checked here, when it is passed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def seconds(name: str, value: object, *, positive: bool = False, below: float | None = None) -> float:
    """A number of seconds, ``>= 0`` (``0`` disables), or ``> 0`` when ``positive``, and ``< below``
    when given; ``inf`` is "no limit" where a setting allows it."""
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (value > 0 if positive else value >= 0)
        and (below is None or value < below)
    ):
        return float(value)
    accepted = "> 0" if positive else ">= 0 (0 disables)"
    if below is not None:
        accepted += f" and < {below:g}"
    raise ValueError(f"{name} must be a number of seconds {accepted}, not {value!r}")


def optional_seconds(name: str, value: object) -> float | None:
    """``None`` (take the supervisor's), or :func:`seconds`."""
    return None if value is None else seconds(name, value)


def whole(name: str, value: object, *, minimum: int) -> int:
    """A whole number ``>= minimum`` (``bool`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, not {value!r}")
    return value


def optional_whole(name: str, value: object, *, minimum: int, none: str) -> int | None:
    """``None`` (what ``none`` says it means) or a whole number ``>= minimum``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be a whole number >= {minimum}, or None ({none}), not {value!r}")
    return value


def size(name: str, value: object) -> int | None:
    """A number of bytes ``> 0``, or ``None`` for no limit."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be a number of bytes > 0, or None for no limit, not {value!r}")
    return value


def seconds_range(name: str, value: object) -> tuple[float, float]:
    """A pair ``(low, high)`` of seconds with ``0 <= low <= high``, both finite."""
    pair: Any = value  # anything the caller gave: unpacked, then each part checked
    try:
        low, high = pair
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (low, high) of seconds, not {value!r}") from None
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not (numbers and math.isfinite(high) and 0 <= low <= high):
        raise ValueError(f"{name} must be a pair (low, high) of seconds with 0 <= low <= high, not {value!r}")
    return float(low), float(high)


def flag(name: str, value: object) -> bool:
    """``True`` or ``False`` (a string such as ``"no"`` would read as true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value


def optional_callable(name: str, value: T, signature: str) -> T:
    """``None`` or something to call; ``signature`` says how it is called (``"farewell(stream)"``)."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable, {signature}, or None, not {type(value).__name__}")
    return value


def instance(name: str, value: T, kind: type, hint: str = "") -> T:
    """An instance of ``kind``."""
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__}{hint}, not {value!r}")
    return value


def optional_instance(name: str, value: T, kind: type, hint: str = "") -> T:
    """``None`` or an instance of ``kind``."""
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__}{hint} or None, not {value!r}")
    return value


def one_of(name: str, value: object, convert: Callable[[Any], T], valid: tuple[str, ...]) -> T:
    """``convert(value)``, or a ``ValueError`` that lists the ``valid`` values."""
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}, not {value!r}") from None
