"""The drain plan: when each stream's turn comes, and the farewell it gets. Pure: no I/O, no clock.

Owns: spreading closes in waves across the drain window, and the jittered ``retry:`` hint of each
farewell. Does not own: carrying the plan out (the supervisor schedules it on its timer service) or
sending (the actor sends the farewell).

Why waves: a deploy that cuts every stream at once brings every client back in the same second. The
plan closes streams in waves across the first half of the grace, and each farewell tells its client
to wait a different, random time before reconnecting. Few streams (one wave's worth) close at once,
so ``--reload`` with a browser tab open is not slowed down.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ssesup import checks

WAVE_SIZE = 50
"""A drain of up to this many streams closes them all at once; more are spread in waves."""
MAX_WAVES = 10


@dataclass(frozen=True)
class DrainSettings:
    """How a supervisor drains.

    ``grace``: seconds from the start of a drain until what is left is force-closed.
    ``retry_after``: the ``Retry-After`` seconds of a stream refused during a drain.
    ``reconnect``: the range, in seconds, of the ``retry:`` hint each farewell carries. A drained client of
    a hub comes back within ``grace`` and the range's top: the hub's history must cover that long at the
    channel's rate (docs/channels.md, the sizing rule).
    ``on_signals``: drain on SIGTERM and SIGINT by chaining to the server's own handlers.
    """

    grace: float = 20.0
    retry_after: int = 5
    reconnect: tuple[float, float] = (1.0, 10.0)
    on_signals: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "grace", checks.seconds("drain_grace", self.grace, positive=True))
        object.__setattr__(self, "retry_after", checks.whole("retry_after", self.retry_after, minimum=0))
        object.__setattr__(self, "reconnect", checks.seconds_range("reconnect", self.reconnect))
        object.__setattr__(self, "on_signals", checks.flag("drain_on_signals", self.on_signals))


def wave_offsets(count: int, grace: float) -> list[float]:
    """Seconds after the drain's start at which each of ``count`` streams is closed, in order.

    The first wave comes after a short lead (a tenth of the grace, at most a second) in which
    generators that watch for the drain can send their last events. Up to :data:`WAVE_SIZE` streams
    all close in that first wave; more are dealt out in turn to up to :data:`MAX_WAVES` waves evenly
    spaced from the lead to half the grace.
    """
    lead = min(1.0, grace / 10)
    waves = min(MAX_WAVES, math.ceil(count / WAVE_SIZE))
    if waves <= 1:
        return [lead] * count
    spacing = (grace / 2 - lead) / (waves - 1)
    return [lead + (i % waves) * spacing for i in range(count)]


def reconnect_ms(reconnect: Sequence[float], rng: random.Random) -> int:
    """A ``retry:`` hint in milliseconds, drawn at random from the ``reconnect`` range (seconds)."""
    low, high = reconnect
    return round(rng.uniform(low, high) * 1000)
