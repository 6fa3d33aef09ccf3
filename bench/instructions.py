"""Instructions per delivered event of the hub scenario, counted by valgrind: a figure that does not
move with the machine.

Owns: running ``bench.hub``'s one-run child (the floor's bare queues, or ``Hub()``) under valgrind's
callgrind, twice, with ``FEW`` and ``MANY`` timed publishes, and reporting the difference of the two
instruction counts per delivery (so the start-up, the subscribing and the warm-up cancel out). Python's
hash seed is fixed, so a count repeats within about 0.1% from run to run, where CPU seconds on this
machine move by 30% from one minute to the next: it tells whether a change to the delivery path does
less work. It does not tell time (caches, the garbage collector's pauses and the loop's waits are not
in it): the targets stay those of ``bench/hub.py``'s CPU and p99. Does not own the scenario itself
(``bench/hub.py``).

``python -m bench.instructions [--subscribers 1000] [--src DIR ...]`` (needs ``valgrind``:
``scripts/install-valgrind.sh``); each ``--src`` is the directory of an ssesup package to count, e.g. a
worktree's ``src`` (without one: the ssesup that ``import ssesup`` finds).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

from bench.hub import ROOT, child

FEW, MANY = 20, 60  # timed publishes of the two runs
_COLLECTED = re.compile(r"Collected : (\d+)")


def instructions(system: str, subscribers: int, events: int, src: Path | None = None) -> int:
    """Instructions of one run of ``bench.hub --child system`` under callgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("bench.instructions needs valgrind (apt-get install valgrind)")
    command, env = child(system, subscribers, events, src)
    return callgrind_count(valgrind, command, env, timeout=1800)


def callgrind_count(valgrind: str, command: list[str], env: dict[str, str], timeout: float) -> int:
    """The instructions ``command`` ran under callgrind (its summary line), Python's hash seed fixed."""
    done = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
        env={**env, "PYTHONHASHSEED": "0"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output: {done.stderr[-500:]!r}")
    return int(found.group(1))


def per_delivery(system: str, subscribers: int, src: Path | None = None) -> float:
    """Instructions per delivered event: the runs of MANY and FEW publishes, their difference per delivery."""
    few = instructions(system, subscribers, FEW, src)
    many = instructions(system, subscribers, MANY, src)
    return (many - few) / ((MANY - FEW) * subscribers)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--src", type=Path, action="append", default=[], help="an ssesup package's directory")
    args = parser.parse_args(argv)
    floor = per_delivery("floor", args.subscribers)
    print(f"floor: {floor:,.0f} instructions per delivered event")
    counted = {"floor": floor}
    for index, src in enumerate(args.src or [None]):
        name = f"hub {index + 1} ({src})" if src else "hub"
        count = counted[name] = per_delivery("hub", args.subscribers, src)
        print(f"{name}: {count:,.0f} instructions per delivered event, {count / floor:.3f}x the floor")
    return counted


if __name__ == "__main__":
    main()
