"""The scale scenario (issue 28): many streams on one box, across worker processes sharing one Redis.

``python -m bench --scenarios scale [--scale-max N]`` runs, at each size of 10k, 25k, 50k and 100k
streams up to ``--scale-max`` (``--scale-max`` itself when it is none of them), on servers started fresh
for the size:

* **servers**: ``K`` uvicorn processes (uvloop, httptools, one worker each, not pinned, each on a port of
  its own, ``--backlog 4096``), at most ``PER_WORKER`` streams each, so that after one is drained the
  others still hold every stream within the file limit; all share ``Hub("redis://...")`` on a
  redis-server of the run's own (bench/redis_hub.py ``RedisServer``). Their app,
  bench/apps/ssesup_scale_app.py, streams ``hub.stream(request, f"user:{uid}", "broadcast", ping=15)``.
* **clients**: ``ceil(N / PER_CLIENT)`` processes of the compiled client (bench/scale_client.c, built by
  :func:`build_client` with the C compiler), each from a source address of its own in 127.0.0.0/8,
  holding a range of uids; uid ``u`` goes to server ``u % K``.
* **profiles** (``--scale-profile``): py-spy samples the last server process in each phase but the storm
  (:class:`Profile`); the stacks go to bench/results/raw/, a summary to the results.
* **publisher**: one process (``python -m bench.scale --publish``) publishing through its own
  ``Hub(redis_url)``: timed events ``"<time, us> b <seq>"`` on ``broadcast`` and ``"<time, us> u <seq>"``
  on ``user:<uid>``, each channel numbered from 1, the k-th user event to uid ``k * stride % N``.

Phases, in order, at each size: *connect* (every client opens all its streams at once, at most
``concurrency`` being admitted per client process; admitted per second from the first connect to the
last admission), *idle* (RSS of every server process; CPU of every process over ``idle_window`` s with
pings every 15 s), *fan-out* (one publish per second to ``broadcast``, for ``fanout_seconds``:
latency of every delivery, share delivered, deliveries per second, CPU per delivered event), *per-user*
(``user_rate`` publishes/s to user channels for ``user_window`` s: latency, share delivered) and, at the
largest size only, the *storm* (publishing goes on, broadcast once a second and ``storm_user_rate`` user
events per second, while server 0 gets SIGTERM: its streams end with ssesup's farewell, reconnect after
their ``retry:`` to the other servers with ``Last-Event-ID``; counted: 5xx answers, time from SIGTERM to
the last stream back, how late a stream came back past its own ``retry:``, Redis's connected clients,
sampled every 0.2 s). At the end of each size every stream's numbers are checked against what was
published: each channel's events from 1 to the last published, each once, no gap event.

The kernel settings the run needs are raised for its duration and restored after (:class:`Sysctls`); the
file limit of every process is raised to its hard limit (the servers' and clients' own code).

Owns: the client's build, the phases and their figures, the publisher. Does not own uvicorn's command
line (bench/run.py ``Server``), the redis-server (bench/redis_hub.py), or the report (bench/report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.procstat import cpu_seconds, rss_kib, stop

if TYPE_CHECKING:
    from bench.client import Plan

ROOT = Path(__file__).resolve().parent.parent
CLIENT_SOURCE = ROOT / "bench" / "scale_client.c"
SIZES = (10_000, 25_000, 50_000, 100_000)
PER_WORKER = 12_500  # streams per server process at most (before a drain moves one server's streams)
PER_CLIENT = 15_000  # streams per client process at most
FILES_SPARE = 1_000  # files a process keeps beyond its streams (Redis, listeners, logs)
WARM_PER_WORKER = 50  # streams opened and closed on each server before its memory is read
BUCKET_MS = 0.1  # the client's latency histogram: 100 us buckets
APP = "bench.apps.ssesup_scale_app:app"


def label(n: int) -> str:
    """A size as the report's keys carry it: 10k, 2k, 2.5k."""
    return f"{n / 1000:g}k"


def sizes_for(scale_max: int) -> list[int]:
    sizes = [n for n in SIZES if n <= scale_max]
    if scale_max not in sizes:
        sizes.append(scale_max)
    return sizes


