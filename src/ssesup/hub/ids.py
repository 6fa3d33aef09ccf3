"""The hub's event ids: one compact SSE id that resumes every channel of a subscription.

Owns: the id format, positions as tokens, and the reasons an id cannot be honoured. Does not own
history (the backends) or what is sent (``ssesup.hub.subscription``). Pure: no I/O.

A position is a pair of ints, ordered as tuples: ``(offset, 0)`` in memory, ``(milliseconds, sequence)``
for a Redis stream entry id. ``(0, 0)`` is "before anything". A position is written in base 36,
``major`` or ``major-minor`` when ``minor`` is not 0. Each part is below 2**64 (what a Redis stream id
holds): a token that writes a larger number is not a position.

An id is ``epoch.digest.p1.p2...``: the hub's epoch (it changes when history is lost, a flushed Redis,
another process's in-memory hub), a digest of the subscription's channels in their order (an id is
never applied to other channels), then one position per channel. For example ``k3v9x2aq.1c0f9e2b.2bi``
is offset 3042 of one channel. Ids longer than :data:`MAX_ID_BYTES` are refused, so a subscription has
at most :data:`MAX_CHANNELS` channels (their ids stay within the bound).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Sequence

Position = tuple[int, int]
START: Position = (0, 0)

MAX_ID_BYTES = 256
MAX_CHANNELS = 16
# The largest part of a position (a Redis stream id is two unsigned 64-bit numbers).
MAX_PART = 2**64 - 1

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_TOKEN = re.compile(r"[0-9a-z]{1,13}(?:-[0-9a-z]{1,13})?")
_EPOCH = re.compile(r"[0-9a-z]{1,16}")


class GapReason(enum.Enum):
    """Why a subscriber did not get every event after the id it asked for (the ``reason`` of a gap)."""

    EXPIRED = "expired"
    """Events after the id are no longer in history (too old, or trimmed by count)."""
    UNKNOWN = "unknown"
    """The id names a position this hub never had, or other channels than the subscription's."""
    MALFORMED = "malformed"
    """The id is not a hub id."""
    TOO_LONG = "too_long"
    """The id is longer than MAX_ID_BYTES."""
    EPOCH = "epoch"
    """The id is from another epoch of the hub: its history was lost (a flushed Redis, another process)."""
    DROPPED = "dropped"
    """The subscriber's mailbox overflowed and its oldest events were dropped (policy drop_oldest)."""


def _base36(number: int) -> str:
    if number == 0:
        return "0"
    digits = []
    while number:
        number, digit = divmod(number, 36)
        digits.append(_DIGITS[digit])
    return "".join(reversed(digits))


# Tokens of the positions formatted lately: a fan-out formats the same position for every subscriber
# of its channel (each id of a subscription of several channels is its own). At most TOKENS_KEPT, then
# forgotten all at once: the position being fanned out is back in the next format.
TOKENS_KEPT = 1024
_tokens: dict[Position, str] = {}


def position_token(position: Position) -> str:
    token = _tokens.get(position)
    if token is None:
        major, minor = position
        token = _base36(major) if minor == 0 else f"{_base36(major)}-{_base36(minor)}"
        if len(_tokens) >= TOKENS_KEPT:
            _tokens.clear()
        _tokens[position] = token
    return token


def parse_token(token: str) -> Position:
    """The position a token writes, or ``ValueError``."""
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"not a position: {token!r}")
    major, _, minor = token.partition("-")
    position = int(major, 36), int(minor, 36) if minor else 0
    if position[0] > MAX_PART or position[1] > MAX_PART:
        raise ValueError(f"not a position (a part is at least 2**64): {token!r}")
    return position


def position_before(position: Position) -> Position:
    """The last position before ``position`` (a resume after it gets the event at ``position``)."""
    major, minor = position
    return (major, minor - 1) if minor else (major - 1, MAX_PART)


def channels_digest(channels: Sequence[str]) -> str:
    """Eight hex digits naming the channels in their order. Not interned: on Python 3.12 an interned
    str is never freed, and channel names may be made per user or per request."""
    return hashlib.blake2s("\0".join(channels).encode("utf-8"), digest_size=4).hexdigest()


def format_id(epoch: str, digest: str, positions: Sequence[Position]) -> str:
    return ".".join((epoch, digest, *map(position_token, positions)))


class Unhonoured(Exception):
    """An id that cannot be resumed from, with its reason."""

    def __init__(self, reason: GapReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


def parse_id(raw: str, epoch: str, digest: str, count: int) -> list[Position]:
    """The positions ``raw`` asks for, one per channel; or :class:`Unhonoured` with the reason."""
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise Unhonoured(GapReason.TOO_LONG)
    parts = raw.split(".")
    if len(parts) < 3 or not _EPOCH.fullmatch(parts[0]):
        raise Unhonoured(GapReason.MALFORMED)
    try:
        positions = [parse_token(token) for token in parts[2:]]
    except ValueError:
        raise Unhonoured(GapReason.MALFORMED) from None
    if parts[0] != epoch:
        raise Unhonoured(GapReason.EPOCH)
    if parts[1] != digest or len(positions) != count:
        raise Unhonoured(GapReason.UNKNOWN)
    return positions
