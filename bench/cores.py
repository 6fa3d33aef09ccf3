"""The many-cores scenario's load: client processes reading bursts back to back, counted over a window.

A server runs with ``--workers W`` (not pinned); ``procs`` client processes (forked, free to run on
every core) each keep their share of ``streams`` connections busy: each requests a burst of ``n``
events of ``/<kind>``, reads it to its last event, closes and requests the next. (Bursts, not endless
streams: the floor's generator never gives its worker's event loop back while the socket takes its
writes, so one endless floor stream would hold its worker alone; and a busy worker seldom gets back to
``accept``, so new connections land on the idle one.) After ``warm`` seconds, this process asks every
client for its count of events and its own CPU time, reads the CPU time of every process of the server
(the uvicorn process and its descendants, from ``/proc``), waits ``window`` seconds and asks again.
Delivered events/s is the sum of the clients' counts over the window; the clients' CPU says whether
they, not the server, were the limit; each server process's CPU says whether the load reached every
worker, and the machine's busy time (``/proc/stat``: every process and the kernel) what an event costs
in all. The 1- and 2-worker servers are both up for the scenario (an idle one costs nothing) and take
turns, 1, 2, 2, 1 (``alternate``), each one's windows merged: measured one after the other, a drift of
the machine's speed between the two windows moved the ratio from run to run (1.57x to 1.78x for the
same code in one full run).

The clients read lightly, so that as much of the machine as possible is left to the server: a burst's
progress is its last ``id`` (its events are numbered 0 to n-1), found at the end of each read, and each
read's first id must come after the read before's last; a burst counts only once its body has ended
properly with id n-1. Scanning every byte for events (what the burst scenarios do, to prove none is
lost) took a third of the clients' CPU, and on two cores the clients' CPU is taken from the workers.
For the same reason a client's socket wakes it only once ``RCVLOWAT`` bytes have arrived (or the
connection has ended: each burst is requested with ``Connection: close``), not for every chunk the
server writes: with 2 ssesup workers that took the clients from 19-21% of a core to 10-12%.

Does not own: starting the server (bench/run.py), the socket client (bench/client.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import socket
import time
from multiprocessing.connection import Connection

import uvloop

from bench.client import HOST, ChunkedBody, StreamError, _Response, request
from bench.procstat import cpu_seconds

CLIENT_TIMEOUT = 60.0


ID_MARK = b"\nid: "
RCVLOWAT = 128 * 1024  # bytes a client's socket holds before it wakes the client (SO_RCVLOWAT)


class BurstReader(_Response):
    """One burst of ``n`` events numbered by their ids, read for throughput: ``count`` is the last id
    seen + 1; ``done`` is set when the body has ended properly, failed if its last id is not n-1, if
    ids went back between reads, or on a framing error or a lost connection."""

    def __init__(self, path: str, port: int, n: int) -> None:
        super().__init__(request(path, port, close=True))
        loop = asyncio.get_running_loop()
        self.n = n
        self.count = 0
        self.tail = b""  # the end of the last read: an id line cut by the edge of a read
        self.chunked: ChunkedBody | None = None
        self.first: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, RCVLOWAT)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        fresh = not self.in_body
        body = self._body(data)
        if body is None:
            return
        if fresh:
            if b"\r\ntransfer-encoding: chunked" not in self.head:
                self._fail(StreamError("a burst's body is not chunked"))
                return
            self.chunked = ChunkedBody()
        assert self.chunked is not None
        body = self.chunked.feed(body)
        if self.chunked.problem:
            self._fail(StreamError(f"bad chunked body: {self.chunked.problem}"))
            return
        buf = self.tail + body
        first = buf.find(ID_MARK)
        last = buf.rfind(ID_MARK)
        if last >= 0:
            start, end = last + len(ID_MARK), buf.find(b"\r", last + len(ID_MARK))
            if end > 0:  # the last id line is whole
                if first != last:
                    head = int(buf[first + len(ID_MARK) : buf.find(b"\r", first)])
                    if head < self.count - 1:
                        self._fail(StreamError(f"id {head} after id {self.count - 1}"))
                        return
                self.count = int(buf[start:end]) + 1
                if not self.first.done():
                    self.first.set_result(None)
        self.tail = buf[-40:]
        if self.chunked.done and not self.done.done():
            if self.count != self.n:
                self._fail(StreamError(f"a burst ended at id {self.count - 1}, expected {self.n - 1}"))
            else:
                self.done.set_result(None)

    def _fail(self, error: Exception) -> None:
        for future in (self.first, self.done):
            if not future.done():
                future.set_exception(error)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self._fail(StreamError(f"connection lost at id {self.count - 1}: {exc}"))

    def abandon(self) -> None:
        """Close the connection, a burst left unread on purpose (the client stops): not a failure."""
        for future in (self.first, self.done):
            future.cancel()
        self.close()


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _client(port: int, path: str, n: int, streams: int, pipe: Connection) -> None:
    """One client process: ``streams`` connections reading bursts of ``n`` events back to back; says
    ``ready`` once each has had an event, then answers each ``mark`` with (events so far, own CPU
    seconds) until ``stop``."""
    os.sched_setaffinity(0, range(os.cpu_count() or 1))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        current: list[BurstReader | None] = [None] * streams
        finished = [0]  # events of the bursts read to their end

        async def reader(slot: int, started: asyncio.Future) -> None:
            while not stop.done():
                conn = current[slot] = BurstReader(path, port, n)
                await loop.create_connection(lambda conn=conn: conn, HOST, port)
                try:
                    await asyncio.wait_for(asyncio.shield(conn.first), CLIENT_TIMEOUT)
                    if not started.done():
                        started.set_result(None)
                    await asyncio.wait_for(asyncio.shield(conn.done), CLIENT_TIMEOUT)
                finally:
                    conn.abandon()  # read to its end, or cut short because the client stops
                finished[0] += n
                current[slot] = None

        def count() -> int:
            return finished[0] + sum(c.count for c in current if c is not None)

        def on_message() -> None:
            if pipe.recv() == "stop":
                stop.set_result(None)
                return
            pipe.send(("mark", count(), _own_cpu()))

        starts = [loop.create_future() for _ in range(streams)]
        readers = [asyncio.ensure_future(reader(slot, starts[slot])) for slot in range(streams)]
        try:
            # Started one after the other, each once the one before has its first event.
            for start, task in zip(starts, readers, strict=True):
                await asyncio.wait([start, task], return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    task.result()
            pipe.send(("ready",))
            loop.add_reader(pipe.fileno(), on_message)
            await asyncio.wait([stop, *readers], return_when=asyncio.FIRST_COMPLETED)
            for task in readers:
                if task.done():
                    task.result()
        finally:
            loop.remove_reader(pipe.fileno())
            for task in readers:
                task.cancel()
            for conn in current:
                if conn is not None:
                    conn.abandon()

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    except Exception as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))


def _receive(pipe: Connection, timeout: float) -> tuple:
    if not pipe.poll(timeout):
        raise StreamError(f"a load client did not answer within {timeout:.0f} s")
    message = pipe.recv()
    if message[0] == "error":
        raise StreamError(f"a load client failed: {message[1]}")
    return message


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descending from it (uvicorn's workers and their helpers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def machine_busy() -> float:
    """Seconds of CPU the whole machine has spent busy (all cores, every process and the kernel's
    interrupts; not idle, not iowait), from ``/proc/stat``."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds(pid)
        except OSError:
            continue
    return out