def layout(n: int, file_limit: int) -> tuple[int, int]:
    """Server processes and client processes for ``n`` streams: each server at most ``PER_WORKER`` (and,
    once one is drained, ``n / (K - 1)`` within its file limit), each client at most ``PER_CLIENT``."""
    per_process = file_limit - FILES_SPARE
    workers = max(2, math.ceil(n / PER_WORKER))
    while math.ceil(n / (workers - 1)) > per_process:
        workers += 1
    clients = max(1, math.ceil(n / min(PER_CLIENT, per_process)))
    return workers, clients


# -- the compiled client ---------------------------------------------------------------------------


def build_client(out_dir: Path) -> Path:
    """bench/scale_client.c compiled (``$CC``, else cc) into ``out_dir``, once per version of the source."""
    source = CLIENT_SOURCE.read_bytes()
    binary = out_dir / f"scale_client-{hashlib.sha256(source).hexdigest()[:12]}"
    if binary.exists():
        return binary
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("the scale scenario builds its client with a C compiler: none found (cc, gcc, $CC)")
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".tmp")
    subprocess.run([compiler, "-O2", "-Wall", "-o", str(partial), str(CLIENT_SOURCE)], check=True)
    partial.rename(binary)
    return binary


class Child:
    """A process the bench speaks to in lines: commands on its stdin, one JSON answer per line."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None) -> None:
        self.log = open(log, "ab")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=ROOT,
            preexec_fn=_all_cores_and_files,
        )  # fmt: skip
        self.buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float) -> dict:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"no answer from {self.proc.args[0]} (pid {self.pid}) within {timeout:g} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"{self.proc.args[0]} (pid {self.pid}) exited with {self.proc.wait()}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def ask(self, command: str, timeout: float = 30.0) -> dict:
        self.send(command)
        return self.answer(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send("quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                stop(self.proc, 2)
        self.log.close()


def _all_cores_and_files() -> None:
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ask_all(children: list[Child], command: str, timeout: float) -> list[dict]:
    for child in children:
        child.send(command)
    deadline = time.monotonic() + timeout
    return [child.answer(max(0.1, deadline - time.monotonic())) for child in children]


# -- the kernel's settings -------------------------------------------------------------------------


def kernel_settings(n: int) -> dict[str, str]:
    """What the run raises for ``n`` streams (both ends on this machine): never lowered (see
    docs/deploying.md for a production box). ``tcp_mem`` is in pages: 2 pages per socket under
    pressure, twice the sockets here."""
    sockets = 2 * n
    return {
        "net.core.somaxconn": "4096",
        "net.ipv4.tcp_max_syn_backlog": "8192",
        "net.core.netdev_max_backlog": "16384",
        "fs.file-max": str(4 * sockets + 65536),
        "net.ipv4.tcp_mem": f"{sockets} {2 * sockets} {3 * sockets}",
    }


class Sysctls:
    """Raise ``settings`` (each value only upwards, tuple by tuple) for the run and restore the values
    found; what was found, set or refused is in ``record``."""

    def __init__(self, settings: dict[str, str]) -> None:
        self.settings = settings
        self.record: dict[str, dict] = {}
        self._restore: dict[str, str] = {}

    @staticmethod
    def _path(name: str) -> Path:
        return Path("/proc/sys") / name.replace(".", "/")

    def __enter__(self) -> Sysctls:
        for name, wanted in self.settings.items():
            path = self._path(name)
            try:
                found = " ".join(path.read_text().split())
            except OSError as exc:
                self.record[name] = {"error": str(exc)}
                continue
            want = [int(part) for part in wanted.split()]
            have = [int(part) for part in found.split()]
            value = " ".join(str(max(a, b)) for a, b in zip(want, have, strict=True))
            entry = {"found": found, "wanted": wanted, "set": value}
            if value != found:
                try:
                    path.write_text(value)
                    self._restore[name] = found
                except OSError as exc:
                    entry |= {"set": found, "error": str(exc)}
            self.record[name] = entry
        return self

    def __exit__(self, *exc: object) -> None:
        for name, value in self._restore.items():
            with contextlib.suppress(OSError):
                self._path(name).write_text(value)


# -- Redis -----------------------------------------------------------------------------------------


def redis_info(port: int) -> dict[str, str]:
    """``INFO clients`` and ``INFO memory`` of the redis-server on ``port``, as a dict."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        out = {}
        for section in ("clients", "memory"):
            sock.sendall(f"INFO {section}\r\n".encode())
            data = b""
            while True:
                data += sock.recv(65536)
                head, _, body = data.partition(b"\r\n")
                if head.startswith(b"$") and len(body) >= int(head[1:]) + 2:
                    break
            for line in body.decode().splitlines():
                key, sep, value = line.partition(":")
                if sep:
                    out[key] = value
        return out


