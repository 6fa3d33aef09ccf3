"""The machine's speed at one moment, to compare runs of different days: a fixed Python workload's ns per
step (the best and the median of 100 short tries) and a copy of 64 MiB through memory (larger than the
caches) in GB/s.

On this machine both have moved by about 2x between sessions with the same code (a shared host), and
with them every absolute figure; the ratios move less, but not always alike (ssesup's bursts spend more
of their time in Python per byte sent than the floor's). A run records the probe at its start and end.
"""

from __future__ import annotations

import statistics
import time


class _Step:
    __slots__ = ("a", "b")

    def __init__(self, a: int, b: str) -> None:
        self.a = a
        self.b = b


def _python(steps: int) -> float:
    parts = []
    started = time.perf_counter()
    for i in range(steps):
        step = _Step(i, "x")
        parts.append(step.b)
    b"".join(s.encode() for s in parts)
    return (time.perf_counter() - started) / steps * 1e9


def measure() -> dict:
    """``python_ns``: ns per step of the Python workload, the best of 100 tries, and
    ``python_median_ns`` their median (far apart when the host is busy); ``memory_gbps``: GB/s of a
    64 MiB copy, the best of 3."""
    tries = sorted(_python(5_000) for _ in range(100))
    size = 64 << 20
    source, dest = bytes(size), bytearray(size)
    dest[:] = source  # the pages of both exist before the timed copies
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        dest[:] = source
        best = min(best, time.perf_counter() - started)
    return {
        "python_ns": round(tries[0], 1),
        "python_median_ns": round(statistics.median(tries), 1),
        "memory_gbps": round(size / best / 1e9, 2),
    }


if __name__ == "__main__":
    print(measure())