def load(port: int, pid: int, kind: str, n: int, streams: int, procs: int, warm: float, window: float) -> dict:
    """Delivered events/s over ``window`` s from ``streams`` connections reading bursts of ``n`` events
    in ``procs`` client processes; the clients' CPU and every server process's CPU over the window."""
    ctx = multiprocessing.get_context("fork")
    path = f"/{kind}?n={n}"
    shares = [streams // procs + (i < streams % procs) for i in range(procs)]
    pipes, children = [], []
    try:
        for share in shares:
            ours, theirs = ctx.Pipe()
            child = ctx.Process(target=_client, args=(port, path, n, share, theirs), daemon=True)
            child.start()
            theirs.close()
            pipes.append(ours)
            children.append(child)
        for pipe in pipes:
            _receive(pipe, CLIENT_TIMEOUT)
        time.sleep(warm)
        server = process_tree(pid)

        def mark() -> tuple[float, float, dict[int, float], list[tuple]]:
            for pipe in pipes:
                pipe.send("mark")
            now, busy, cpu = time.perf_counter(), machine_busy(), _cpu(server)
            return now, busy, cpu, [_receive(pipe, CLIENT_TIMEOUT) for pipe in pipes]

        t0, busy0, cpu0, marks0 = mark()
        time.sleep(window)
        t1, busy1, cpu1, marks1 = mark()
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join()
    elapsed = t1 - t0
    events = sum(b[1] - a[1] for a, b in zip(marks0, marks1, strict=True))
    if not events:
        raise StreamError("no events delivered in the window")
    per_process = sorted((100 * (cpu1[p] - cpu0[p]) / elapsed for p in cpu1 if p in cpu0), reverse=True)
    return {
        "events_per_s": events / elapsed,
        "client_cpu_pct": 100 * sum(b[2] - a[2] for a, b in zip(marks0, marks1, strict=True)) / elapsed,
        "server_cpu_pct": sum(per_process),
        "server_process_cpu_pct": [round(c, 1) for c in per_process],
        "machine_cpu_pct": 100 * (busy1 - busy0) / elapsed,
        "machine_us_per_event": 1e6 * (busy1 - busy0) / events,
        "streams": streams,
        "burst_n": n,
        "client_procs": procs,
        "window_s": elapsed,
        "delivered": 1.0,
    }


def alternate(servers: dict[int, tuple[int, int]], rounds: int, **load_args) -> dict[int, dict]:
    """``load`` of each server (workers -> (port, pid)), taking turns in ``rounds`` rounds, every other
    round in the reverse order (with two servers and two rounds: A B B A, so a steady drift of the
    machine's speed weighs on both alike); each server's windows merged into one result."""
    windows: dict[int, list[dict]] = {workers: [] for workers in servers}
    order = list(servers)
    for i in range(rounds):
        for workers in order if i % 2 == 0 else order[::-1]:
            port, pid = servers[workers]
            windows[workers].append(load(port, pid, **load_args))
    return {workers: merged(results) for workers, results in windows.items()}


def merged(windows: list[dict]) -> dict:
    """Windows of one server as one: events/s and CPU shares over their summed time (each server process's
    share the mean of its windows', all of one length), the machine's CPU per event over their summed
    events; each window's events/s is kept in ``windows_events_per_s``."""
    elapsed = sum(w["window_s"] for w in windows)
    events = sum(w["events_per_s"] * w["window_s"] for w in windows)

    def share(key: str) -> float:
        return sum(w[key] * w["window_s"] for w in windows) / elapsed

    processes = [w["server_process_cpu_pct"] for w in windows]
    return windows[-1] | {
        "events_per_s": events / elapsed,
        "client_cpu_pct": share("client_cpu_pct"),
        "server_cpu_pct": share("server_cpu_pct"),
        "server_process_cpu_pct": [round(sum(c) / len(c), 1) for c in zip(*processes, strict=False)],
        "machine_cpu_pct": share("machine_cpu_pct"),
        "machine_us_per_event": sum(w["machine_us_per_event"] * w["events_per_s"] * w["window_s"] for w in windows)
        / events,
        "window_s": elapsed,
        "windows_events_per_s": [round(w["events_per_s"]) for w in windows],
    }
