"""Instructions per idle ping of the scale app, counted by valgrind: ``python -m bench.idle_pings``.

One uvicorn process of the scale app (bench/apps/ssesup_scale_app.py: every stream follows its user's
channel and ``broadcast`` on ``Hub("redis://")``, with ssesup's defaults) runs under valgrind's
callgrind, its instrumentation off until the window, on a redis-server of its own. The compiled client
(bench/scale_client.c) opens ``--streams`` streams, which then stay idle: nothing is published, so all
the server does is ping them every ``--ping`` seconds (with the dead-peer check each ping brings), and
its loop-wide chores (the hub reader's health check every 5 s, the supervisor's report). After a
settling time the client's counters are reset and callgrind's zeroed; ``--window`` seconds later the
count is dumped and the client says how many pings it got. The figure is the server's instructions in
the window per ping received: the whole idle cost of a ping (the timer's wake-up, the callback, the
send, the event loop's share), where CPU seconds on this shared machine move by a third from one
minute to the next. Python's hash seed is fixed. It does not tell time (caches, the kernel's share of
a send are not in it): the idle-CPU figure of bench/scale.py stays the target's measure.

With ``--py-spy`` the server runs without valgrind and py-spy samples it over the window instead: the
functions with the most samples of their own and in their stack, in % of the samples (where the
instructions go, by Python function, which callgrind cannot name).

Owns: this measurement. Does not own the app, the client's build (bench/scale.py) or the redis-server
(bench/redis_hub.py). Needs ``valgrind`` (scripts/install-valgrind.sh), ``redis-server`` and ``cc``
(``py-spy`` for ``--py-spy``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.procstat import stop
from bench.scale import Child, build_client, summarize_stacks

ROOT = Path(__file__).resolve().parent.parent
APP = "bench.apps.ssesup_scale_app:app"


def _callgrind(pid: int, *args: str) -> None:
    control = shutil.which("callgrind_control")
    if control is None:
        raise SystemExit("bench.idle_pings needs callgrind_control (valgrind)")
    subprocess.run([control, *args, str(pid)], check=True, capture_output=True, timeout=120)


def _summary(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {path}")


def measure(
    streams: int, ping: float, window: float, settle: float, log_dir: Path, src: Path, py_spy: bool = False
) -> dict:
    from bench.redis_hub import RedisServer
    from bench.run import free_port

    tool = shutil.which("py-spy" if py_spy else "valgrind")
    if tool is None:
        raise SystemExit(f"bench.idle_pings needs {'py-spy' if py_spy else 'valgrind (scripts/install-valgrind.sh)'}")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "idle-pings.log"
    binary = build_client(log_dir)
    out = log_dir / f"idle-pings-{os.getpid()}.callgrind"
    with RedisServer(log) as redis:
        port = free_port()
        path = os.pathsep.join(p for p in (str(src), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, "PYTHONHASHSEED": "0", "BENCH_REDIS_URL": redis.url,
               "BENCH_SCALE_PING": str(ping)}  # fmt: skip
        under = [] if py_spy else [tool, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        command = [
            *under, sys.executable, "-m", "uvicorn", APP, "--loop", "uvloop", "--http", "httptools",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
            "--app-dir", str(ROOT), "--backlog", "4096",
        ]  # fmt: skip
        with open(log, "ab") as server_log:
            server = subprocess.Popen(command, env=env, cwd=ROOT, stdout=server_log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server under valgrind did not listen; see {log}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    time.sleep(0.5)
            argv = [str(binary), "--targets", f"127.0.0.1:{port}", "--src", "127.0.0.21", "--uids", f"0:{streams}",
                    "--concurrency", "64"]  # fmt: skip
            client = Child(argv, log)
            try:
                client.answer(30)
                client.ask("open", 600)
                time.sleep(settle)
                client.ask("reset")
                stacks = log_dir / f"idle-pings-{os.getpid()}.collapsed"
                if py_spy:
                    spy = subprocess.Popen(
                        [tool, "record", "-p", str(server.pid), "-f", "raw", "--nolineno", "-r", "200",
                         "-d", str(int(window)), "-o", str(stacks)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                else:
                    _callgrind(server.pid, "--instr=on")
                    _callgrind(server.pid, "-z")
                started = time.monotonic()
                if py_spy:
                    spy.wait(window + 60)
                else:
                    time.sleep(window)
                    _callgrind(server.pid, "-d")
                stats = client.ask("stats")
                elapsed = time.monotonic() - started
            finally:
                client.close()
        finally:
            stop(server, 10)
    pings = int(stats["pings"])
    found = {"streams": streams, "ping_s": ping, "window_s": round(elapsed, 2), "pings": pings,
             "pings_expected": round(streams * elapsed / ping)}  # fmt: skip
    if py_spy:
        return found | _profile(stacks)
    dumps = sorted(log_dir.glob(out.name + ".*"))
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump ({out}.*)")
    instructions = _summary(dumps[-1])
    for dump in (*dumps, out):
        dump.unlink(missing_ok=True)
    return found | {"instructions": instructions, "instructions_per_ping": instructions / pings if pings else None}


def _profile(path: Path) -> dict:
    """py-spy's raw stacks summed by function (self and anywhere) and module, the file then removed."""
    found = summarize_stacks(path, top=25, functions=True)
    path.unlink(missing_ok=True)
    return found


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_pings", description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--ping", type=float, default=3.0, help="the streams' ping interval, s")
    parser.add_argument("--window", type=float, default=30.0, help="seconds counted")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between the last admission and the window")
    parser.add_argument("--src", default=str(ROOT / "src"), help="the directory of the ssesup package to measure")
    parser.add_argument("--py-spy", action="store_true", help="sample with py-spy instead of counting")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    from bench.run import RAW

    found = measure(args.streams, args.ping, args.window, args.settle, RAW, Path(args.src), args.py_spy)
    if args.py_spy:
        print(f"{found['streams']} idle streams, ping {found['ping_s']:g} s: {found['pings']} pings, "
              f"{found['samples']} samples")  # fmt: skip
        for kind in ("self_pct", "inclusive_pct"):
            print(kind + ":")
            for name, pct in found[kind]:
                print(f"  {pct:5.1f}%  {name}")
        if args.json:
            Path(args.json).write_text(json.dumps(found, indent=1))
        return found
    print(
        f"{found['streams']} idle streams, ping {found['ping_s']:g} s: {found['pings']} pings in "
        f"{found['window_s']} s (expected {found['pings_expected']}), {found['instructions']:,} instructions, "
        f"{found['instructions_per_ping']:,.0f} per ping"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=1))
    return found


if __name__ == "__main__":
    main()