def kernel_slab_kib() -> int:
    """The kernel's slab memory (``Slab`` of /proc/meminfo: sockets, files, epoll entries), KiB."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    return 0


# -- the figures -----------------------------------------------------------------------------------


def merge_hist(answers: list[dict], key: str) -> dict[int, int]:
    merged: dict[int, int] = {}
    for answer in answers:
        for bucket, count in answer[key]:
            merged[bucket] = merged.get(bucket, 0) + count
    return merged


def hist_quantile(hist: dict[int, int], q: float) -> float:
    """The ``q`` quantile of a histogram of 100 us buckets, in ms (the bucket's upper edge)."""
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return (bucket + 1) * BUCKET_MS
    return (max(hist) + 1) * BUCKET_MS


class Processes:
    """The CPU seconds of groups of processes, read together."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.last: dict[int, float] = {}  # a process that exited counts with its last reading

    def cpu(self) -> dict[str, float]:
        out = {}
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids:
                with contextlib.suppress(OSError):
                    self.last[pid] = cpu_seconds(pid)
                total += self.last.get(pid, 0.0)
            out[name] = total
        return out | {"_t": time.perf_counter()}


def cpu_pct(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    elapsed = after["_t"] - before["_t"]
    return {name: 100 * (after[name] - before[name]) / elapsed for name in before if name != "_t"}


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before if name != "_t"}


# -- where the time goes -----------------------------------------------------------------------------


class Profile:
    """py-spy sampling one server process (``plan.scale_profile``) from :meth:`start` to :meth:`stop`:
    its stacks (collapsed, one file per phase) and a summary: the functions with the most samples of
    their own, and the modules with the most samples anywhere in the stack (both in % of the samples)."""

    def __init__(self, pid: int | None, prefix: Path) -> None:
        self.pid = pid
        self.prefix = prefix
        self.proc: subprocess.Popen | None = None
        self.path: Path | None = None

    def start(self, phase: str) -> None:
        if self.pid is None or not (program := shutil.which("py-spy")):
            return
        self.path = self.prefix.with_name(f"{self.prefix.name}-{phase}.collapsed")
        argv = [program, "record", "-p", str(self.pid), "-f", "raw", "--nolineno", "-r", "100", "-o", str(self.path)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> dict | None:
        if self.proc is None or self.path is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(60)
        self.proc = None
        return summarize_stacks(self.path) if self.path.exists() else None


def summarize_stacks(path: Path, top: int = 12, functions: bool = False) -> dict:
    """Self and inclusive samples of py-spy's collapsed stacks (``frame;frame;... count``): by function
    (self), by module (anywhere in the stack), and with ``functions`` by function anywhere too."""
    own: dict[str, int] = {}
    anywhere: dict[str, int] = {}
    modules: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + count
        if functions:
            for frame in set(frames):
                anywhere[frame] = anywhere.get(frame, 0) + count
        seen = set()
        for frame in frames:
            module = frame.rpartition("(")[2].rstrip(")")
            for marker in ("site-packages/", "/src/", "/lib/python3"):
                if marker in module:
                    module = module.split(marker, 1)[1]
                    break
            if module not in seen:
                seen.add(module)
                modules[module] = modules.get(module, 0) + count
    share = 100 / max(1, total)
    modules = {name: n for name, n in modules.items() if n < total}  # not the frames under every stack

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        return [(name, round(n * share, 1)) for name, n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]

    found = {"samples": total, "self_pct": ranked(own), "modules_pct": ranked(modules)}
    if functions:
        found["inclusive_pct"] = ranked(anywhere)
    return found


# -- one size ----------------------------------------------------------------------------------------


def run_size(n: int, plan: Plan, binary: Path, log: Path, src: Path, storm: bool) -> dict:
    """Every phase at ``n`` streams on servers of their own (see the module's docstring)."""
    from bench.redis_hub import RedisServer
    from bench.run import Server, System

    file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    workers, nclients = layout(n, file_limit)
    out: dict = {"streams": n, "workers": workers, "client_processes": nclients}
    env = {"BENCH_SCALE_PING": str(plan.scale_ping)}
    if plan.scale_drain_grace:
        env["BENCH_DRAIN_GRACE"] = str(plan.scale_drain_grace)
    if plan.scale_reconnect:
        env["BENCH_SCALE_RECONNECT"] = plan.scale_reconnect
    args = ("--backlog", "4096", "--timeout-graceful-shutdown", str(int(plan.scale_drain_grace or 20) + 10))
    system = System("ssesup", APP, "ssesup at scale")
    with RedisServer(log) as redis, contextlib.ExitStack() as stack:
        env["BENCH_REDIS_URL"] = redis.url
        servers = [stack.enter_context(Server(system, plan, False, log, src, args, env)) for _ in range(workers)]
        targets = ",".join(f"127.0.0.1:{server.port}" for server in servers)
        path = os.pathsep.join(p for p in (str(src), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        publisher = Child(
            [sys.executable, "-m", "bench.scale", "--publish", redis.url, "--users", str(n), "--size", str(plan.size)],
            log, {**os.environ, "PYTHONPATH": path},
        )  # fmt: skip
        stack.callback(publisher.close)
        publisher.answer(30)

        def client(index: int, first: int, count: int) -> Child:
            argv = [str(binary), "--targets", targets, "--src", f"127.0.0.{10 + index}", "--uids", f"{first}:{count}",
                    "--concurrency", str(plan.scale_concurrency)]  # fmt: skip
            child = Child(argv, log)
            stack.callback(child.close)
            child.answer(10)
            return child

        # Warm-up: import paths, first requests, each worker's Redis connections; then the baseline.
        warm = client(200, n, WARM_PER_WORKER * workers)
        warm.ask("open", 60)
        warm.close()
        time.sleep(plan.settle)
        pids = [server.pid for server in servers]
        base_rss = sum(rss_kib(pid) for pid in pids)
        base_redis = int(redis_info(redis.port)["used_memory_rss"]) / 1024
        share = math.ceil(n / nclients)
        clients = [client(i, i * share, min(share, n - i * share)) for i in range(nclients)]
        procs = Processes({"servers": pids, "redis": [redis.pid], "clients": [c.pid for c in clients],
                           "publisher": [publisher.pid]})  # fmt: skip
        profile = Profile(pids[-1] if plan.scale_profile else None, log.parent / f"{log.stem}-scale-{label(n)}")
        profiles: dict = {}

        # -- connect from cold
        slab = kernel_slab_kib()
        before = procs.cpu()
        profile.start("connect")
        opened = ask_all(clients, "open", 60 + n / 100)
        profiles["connect"] = profile.stop()
        after = procs.cpu()
        started, last = min(a["started"] for a in opened), max(a["last"] for a in opened)
        out["connect_s"] = last - started
        out["connect_per_s"] = n / (last - started)
        out["connect_cpu_pct"] = cpu_pct(before, after)
        time.sleep(plan.settle)
        # Both ends of every stream are on this machine: the kernel's memory per stream is for two sockets.
        out["kernel_kib_per_stream"] = (kernel_slab_kib() - slab) / n

        # -- idle
        rss = {pid: rss_kib(pid) for pid in pids}
        info = redis_info(redis.port)
        out["server_rss_mib"] = sum(rss.values()) / 1024
        out["rss_kib_per_stream"] = sum(rss.values()) / n
        out["rss_added_kib_per_stream"] = (sum(rss.values()) - base_rss) / n
        out["server_base_rss_mib"] = base_rss / 1024
        out["worker_rss_mib"] = sorted(round(v / 1024, 1) for v in rss.values())
        out["redis_rss_mib"] = int(info["used_memory_rss"]) / 1024 / 1024
        out["redis_added_kib_per_stream"] = (int(info["used_memory_rss"]) / 1024 - base_redis) / n
        out["redis_clients_idle"] = int(info["connected_clients"])
        client_rss = sum(rss_kib(c.pid) for c in clients)
        out["client_rss_kib_per_stream"] = client_rss / n
        ask_all(clients, "reset", 30)
        before = procs.cpu()
        profile.start("idle")
        time.sleep(plan.scale_idle_window)
        after = procs.cpu()
        profiles["idle"] = profile.stop()
        idle = cpu_pct(before, after)
        out["idle_cpu"] = idle
        out["idle_cpu_pct"] = idle["servers"] + idle["redis"]
        out["idle_cpu_pct_per_1k"] = out["idle_cpu_pct"] / (n / 1000)
        out["idle_all_cpu_pct"] = sum(idle.values())
        stats = ask_all(clients, "stats", 30)
        out["idle_pings"] = sum(s["pings"] for s in stats)
        if (open_now := sum(s["admitted"] for s in stats)) != n:
            raise RuntimeError(f"{n - open_now} streams were not open at the end of the idle phase")

        # -- broadcast fan-out, 1 publish/s
        profile.start("fanout")
        fan = _phase(clients, publisher, procs, "b", n, plan.scale_fanout_seconds, 1.0, 0.0)
        profiles["fanout"] = profile.stop()
        out |= {f"fanout_{key}": value for key, value in fan.items()}
        out["deliveries_per_s"] = fan["deliveries_per_s"]
        out["cpu_us_per_delivered"] = fan["cpu_us_per_delivered"]

        # -- per-user channels
        profile.start("user")
        user = _phase(clients, publisher, procs, "u", n, plan.scale_user_window, 0.0, plan.scale_user_rate)
        profiles["user"] = profile.stop()
        if plan.scale_profile:
            out["profiles"] = profiles
        out |= {f"user_{key}": value for key, value in user.items()}

        if storm:
            out |= _storm(clients, publisher, procs, servers, redis, n, plan)

        # -- every stream's numbers against what was published
        out |= _verify(clients, publisher, log.parent / f"{log.stem}-scale-{label(n)}")
    return out


def _phase(clients: list[Child], publisher: Child, procs: Processes, kind: str, n: int, seconds: float,
           broadcast_rate: float, user_rate: float) -> dict:  # fmt: skip
    """Publish for ``seconds`` (broadcast and user events per second), wait until every event of
    ``kind`` has arrived (or 30 s), and the latency, delivery and CPU of what this phase delivered."""
    ask_all(clients, "reset", 30)
    before = procs.cpu()
    published = publisher.ask(f"run {seconds} {broadcast_rate} {user_rate}", seconds + 60)
    expected = published["broadcast"] * n if kind == "b" else published["user"]
    deadline = time.monotonic() + 30
    while True:
        stats = ask_all(clients, "stats", 30)
        got = sum(s[kind] for s in stats)
        if got >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    after = procs.cpu()
    used = cpu_used(before, after)
    hist = merge_hist(stats, f"hist_{kind}")
    out = {
        "published": published["broadcast"] if kind == "b" else published["user"],
        "publish_per_s": published["broadcast" if kind == "b" else "user"] / published["seconds"],
        "publisher_late_max_ms": published["late_max_ms"],
        "p50_ms": hist_quantile(hist, 0.5),
        "p99_ms": hist_quantile(hist, 0.99),
        "max_ms": hist_quantile(hist, 1.0),
        "delivered": got / expected if expected else float("nan"),
        "events": got,
        "expected": expected,
        "cpu_us_per_delivered": 1e6 * (used["servers"] + used["redis"]) / max(1, got),
        "server_cpu_us_per_delivered": 1e6 * used["servers"] / max(1, got),
        "client_cpu_us_per_delivered": 1e6 * used["clients"] / max(1, got),
        "cpu_pct": cpu_pct(before, after),
    }
    if kind == "b":
        # Every publish's deliveries, from the first publish until the slowest delivery of the last one.
        out["deliveries_per_s"] = got / (published["seconds"] - 1 / broadcast_rate + out["max_ms"] / 1000)
    return out


def _storm(clients: list[Child], publisher: Child, procs: Processes, servers: list, redis, n: int,
           plan: Plan) -> dict:  # fmt: skip
    """Server 0 drained (SIGTERM) while publishing goes on; its streams come back on the others."""
    seconds = plan.scale_storm_seconds
    moved = len(range(0, n, len(servers)))  # uids u with u % K == 0
    ask_all(clients, "reset", 30)
    before = procs.cpu()
    publisher.send(f"run {seconds} 1 {plan.scale_storm_user_rate}")
    time.sleep(min(1.5, seconds / 4))
    drained = servers[0].proc
    signalled, signalled_wall = time.perf_counter(), time.time()
    drained.send_signal(signal.SIGTERM)
    peak_redis = idle_redis = int(redis_info(redis.port)["connected_clients"])
    exit_s = None
    while True:
        ready = select.select([publisher.proc.stdout], [], [], 0.2)[0] or publisher.buffer
        with contextlib.suppress(OSError, KeyError, ValueError):
            peak_redis = max(peak_redis, int(redis_info(redis.port)["connected_clients"]))
        if exit_s is None and drained.poll() is not None:
            exit_s = time.perf_counter() - signalled
        if ready:
            break
    published = publisher.answer(seconds + 60)
    deadline = time.monotonic() + min(600, 60 + moved / 20)  # a slow return is measured, not cut short
    while True:
        stats = ask_all(clients, "stats", 30)
        back = sum(s["admitted"] for s in stats) == n
        if (back and sum(s["u"] for s in stats) >= published["user"]) or time.monotonic() > deadline:
            break
        with contextlib.suppress(OSError, KeyError, ValueError):
            peak_redis = max(peak_redis, int(redis_info(redis.port)["connected_clients"]))
        time.sleep(0.2)
    if exit_s is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            drained.wait(30)
        exit_s = time.perf_counter() - signalled if drained.poll() is not None else float("nan")
    after = procs.cpu()
    hist_b, hist_u = merge_hist(stats, "hist_b"), merge_hist(stats, "hist_u")
    readmitted = sum(s["readmitted"] for s in stats)
    return {
        "storm_moved": moved,
        "storm_readmitted": readmitted,
        "storm_all_back": back,
        "storm_back_s": max(s["last_admit"] for s in stats) - signalled_wall,
        "storm_late_max_s": max(s["late_max_ms"] for s in stats) / 1000,
        "storm_back_max_s": max(s["back_max_ms"] for s in stats) / 1000,
        "storm_drained_exit_s": exit_s,
        "storm_5xx": sum(s["status_5xx"] for s in stats),
        "storm_4xx": sum(s["status_4xx"] for s in stats),
        "storm_refused": sum(s["refused"] for s in stats),
        "storm_clean_ends": sum(s["clean_ends"] for s in stats),
        "storm_cut_ends": sum(s["cut_ends"] for s in stats),
        "storm_redis_clients_before": idle_redis,
        "storm_redis_clients_peak": peak_redis,
        "storm_published_broadcast": published["broadcast"],
        "storm_published_user": published["user"],
        "storm_p99_ms": hist_quantile({**hist_b, **{k: hist_b.get(k, 0) + v for k, v in hist_u.items()}}, 0.99),
        "storm_cpu_pct": cpu_pct(before, after),
    }


def _verify(clients: list[Child], publisher: Child, prefix: Path) -> dict:
    """Every stream's numbers against what was published: each channel from 1 to its last, once."""
    expected_path = prefix.with_name(prefix.name + "-published.json")
    publisher.ask(f"dump {expected_path}", 30)
    published = json.loads(expected_path.read_text())
    total_b, users = published["broadcast"], published["users"]
    wrong: list[str] = []
    streams = dups = missing = gaps = reconnects = 0
    for index, child in enumerate(clients):
        path = prefix.with_name(f"{prefix.name}-client{index}.txt")
        child.ask(f"dump {path}", 60)
        for line in path.read_text().splitlines():
            uid, first_b, last_b, n_b, first_u, last_u, n_u, d, m, g, r = map(int, line.split())
            streams += 1
            dups, missing, gaps, reconnects = dups + d, missing + m, gaps + g, reconnects + r
            want_u = users[uid]
            good_b = n_b == total_b and last_b == total_b and (first_b == 1 or total_b == 0)
            good_u = n_u == want_u and last_u == want_u and (first_u == 1 or want_u == 0)
            if not (good_b and good_u and not d and not m and not g) and len(wrong) < 10:
                wrong.append(
                    f"uid {uid}: broadcast {n_b} ({first_b}-{last_b}) of {total_b}, "
                    f"user {n_u} ({first_u}-{last_u}) of {want_u}, {d} dups, {m} missing, {g} gaps"
                )
    out = {
        "verified_streams": streams,
        "published_broadcast": total_b,
        "published_user": sum(users),
        "duplicates": dups,
        "missing": missing,
        "gap_events": gaps,
        "reconnects": reconnects,
        "exactly_once": not wrong,
    }
    if wrong:
        out["wrong"] = wrong
    return out


# -- the scenario ------------------------------------------------------------------------------------


def scenario(plan: Plan, log: Path, src: Path) -> dict:
    """Every size up to ``plan.scale_max``; the figures flat (``rss_kib_per_stream_10k``, ...), those of
    the largest size also without a suffix, the growth from the smallest size to the largest, and what
    the run set in the kernel."""
    sizes = sizes_for(plan.scale_max)
    binary = build_client(log.parent)
    out: dict = {"sizes": sizes}
    per_size = {}
    with Sysctls(kernel_settings(max(sizes))) as sysctls:
        out["sysctl"] = sysctls.record
        for n in sizes:
            figures = run_size(n, plan, binary, log, src, storm=plan.scale_storm and n == sizes[-1])
            per_size[n] = figures
            from bench.run import say

            say(f"  ssesup         scale    {brief_size(figures)}")
    out["per_size"] = {label(n): figures for n, figures in per_size.items()}
    for n, figures in per_size.items():
        for key, value in figures.items():
            if isinstance(value, (int, float)):
                out[f"{key}_{label(n)}"] = value
    out |= {key: value for key, value in per_size[sizes[-1]].items()}
    first, last = label(sizes[0]), label(sizes[-1])
    for key in GROWTH:
        out[f"{key}_growth"] = out[f"{key}_{last}"] / out[f"{key}_{first}"] if out.get(f"{key}_{first}") else None
    out["delivered"] = min(min(f["fanout_delivered"], f["user_delivered"]) for f in per_size.values())
    bad = [f"{label(n)}: {f['wrong']}" for n, f in per_size.items() if not f["exactly_once"]]
    if bad:
        out["error"] = "not every event once: " + "; ".join(bad)
    if out.get("storm_5xx"):
        out["error"] = f"{out['storm_5xx']} answers 5xx in the storm"
    return out


GROWTH = ("rss_kib_per_stream", "idle_cpu_pct_per_1k", "fanout_p99_ms", "cpu_us_per_delivered")


def brief_size(r: dict) -> str:
    text = (
        f"{r['streams']:,} streams ({r['workers']} servers, {r['client_processes']} clients): "
        f"connect {r['connect_per_s']:,.0f}/s; {r['rss_kib_per_stream']:.1f} KiB/stream "
        f"({r['server_rss_mib']:.0f} MiB), idle CPU {r['idle_cpu_pct']:.1f}% "
        f"(clients {r['idle_cpu']['clients']:.1f}%); "
        f"fan-out p50 {r['fanout_p50_ms']:.0f} ms p99 {r['fanout_p99_ms']:.0f} ms, "
        f"{100 * r['fanout_delivered']:.2f}% delivered, {r['deliveries_per_s']:,.0f}/s, "
        f"{r['cpu_us_per_delivered']:.1f} us CPU/delivered (client {r['fanout_client_cpu_us_per_delivered']:.2f}); "
        f"per-user {r['user_publish_per_s']:,.0f}/s p99 {r['user_p99_ms']:.1f} ms "
        f"{100 * r['user_delivered']:.2f}% delivered"
    )
    if "storm_moved" in r:
        text += (
            f"; storm: {r['storm_moved']:,} moved, all back {r['storm_back_s']:.1f} s after SIGTERM "
            f"(at most {r['storm_late_max_s']:.1f} s past retry), {r['storm_5xx']} 5xx, "
            f"Redis clients {r['storm_redis_clients_before']} -> peak {r['storm_redis_clients_peak']}"
        )
    text += f"; exactly once: {'yes' if r['exactly_once'] else 'NO'}"
    return text


def brief(r: dict) -> str:
    """The scenario's line (each size has had its own, :func:`brief_size`)."""
    sizes = ", ".join(label(n) for n in r["sizes"])
    return f"sizes {sizes}: every event once, no 5xx: {'yes' if 'error' not in r else 'NO: ' + r['error']}"


# -- the publisher -----------------------------------------------------------------------------------


def _stride(users: int) -> int:
    """A step through the uids that visits every one before any twice."""
    for step in (7919, 7907, 7901, 104729, 1):
        if math.gcd(step, users) == 1:
            return step % users or 1
    return 1


async def _publisher(url: str, users: int, size: int, workers: int = 16) -> None:
    """Answer ``run SECONDS BROADCAST_RATE USER_RATE``, ``dump PATH`` and ``quit`` on stdin."""
    from ssesup import Event, Hub

    hub = Hub(url, metrics=False)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    seq_b = 0
    seq_u = [0] * users
    count_u = 0
    step = _stride(users)

    def data(kind: str, seq: int) -> str:
        head = f"{time.time_ns() // 1000} {kind} {seq} "
        return head + "x" * max(0, size - len(head))

    async def run(seconds: float, b_rate: float, u_rate: float) -> dict:
        nonlocal seq_b, count_u
        started = loop.time()
        wall = time.time()
        late_max = 0.0
        errors = 0
        published = {"b": 0, "u": 0}

        async def paced(rate: float, publish_one) -> None:
            nonlocal late_max, errors
            if rate <= 0:
                return
            total = int(seconds * rate)
            next_k = 0

            async def worker() -> None:
                nonlocal next_k, late_max, errors
                while next_k < total:
                    k = next_k
                    next_k += 1
                    due = started + k / rate
                    if (wait := due - loop.time()) > 0:
                        await asyncio.sleep(wait)
                    late_max = max(late_max, loop.time() - due)
                    try:
                        await publish_one()
                    except Exception:
                        errors += 1

            await asyncio.gather(*(worker() for _ in range(min(workers, total) or 1)))

        async def broadcast() -> None:
            nonlocal seq_b
            seq_b += 1
            await hub.publish("broadcast", Event(data("b", seq_b)))
            published["b"] += 1

        async def user() -> None:
            nonlocal count_u
            uid = count_u * step % users
            count_u += 1
            seq_u[uid] += 1
            await hub.publish(f"user:{uid}", Event(data("u", seq_u[uid])))
            published["u"] += 1

        # Broadcasts one after the other (their numbers in the order Redis stores them); user events by
        # many tasks at once (a uid comes again only after every other uid had one).
        await asyncio.gather(_serial(seconds, b_rate, broadcast, started, loop), paced(u_rate, user))
        if (rest := started + seconds - loop.time()) > 0:
            await asyncio.sleep(rest)  # the whole window: so many publishes per so many seconds
        return {
            "broadcast": published["b"],
            "user": published["u"],
            "seconds": loop.time() - started,
            "started": wall,
            "late_max_ms": 1000 * late_max,
            "errors": errors,
        }

    print(json.dumps({"ready": True}), flush=True)
    while line := (await reader.readline()).decode().strip():
        command, *rest = line.split()
        if command == "run":
            answer = await run(float(rest[0]), float(rest[1]), float(rest[2]))
        elif command == "dump":
            Path(rest[0]).write_text(json.dumps({"broadcast": seq_b, "users": seq_u}))
            answer = {"dumped": True}
        elif command == "quit":
            break
        else:
            answer = {"error": f"unknown command {command}"}
        print(json.dumps(answer), flush=True)
    await hub.aclose()


async def _serial(seconds: float, rate: float, publish_one, started: float, loop) -> None:
    if rate <= 0:
        return
    for k in range(int(seconds * rate)):
        if (wait := started + k / rate - loop.time()) > 0:
            await asyncio.sleep(wait)
        await publish_one()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--publish", metavar="REDIS_URL", required=True, help="be the scenario's publisher")
    parser.add_argument("--users", type=int, required=True, help="user channels: user:0 .. user:N-1")
    parser.add_argument("--size", type=int, default=100, help="bytes of data per event")
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(_publisher(args.publish, args.users, args.size))


if __name__ == "__main__":
    main()
