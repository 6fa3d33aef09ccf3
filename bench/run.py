"""``python -m bench``: start each system's server in turn, measure it from this (client) process, report.

One server process per system and scenario (uvicorn, uvloop, httptools, one worker, loopback), started
fresh so no scenario inherits another's memory. Within a run the systems take turns per scenario
(everyone's fan-out, then everyone's idle streams, ...), each run starting one system further on, so a
slow stretch of the machine falls on both sides of a ratio; repeats do the same again. The bursts take
turns burst by burst (every system's servers up at once: the floor's first burst, ssesup's first, ...,
then everyone's second), so the bursts a ratio compares are seconds apart.
The report quotes the median over repeats, and ratios are taken within each run before their median is
quoted. The drain
scenario ends its server with SIGTERM and measures how it goes. The network scenarios (``deploy``,
``churn``: bench/network.py) run the server in a network namespace with stuck and vanished peers; they
need root and run only when named in ``--scenarios``, as does the hub's fan-out (``hub``: bench/hub.py,
in-process, each size in a fresh process: the floor system runs a bare queue per subscriber, ssesup
``Hub()``; the other systems have no hub and skip it), and the scenarios across processes on Redis
(``hub_resume``, ``hub_redis``: bench/redis_hub.py, a redis-server of their own; ssesup, and sse-starlette
with broadcaster in ``hub_redis``), and the hub's runs under load (``runs``: bench/runs.py, ssesup
only). The many-cores scenario (``cores``: bench/cores.py)
runs the floor and ssesup with one uvicorn worker and then two, unpinned, against client processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from bench import client, hub, probe, redis_hub, scale, storm
from bench import runs as run_load
from bench.client import Plan
from bench.procstat import stop

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RAW = RESULTS / "raw"
SCENARIOS = ("latency", "burst", "burst_fields", "burst_dict", "fanout", "idle", "drain", "cores")
BURSTS = ("burst", "burst_fields", "burst_dict")  # one server for these and the latency scenario
CORES_SYSTEMS = ("floor", "ssesup")
NETWORK_SCENARIOS = ("deploy", "churn")
# Run only when named in --scenarios.
NAMED_ONLY = (*NETWORK_SCENARIOS, "hub", "hub_resume", "hub_redis", "hub_storm", "runs", "scale")
# The order of a run: every system measures one group before any system measures the next (in the
# burst group, the systems take turns burst by burst: measure_bursts).
BURST_GROUP = ("latency", *BURSTS)
GROUPS = (BURST_GROUP, ("fanout",), ("idle",), ("drain",), ("cores",), ("hub",), ("hub_resume",),
          ("hub_redis",), ("hub_storm",), ("runs",), ("scale",), ("deploy",), ("churn",))  # fmt: skip
SERVER_CPU, CLIENT_CPU = 0, 1


@dataclass(frozen=True)
class System:
    key: str
    app: str
    label: str
    env: dict = field(default_factory=dict)
    only: tuple[str, ...] | None = None  # the scenarios it runs (all when None)


SYSTEMS = {
    s.key: s
    for s in (
        System("floor", "bench.apps.floor:app", "floor (StreamingResponse)"),
        System("ssesup", "bench.apps.ssesup_app:app", "ssesup"),
        System("sse-starlette", "bench.apps.sse_starlette_app:app", "sse-starlette"),
        System("fastapi", "bench.apps.fastapi_sse_app:app", "FastAPI fastapi.sse"),
        System("ssesup-bare", "bench.apps.ssesup_app:app", "ssesup ping=0 send_timeout=0", {"BENCH_SSESUP_BARE": "1"}),
        System("ssesup-hub", "bench.apps.ssesup_app:app", "ssesup, fan-out through Hub()",
               {"BENCH_SSESUP_HUB": "1"}, ("fanout", "idle")),
        System("ssesup-stdjson", "bench.apps.ssesup_app:app", "ssesup, JSON by the standard library (no orjson)",
               {"BENCH_SSESUP_JSON": "stdlib"}, ("burst_fields", "burst_dict")),
    )
}  # fmt: skip
DEFAULT_SYSTEMS = ("floor", "ssesup", "sse-starlette", "fastapi", "ssesup-stdjson")


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((client.HOST, 0))
        return sock.getsockname()[1]


class Server:
    """One uvicorn process serving one system (``workers`` worker processes), pinned to its own core
    when ``pin``; ``args`` are more uvicorn options, ``env`` more environment."""

    def __init__(
        self,
        system: System,
        plan: Plan,
        pin: bool,
        log: Path,
        src: Path,
        args: tuple[str, ...] = (),
        env: dict | None = None,
        workers: int = 1,
    ) -> None:
        self.system = system
        self.port = free_port()
        self.command = [
            sys.executable, "-m", "uvicorn", system.app,
            "--loop", "uvloop", "--http", "httptools", "--workers", str(workers),
            "--host", client.HOST, "--port", str(self.port),
            "--log-level", "warning", "--no-access-log", "--app-dir", str(ROOT), *args,
        ]  # fmt: skip
        # ``src`` first: the ssesup under test, whatever an editable install points at.
        path = os.pathsep.join(p for p in (str(src), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {**os.environ, "PYTHONPATH": path, "BENCH_SIZE": str(plan.size), "BENCH_TICK": str(plan.tick)}
        self.env |= system.env | (env or {})
        self.pin = pin
        self.log = log
        self.proc: subprocess.Popen | None = None

    def _preexec(self) -> None:
        raise_nofile()
        # Not pinned: every core (this process, the client, may be pinned to one).
        os.sched_setaffinity(0, {SERVER_CPU} if self.pin else range(os.cpu_count() or 1))

    def __enter__(self) -> Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=self._preexec
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.system.key} server exited with {self.proc.returncode}; see {self.log}")
            try:
                socket.create_connection((client.HOST, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"{self.system.key} server did not listen within 30 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        stop(self.proc, 3)


def run_client(coro) -> dict:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def snapshot_src(tag: str, tree: Path = ROOT / "src") -> tuple[Path, str]:
    """Copy ``tree``'s ``ssesup`` (this tree's ``src`` unless ``--src`` names another) aside, so that
    every server of the run imports the same code even while the tree is being edited; its path and a
    digest of its files."""
    dest = RAW / f"{tag}-src"
    shutil.copytree(tree / "ssesup", dest / "ssesup", ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for path in sorted((dest / "ssesup").rglob("*.py")):
        digest.update(path.relative_to(dest).as_posix().encode() + b"\0" + path.read_bytes())
    return dest, digest.hexdigest()[:12]


def measure(system: System, plan: Plan, scenarios: tuple[str, ...], pin: bool, tag: str, src: Path) -> dict:
    """Every scenario of one system but the bursts (:func:`measure_bursts`), each against a fresh
    server; an error is recorded, not raised."""
    if system.only is not None:
        scenarios = tuple(s for s in scenarios if s in system.only)
    out: dict = {}
    log = RAW / f"{tag}-{system.key}.log"

    def attempt(name: str, fn) -> None:
        started = time.perf_counter()
        try:
            out[name] = fn()
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}", "delivered": 0.0}
        out[name]["seconds"] = round(time.perf_counter() - started, 2)
        say(f"  {system.key:14} {name:8} {brief(name, out[name])}")

    if "fanout" in scenarios:

        def fanout() -> dict:
            with Server(system, plan, pin, log, src) as server:
                return run_client(
                    client.fanout(server.port, server.pid, plan.fanout_streams, plan.fanout_window, plan.tick,
                                  plan.concurrency)
                )  # fmt: skip

        attempt("fanout", fanout)
    if "idle" in scenarios:

        def idle() -> dict:
            with Server(system, plan, pin, log, src) as server:
                return run_client(
                    client.idle(server.port, server.pid, plan.idle_streams, plan.idle_hold, plan.idle_warm,
                                plan.settle, plan.cpu_window, plan.concurrency)
                )  # fmt: skip

        attempt("idle", idle)
    if "drain" in scenarios:

        def drain() -> dict:
            # uvicorn waits up to --timeout-graceful-shutdown for open connections, then cancels them;
            # ssesup is given a drain grace shorter than that, as docs/deploying.md asks.
            args = ("--timeout-graceful-shutdown", str(plan.drain_server_timeout))
            env = {"BENCH_DRAIN_GRACE": str(plan.drain_grace)}
            with Server(system, plan, pin, log, src, args, env) as server:
                assert server.proc is not None
                return run_client(
                    client.drain(server.port, server.proc, plan.drain_streams, plan.drain_every, plan.settle,
                                 plan.drain_cap, plan.size, plan.concurrency)
                )  # fmt: skip

        attempt("drain", drain)
    if "cores" in scenarios and system.key in CORES_SYSTEMS:

        def cores() -> dict:
            from bench import cores as load

            # Both servers up at once (an idle one costs nothing), measured in turns: 1, 2, 2, 1 workers.
            with (
                Server(system, plan, False, log, src, workers=1) as w1,
                Server(system, plan, False, log, src, workers=2) as w2,
            ):
                merged = load.alternate(
                    {1: (w1.port, w1.pid), 2: (w2.port, w2.pid)},
                    plan.cores_rounds,
                    kind=plan.cores_kind,
                    n=plan.cores_n,
                    streams=plan.cores_streams,
                    procs=plan.cores_procs,
                    warm=plan.cores_warm,
                    window=plan.cores_window,
                )
            out: dict = {"w1": merged[1], "w2": merged[2]}
            one, two = out["w1"], out["w2"]
            for key in ("events_per_s", "client_cpu_pct", "server_cpu_pct", "machine_cpu_pct", "machine_us_per_event"):
                out[f"{key}_1"], out[f"{key}_2"] = one[key], two[key]
            out["scaling"] = two["events_per_s"] / one["events_per_s"]
            out["delivered"] = 1.0
            return out

        attempt("cores", cores)
    if "hub" in scenarios and system.key in hub.SYSTEMS:
        attempt("hub", lambda: hub.scenario(system.key, src))
    if "hub_resume" in scenarios and system.key in redis_hub.RESUME_SYSTEMS:
        attempt("hub_resume", lambda: redis_hub.hub_resume(plan, log, src))
    if "hub_redis" in scenarios and system.key in redis_hub.SYSTEMS:
        attempt("hub_redis", lambda: redis_hub.hub_redis(system.key, plan, log, src))
    if "hub_storm" in scenarios and system.key in storm.SYSTEMS:
        attempt("hub_storm", lambda: storm.hub_storm(plan, log, src))
    if "runs" in scenarios and system.key in run_load.SYSTEMS:
        attempt("runs", lambda: run_load.scenario(plan, log, src))
    if "scale" in scenarios and system.key == "ssesup":
        attempt("scale", lambda: scale.scenario(plan, log, src))
    if "deploy" in scenarios or "churn" in scenarios:
        from bench import network

        path = os.pathsep.join(p for p in (str(src), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {"PYTHONPATH": path, "BENCH_SIZE": str(plan.size), "BENCH_TICK": str(plan.tick)} | system.env
        if "deploy" in scenarios:
            attempt(
                "deploy",
                lambda: network.deploy(system.app, env | {"BENCH_DRAIN_GRACE": str(plan.deploy_grace)}, log,
                                       plan.deploy_healthy, plan.deploy_stuck, plan.deploy_vanished, plan.deploy_cap),
            )  # fmt: skip
        if "churn" in scenarios:
            churn_env = env | ({"BENCH_SSESUP_SUPERVISOR": plan.churn_ssesup} if system.key == "ssesup" else {})
            attempt(
                "churn",
                lambda: network.churn(system.app, churn_env, log, plan.churn_rounds, plan.churn_per_round,
                                      plan.churn_settle),
            )  # fmt: skip
    return out


def measure_bursts(
    systems: list[System], plan: Plan, scenarios: tuple[str, ...], pin: bool, tag: str, src: Path
) -> dict[str, dict]:
    """Single-event latency and the bursts of every system, against one server per system, all of them
    up for the group (an idle server costs nothing), in turns: each system's stream of
    ``latency_n / latency_turns`` single events, ``latency_turns`` times (its figures are those of all its
    events); then one burst of each system after the other, ``burst_runs`` times, each system's median
    of its own. What a ratio compares is then seconds apart, not minutes. An error is recorded for its
    system, not raised."""
    out: dict[str, dict] = {system.key: {} for system in systems}
    wanted = {s.key: tuple(n for n in ("latency", *BURSTS) if n in scenarios and (s.only is None or n in s.only))
              for s in systems}  # fmt: skip
    servers: dict[str, Server] = {}  # started below, for the whole group

    def failed(system: System, exc: Exception, names: tuple[str, ...]) -> None:
        for name in names:
            if name not in out[system.key] or "error" not in out[system.key][name]:
                out[system.key][name] = {"error": f"{type(exc).__name__}: {exc}", "delivered": 0.0}
                say(f"  {system.key:14} {name:8} {brief(name, out[system.key][name])}")

    def in_turns(name: str, turns: int, one: Callable[[int], Any], merge: Callable[[list[dict]], dict]) -> None:
        """``one(port)`` of every system that measures ``name``, one after the other, ``turns`` times;
        each system's results merged into one; a system that fails is left out of the later turns."""
        parts: dict[str, list[dict]] = {}
        for turn in range(1, turns + 1):
            for system in systems:
                if system.key not in servers or name not in wanted[system.key] or name in out[system.key]:
                    continue  # not measured, or failed already
                try:
                    result = run_client(one(servers[system.key].port))
                except Exception as exc:
                    failed(system, exc, (name,))
                    continue
                parts.setdefault(system.key, []).append(result)
                say(f"  {system.key:14} {name:8} turn {turn}: {brief(name, result)}")
        for key, results in parts.items():
            if name not in out[key]:
                out[key][name] = merge(results)
                say(f"  {key:14} {name:8} {brief(name, out[key][name])}")

    with contextlib.ExitStack() as stack:
        for system in systems:
            if not wanted[system.key]:
                continue
            try:
                server = servers[system.key] = stack.enter_context(
                    Server(system, plan, pin, RAW / f"{tag}-{system.key}.log", src)
                )
                # Warm-up: import paths, first-request costs, the allocator.
                for kind in [k for k in wanted[system.key] if k in BURSTS] or ["burst"]:
                    run_client(client.burst(server.port, min(2000, plan.burst_n), plan.size, 1, kind=kind))
            except Exception as exc:
                servers.pop(system.key, None)
                failed(system, exc, wanted[system.key])
        per_turn = max(1, plan.latency_n // plan.latency_turns)

        def latency(port: int) -> Any:
            return client.latency(port, per_turn, plan.latency_every, plan.size)

        def latency_merged(parts: list[dict]) -> dict:
            samples = [ms for part in parts for ms in part["samples_ms"]]
            return client.latency_summary(samples, per_turn * plan.latency_turns)

        in_turns("latency", plan.latency_turns, latency, latency_merged)

        def burst(kind: str, port: int) -> Any:
            return client.burst(port, plan.burst_n, plan.size, 1, kind=kind, ids=kind != "burst")

        def burst_merged(kind: str, parts: list[dict]) -> dict:
            rates = [rate for part in parts for rate in part["runs"]]
            checked = sum(part["ids_checked"] for part in parts) if kind != "burst" else None
            return client.burst_summary(rates, plan.burst_n, plan.size, checked)

        for kind in BURSTS:
            in_turns(kind, plan.burst_runs, functools.partial(burst, kind), functools.partial(burst_merged, kind))
    return out


def one_run(
    systems: list[System], plan: Plan, scenarios: tuple[str, ...], pin: bool, tag: str, src: Path, turn: int
) -> dict:
    """Every system's results of one run, the systems taking turns per group of scenarios; ``turn``
    rotates which system goes first."""
    order = systems[turn % len(systems) :] + systems[: turn % len(systems)]
    run: dict = {s.key: {} for s in systems}
    for group in GROUPS:
        if not (wanted := tuple(name for name in group if name in scenarios)):
            continue
        if group == BURST_GROUP:
            for key, results in measure_bursts(order, plan, wanted, pin, tag, src).items():
                run[key] |= results
            continue
        for system in order:
            run[system.key] |= measure(system, plan, wanted, pin, tag, src)
    return run


def brief(name: str, r: dict) -> str:
    if "error" in r:
        return f"FAILED {r['error']}"
    if name in BURSTS:
        checked = f" ({r['ids_checked']:,} ids checked in order)" if "ids_checked" in r else ""
        return f"{r['events_per_s']:,.0f} events/s{checked}"
    if name == "cores":
        return (
            f"1 worker {r['events_per_s_1']:,.0f} events/s, 2 workers {r['events_per_s_2']:,.0f} events/s: "
            f"{r['scaling']:.2f}x; client CPU {r['client_cpu_pct_1']:.0f}% / {r['client_cpu_pct_2']:.0f}%, "
            f"server processes {r['w1']['server_process_cpu_pct']} / {r['w2']['server_process_cpu_pct']} %, "
            f"machine {r['w1']['machine_cpu_pct']:.0f}% / {r['w2']['machine_cpu_pct']:.0f}% "
            f"({r['w1']['machine_us_per_event']:.2f} / {r['w2']['machine_us_per_event']:.2f} us per event)"
        )
    if name == "latency":
        return f"p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms ({r['n']} events)"
    if name == "fanout":
        return (
            f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, cpu {r['cpu_pct']:.1f}%, "
            f"delivered {100 * r['delivered']:.2f}% of {r['expected']}"
        )
    if name == "idle":
        text = f"{r['kib_per_stream']:.1f} KiB/stream ({r['streams']} streams, {r['open_per_s']:,.0f} opened/s)"
        if "hold" in r:
            text += f"; {r['hold']} held: {r['hold_rss_mib']:.0f} MiB RSS, idle cpu {r['hold_cpu_pct']:.2f}%"
        return text
    if name == "drain":
        return (
            f"exit {r['exit_s']:.2f} s{' (killed)' if r['killed'] else ''}, clean end {100 * r['clean']:.1f}%, "
            f"farewell {100 * r['farewell']:.1f}%, ends {r['first_close_s']:.2f}-{r['last_close_s']:.2f} s "
            f"after SIGTERM (spread {r['close_spread_s']:.2f} s, at most {100 * r['peak_100ms']:.1f}% in 100 ms; "
            f"{r['streams']} streams)"
        )
    if name == "hub":
        text = "; ".join(
            f"{n // 1000}k: p50 {r[f'p50_ms_{n // 1000}k']:.1f} ms, p99 {r[f'p99_ms_{n // 1000}k']:.1f} ms, "
            f"{r[f'cpu_us_per_delivered_{n // 1000}k']:.2f} us CPU/delivered, "
            f"{r[f'kib_per_subscriber_{n // 1000}k']:.2f} KiB/subscriber"
            for n in r["sizes"]
        )
        for engine in ("memory", "redis"):
            if f"many_wall_s_{engine}" in r:
                text += (
                    f"; many channels ({r['many_streams']:,} streams x {r['many_channels']}, "
                    f"{r['many_events']} publishes) on {engine}: {r[f'many_wall_s_{engine}']:.2f} s, "
                    f"{r[f'many_cpu_s_{engine}']:.2f} s CPU"
                )
        return text
    if name == "hub_resume":
        return (
            f"received {r['received']:,} of {r['events']:,} numbers: {r['duplicates']} duplicates, "
            f"{r['missing']} missing, in order {'yes' if r['in_order'] else 'no'}, {r['gaps']} gap events, "
            f"delivered {100 * r['delivered']:.2f}%; first event from B {1000 * r['reconnect_s']:.0f} ms after "
            f"SIGTERM to A, A exited after {r['a_exit_s']:.2f} s; {r['publish_per_s']:,.0f} publishes/s "
            f"({r['through_a']:,} through A, {r['through_b']:,} through B)"
        )
    if name == "hub_storm":
        return (
            f"{r['clients']:,} clients drained from A onto B, {r['events']:,} events at {r['rate']:g}/s: delivered "
            f"{100 * r['delivered']:.2f}%, {r['duplicates']} duplicates, {r['missing']} missing, {r['gaps']} gaps, "
            f"{r['out_of_order']} out of order, {r['failed_publishes']} failed publishes; every client on B "
            f"{r['moved_s']:.2f} s after SIGTERM; Redis connections at most {r['redis_connections_peak']} "
            f"(two processes); {r['wall_s']:.1f} s in all"
        )
    if name == "hub_redis":
        text = (
            f"{r['streams']:,} streams on {r['processes']} processes, {r['rate']:g} publishes/s: "
            f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {r['cpu_us_per_delivered']:.1f} us server CPU "
            f"per delivered (servers {r['server_cpu_pct']:.0f}%, Redis {r['redis_cpu_pct']:.0f}% of a core), "
            f"delivered {100 * r['delivered']:.2f}% of {r['expected']:,}"
        )
        if "inprocess_p99_ms" in r:
            text += (
                f"; p99 {r['p99_vs_inprocess']:.2f}x the in-process hub's ({r['inprocess_p99_ms']:.1f} ms, no HTTP), "
                f"{r['p99_vs_memory']:.2f}x Hub() in memory over sockets ({r['memory_p99_ms']:.1f} ms, "
                f"{r['memory_cpu_us_per_delivered']:.1f} us CPU per delivered, 1 process)"
            )
        return text
    if name == "scale":
        return scale.brief(r)
    if name == "runs":
        return run_load.brief(r)
    if name == "deploy":
        return (
            f"exit {r['exit_s']:.2f} s{' (killed)' if r['killed'] else ''}, healthy farewell "
            f"{100 * r['farewell']:.0f}%, clean end {100 * r['clean']:.0f}%; socket fds {r['fds_before']} before, "
            f"{r['fds_open']} open, {r['fds_last']} at the end; send queue {r['send_q_open_kib']:.0f} -> "
            f"{r['send_q_last_kib']:.0f} KiB; {r['asgi_incomplete']} incomplete-response errors "
            f"({r['healthy']} healthy, {r['stuck']} stuck, {r['vanished']} vanished)"
        )
    if name == "churn":
        b, a = r["before"], r["after"]
        return (
            f"{r['streams']} streams in {r['churn_s']:.1f} s, then {r['settle_s']:.0f} s: "
            f"RSS {b['rss_kib'] / 1024:.1f} -> {a['rss_kib'] / 1024:.1f} MiB, socket fds {b['fds']} -> {a['fds']}, "
            f"tasks {b['tasks']} -> {a['tasks']}, "
            f"timers {b['timers']} -> {a['timers']}; {r['held_after']} connections held "
            f"({r['send_q_after_kib']:.0f} KiB queued)"
        )
    return json.dumps(r)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def failures(runs: list[dict]) -> list[str]:
    """Every scenario of every system and run that failed or did not deliver every event."""
    bad = []
    for i, run in enumerate(runs, 1):
        for key, scen in run.items():
            for name, r in scen.items():
                if "error" in r:
                    bad.append(f"run {i} {key} {name}: {r['error']}")
                elif r.get("delivered", 1.0) < 1.0:
                    bad.append(f"run {i} {key} {name}: delivered {100 * r['delivered']:.3f}% of the events")
    return bad


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma list of {', '.join(SCENARIOS + NAMED_ONLY)} (default: all but {', '.join(NAMED_ONLY)})",
    )
    p.add_argument(
        "--repeat", type=int, help="runs of every system; medians are quoted (default 3; 1 for --smoke or scale alone)"
    )
    p.add_argument("--smoke", action="store_true", help="seconds, few connections; exit 1 if any event is lost")
    p.add_argument("--burst-n", type=int, help="events per burst (50000)")
    p.add_argument("--latency-n", type=int, help="timed single events, one per 20 ms (150)")
    p.add_argument("--fanout-streams", type=int, help="fan-out subscribers (1000)")
    p.add_argument("--fanout-window", type=float, help="seconds of fan-out measured (30)")
    p.add_argument("--idle-streams", type=int, help="idle streams for the per-stream memory (8000)")
    p.add_argument("--idle-hold", type=int, help="idle streams held for total RSS and idle CPU (10000)")
    p.add_argument("--cpu-window", type=float, help="seconds of idle CPU with --idle-hold open (15)")
    p.add_argument("--drain-streams", type=int, help="streams open when the server gets SIGTERM (1000)")
    p.add_argument("--drain-grace", type=float, help="ssesup's drain_grace in the drain scenario (10)")
    p.add_argument(
        "--drain-server-timeout", type=int, help="uvicorn --timeout-graceful-shutdown in the drain scenario (30)"
    )
    p.add_argument("--drain-cap", type=float, help="seconds after SIGTERM at which the server is killed (45)")
    p.add_argument("--deploy-grace", type=float, help="ssesup's drain_grace in the deploy scenario (5)")
    p.add_argument(
        "--churn-ssesup", help="ssesup's Supervisor keyword arguments in the churn scenario, as JSON (short deadlines)"
    )
    p.add_argument("--hub-redis-rate", type=float, help="publishes/s in the hub_redis scenario (10)")
    p.add_argument(
        "--scale-max", type=int, help="the scale scenario's largest size: 10k, 25k, 50k, 100k streams up to it (100000)"
    )
    p.add_argument(
        "--scale-profile", action="store_true", default=None, help="py-spy one server process in each scale phase"
    )
    p.add_argument("--src", help="the directory holding the ssesup package to measure (default: this tree's src)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the server to CPU 0 and the client to CPU 1")
    p.add_argument("--report", default=None, help="Markdown file to write (default docs/benchmarks.md; none in smoke)")
    p.add_argument(
        "--no-report", action="store_true", help="write no Markdown, PNG or latest.json (the last report's stays)"
    )
    p.add_argument(
        "--json", default=None, help="summary JSON (default: bench/results/latest.json with the report, else none)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    systems = [SYSTEMS[k.strip()] for k in args.systems.split(",") if k.strip()]
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    if unknown := set(scenarios) - {name for group in GROUPS for name in group}:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}")
    plan = Plan.smoke() if args.smoke else Plan()
    for name in ("burst_n", "latency_n", "fanout_streams", "fanout_window", "idle_streams", "idle_hold", "cpu_window",
                 "drain_streams", "drain_grace", "drain_server_timeout", "drain_cap", "deploy_grace",
                 "churn_ssesup", "hub_redis_rate", "scale_max", "scale_profile"):  # fmt: skip
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    repeat = args.repeat or (1 if args.smoke or scenarios == ("scale",) else 3)
    raise_nofile()
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {CLIENT_CPU})
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    started = dt.datetime.now(dt.UTC)
    tag = started.strftime("%Y%m%dT%H%M%S")
    say(f"{command}: {len(systems)} systems x {repeat} runs, scenarios {', '.join(scenarios)}, pinned={pin}")
    from bench import report  # matplotlib only when a chart is drawn

    mach = report.machine()
    src, mach["src_digest"] = snapshot_src(tag, Path(args.src) if args.src else ROOT / "src")
    mach["probe_start"] = probe.measure()
    say(f"machine probe: {mach['probe_start']}")
    runs: list[dict] = []
    for i in range(repeat):
        say(f"run {i + 1}/{repeat}")
        runs.append(one_run(systems, plan, scenarios, pin, f"{tag}-r{i + 1}", src, i))
    mach["probe_end"] = probe.measure()
    say(f"machine probe: {mach['probe_end']}")
    result = {
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "minutes": round((dt.datetime.now(dt.UTC) - started).total_seconds() / 60, 1),
        "pinned": pin,
        "machine": mach,
        "plan": asdict(plan),
        "systems": {s.key: s.label for s in systems},
        "scenarios": list(scenarios),
        "runs": runs,
    }
    RAW.mkdir(parents=True, exist_ok=True)
    (RAW / f"{tag}.json").write_text(json.dumps(result, indent=1))
    bad = failures(runs)
    summary = report.summarize(result)
    say(report.console(summary))
    # latest.json is the summary of the run the report shows: a run without a report (or a smoke run)
    # writes a summary only where --json says.
    if not args.smoke and not args.no_report:
        md = Path(args.report or ROOT / "docs" / "benchmarks.md")
        if set(scenarios) - {"scale"}:
            Path(args.json or RESULTS / "latest.json").write_text(json.dumps(summary, indent=1) + "\n")
            report.write(summary, md)
            say(f"wrote {md} and {md.with_suffix('.png')}")
        if "scale" in scenarios:
            # Its own block and summary: a scale run leaves the other scenarios' results as they are.
            (RESULTS / "scale.json").write_text(json.dumps(summary, indent=1) + "\n")
            report.write_scale(summary, md)
            say(f"wrote the Scale results of {md} and {RESULTS / 'scale.json'}")
    elif args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    if bad:
        say("FAILED:\n  " + "\n  ".join(bad))
        return 1
    say("all systems delivered every event")
    return 0
