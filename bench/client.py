"""The raw-socket client: asyncio protocols on uvloop, no HTTP library.

A connection sends one ``GET`` and reads the body as it comes, decoding the chunks (a chunk's edge may
fall inside a field line: ssesup writes a burst in 64 KiB chunks). Events are counted by their data
lines (``data: `` occurs once per event here, whatever the line separator: CRLF for the floor, ssesup
and sse-starlette, LF for FastAPI), counted with ``bytes.count`` so the client stays far faster than
any server. The realistic bursts' events carry ``id: <seq>``: those lines are counted the same way,
and every 16th read (and the last) has its ids parsed and checked to go up. Timed payloads
(``data: <time.time()> <seq> ...``) are parsed for delivery latency. All waits are bounded. The drain
scenario reads its streams with :class:`DrainConnection`, which also tells a proper end of body from
a cut.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.procstat import cpu_seconds, rss_kib

HOST = "127.0.0.1"
DATA = b"data: "
ID = b"id: "
ID_LINE = re.compile(rb"\nid: (\d+)\r?\n")
ID_SAMPLE = 16  # every this many reads, the ids in the read are checked
TIMED = re.compile(rb"data: (\d+\.\d+) (\d+) ")
RETRY = re.compile(rb"(?:\A|[\r\n])retry:([^\r\n]*)[\r\n]")


class StreamError(RuntimeError):
    pass


class _Response(asyncio.Protocol):
    """A raw HTTP/1.1 response: sends ``request`` on connect; :meth:`_body` strips the head."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.in_body = False
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def _body(self, data: bytes) -> bytes | None:
        """The body bytes in ``data``, once the head has ended (``None`` before, or on a status other
        than 200, which fails the response). The head, lower-cased, stays in ``self.head``."""
        if self.in_body:
            return data if self.status == 200 else None
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return None
        rest, self.head, self.in_body = self.head[end + 4 :], self.head[:end].lower(), True
        self.status = int(self.head[: self.head.find(b"\r\n")].split()[1])
        if self.status != 200:
            self._fail(StreamError(f"HTTP {self.status}"))
            return None
        return rest

    def _fail(self, error: Exception) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class SSEConnection(_Response):
    """One SSE response read off a raw socket: counts events, or parses timed events when ``timed``;
    with ``ids``, also counts ``id: `` lines and checks on a sample of chunks that ids go up."""

    def __init__(self, request: bytes, *, timed: bool = False, expect: int = 0, ids: bool = False) -> None:
        super().__init__(request)
        loop = asyncio.get_running_loop()
        self.timed = timed
        self.expect = expect
        self.tail = b""
        self.count = 0
        self.ids = ids
        self.id_count = 0
        self.reads = 0
        self.previous = b""
        self.last_id = -1
        self.ids_checked = 0
        self.disorder = ""
        self.samples: list[tuple[int, float]] = []  # (seq, latency in seconds)
        self.first: asyncio.Future[float] = loop.create_future()
        self.done: asyncio.Future[float] = loop.create_future()
        self.lost = False
        self.chunked: ChunkedBody | None = None

    def data_received(self, data: bytes) -> None:
        now = time.time()
        fresh = not self.in_body
        body = self._body(data)
        if body is None:
            return
        if fresh and b"\r\ntransfer-encoding: chunked" in self.head:
            self.chunked = ChunkedBody()
        if self.chunked is not None:
            body = self.chunked.feed(body)
            if self.chunked.problem:
                self._fail(StreamError(f"bad chunked body: {self.chunked.problem}"))
                return
        buf = self.tail + body
        if self.timed:
            # Only whole lines: a data line whose end has arrived is parsed, the rest waits.
            cut = buf.rfind(b"\n") + 1
            for match in TIMED.finditer(buf, 0, cut):
                self.samples.append((int(match.group(2)), now - float(match.group(1))))
            self.count = len(self.samples)
            self.tail = buf[cut:]
        else:
            # The kept tail is shorter than the pattern, so no occurrence is counted twice; an id line's
            # ``id: `` is shorter than the tail, so those wholly inside it (counted before) are taken off.
            tail = self.tail
            self.count += buf.count(DATA)
            self.tail = buf[-(len(DATA) - 1) :]
            if self.ids:
                self.id_count += buf.count(ID) - tail.count(ID)
                self.reads += 1
                if not self.reads % ID_SAMPLE or self.id_count >= self.expect:
                    self._check_ids(body)
                self.previous = body
        if self.count and not self.first.done():
            self.first.set_result(now)
        if self.expect and self._complete() and not self.done.done():
            self.done.set_result(now)

    def _complete(self) -> bool:
        return self.count >= self.expect and (not self.ids or self.id_count >= self.expect)

    def _check_ids(self, body: bytes) -> None:
        """The ids of ``body``'s whole id lines go up from the last checked (the end of the read before
        is the context of a line cut by the edge; its own lines were checked then or left out)."""
        context = self.previous[-40:]
        for match in ID_LINE.finditer(context + body):
            if match.end() <= len(context):
                continue
            seq = int(match.group(1))
            if seq <= self.last_id and not self.disorder:
                self.disorder = f"id {seq} after id {self.last_id}"
            self.last_id = seq
            self.ids_checked += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(StreamError(f"connection lost after {self.count} events: {exc}"))

    def _fail(self, error: Exception) -> None:
        for future in (self.first, self.done):
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: a stream nobody awaits does not warn


_SIZE, _DATA, _CRLF, _TRAILER, _DONE = range(5)  # where a chunked body's decoder is


class ChunkedBody:
    """An HTTP/1.1 chunked body decoded as it arrives: :meth:`feed` returns the payload bytes so far.

    ``clean`` is set when the terminator (``0\\r\\n`` and the empty trailer line) has arrived; a framing
    error sets ``problem`` and stops decoding.
    """

    def __init__(self) -> None:
        self.raw = b""  # undecoded bytes: a size line or a CRLF not yet whole
        self.state = _SIZE
        self.need = 0
        self.clean = False
        self.problem = ""

    @property
    def done(self) -> bool:
        return self.state is _DONE

    def feed(self, data: bytes) -> bytes:
        buf = self.raw + data if self.raw else data
        pos, size, out, state, need = 0, len(buf), [], self.state, self.need
        while True:
            if state is _SIZE:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                line, pos = buf[pos:end], end + 2
                try:
                    need = int(line, 16) if b";" not in line else int(line.split(b";", 1)[0], 16)
                except ValueError:
                    state = self._bad(f"bad chunk size {line[:20]!r}")
                    break
                state = _DATA if need else _TRAILER
            elif state is _DATA:
                end = pos + need
                if end > size:
                    out.append(buf[pos:])
                    need, pos = end - size, size
                    break
                out.append(buf[pos:end])
                pos, need, state = end, 0, _CRLF
            elif state is _CRLF:
                if size - pos < 2:
                    break
                if not buf.startswith(b"\r\n", pos):
                    state = self._bad("no CRLF after a chunk")
                    break
                pos, state = pos + 2, _SIZE
            elif state is _TRAILER:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                if end == pos:  # the empty line after the last chunk: the proper end of the body
                    state, self.clean = _DONE, True
                    break
                pos = end + 2
            else:
                break
        self.state, self.need = state, need
        self.raw = buf[pos:] if state is not _DONE and pos < size else b""
        return out[0] if len(out) == 1 else b"".join(out)

    def _bad(self, problem: str) -> int:
        self.problem = problem
        return _DONE


class DrainConnection(_Response):
    """One SSE response whose chunked body is decoded, to see how it ends.

    ``clean`` is set when the chunked terminator (``0\\r\\n`` and the empty trailer line) arrives;
    ``ended`` is the ``time.perf_counter()`` of the end: the terminator, or else the loss of the
    connection (a reset, or EOF without the terminator: a cut). ``body`` is the decoded body; ``mark``
    is its length when the client sent SIGTERM, so what came after is ``body[mark:]``.
    """

    def __init__(self, request: bytes) -> None:
        super().__init__(request)
        self.chunked: ChunkedBody | None = None
        self.body = bytearray()
        self.mark = -1
        self.first: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.clean = False
        self.ended: float | None = None
        self.problem = ""

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        fresh = not self.in_body
        body = self._body(data)
        if body is None:
            return
        if fresh and b"\r\ntransfer-encoding: chunked" in self.head:
            self.chunked = ChunkedBody()
        if self.chunked is None:
            self.body += body  # delimited by the close: it can have no proper end
        elif not self.chunked.done:
            self.body += self.chunked.feed(body)
            self.problem = self.chunked.problem
            if self.chunked.clean:
                self.clean, self.ended = True, now
        if not self.first.done() and DATA in self.body:
            self.first.set_result(now)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ended is None:
            self.ended = time.perf_counter()
        self._fail(StreamError(f"connection lost before the first event: {exc}"))

    def _fail(self, error: Exception) -> None:
        if not self.first.done():
            self.first.set_exception(error)
            self.first.exception()

    def retries_after_mark(self) -> list[int]:
        """The ``retry:`` values (ms) of the field lines that ended after the mark."""
        start = max(0, self.mark - 1)  # the line break before a line that starts at the mark
        out = []
        for match in RETRY.finditer(self.body, start):
            if match.end() > self.mark:
                value = match.group(1).strip()
                out.append(int(value) if value.isdigit() else -1)
        return out


def request(path: str, port: int, *, close: bool = False) -> bytes:
    """A GET of ``path``; with ``close``, the server ends the connection after the response."""
    connection = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n{connection}\r\n".encode()


async def connect(port: int, path: str, *, timed: bool = False, expect: int = 0, ids: bool = False) -> SSEConnection:
    loop = asyncio.get_running_loop()
    conn = SSEConnection(request(path, port), timed=timed, expect=expect, ids=ids)
    await loop.create_connection(lambda: conn, HOST, port)
    return conn


async def open_streams(
    port: int,
    path: str,
    n: int,
    *,
    timed: bool = False,
    concurrency: int = 200,
    timeout: float = 120.0,
    factory: Callable[[bytes], asyncio.Protocol] | None = None,
) -> tuple[list, float]:
    """Open ``n`` streams, each until its first event arrives; the streams and how long that took.
    ``factory`` makes the protocol from the request (default :class:`SSEConnection`)."""
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()
    loop = asyncio.get_running_loop()

    async def one() -> SSEConnection:
        async with gate:
            if factory is None:
                conn = await connect(port, path, timed=timed)
            else:
                conn = factory(request(path, port))
                await loop.create_connection(lambda: conn, HOST, port)
            try:
                await asyncio.wait_for(asyncio.shield(conn.first), 30.0)
            except BaseException:
                conn.close()
                raise
            return conn

    tasks = [asyncio.ensure_future(one()) for _ in range(n)]
    finished, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    conns = [t.result() for t in finished if not t.cancelled() and t.exception() is None]
    if len(conns) < n:
        errors = {repr(t.exception()) for t in finished if not t.cancelled() and t.exception() is not None}
        for conn in conns:
            conn.close()
        raise StreamError(f"opened {len(conns)} of {n} streams on {path} ({len(pending)} timed out; {errors or ''})")
    return conns, time.perf_counter() - started


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- scenarios -------------------------------------------------------------------------------------


async def burst(
    port: int, n: int, size: int, runs: int, timeout: float = 60.0, kind: str = "burst", ids: bool = False
) -> dict:
    """One connection, ``n`` events of ``/<kind>`` as fast as possible; ``runs`` times, the median
    events/s. With ``ids`` the events' ids are counted too, and checked to run ``0 .. n-1`` in order on
    a sample (:class:`SSEConnection`)."""
    rates: list[float] = []
    checked = 0
    for _ in range(runs):
        started = time.time()
        conn = await connect(port, f"/{kind}?n={n}&size={size}", expect=n, ids=ids)
        try:
            finished = await asyncio.wait_for(asyncio.shield(conn.done), timeout)
        except (StreamError, TimeoutError) as exc:
            raise StreamError(f"{kind} delivered {conn.count} of {n} events: {exc}") from exc
        finally:
            conn.close()
        if conn.count != n:
            raise StreamError(f"{kind} delivered {conn.count} events, expected {n}")
        if ids:
            if conn.id_count != n or conn.disorder or conn.last_id != n - 1 or conn.ids_checked < 2:
                raise StreamError(
                    f"{kind}: {conn.id_count} ids of {n} events, last id {conn.last_id}, "
                    f"{conn.ids_checked} checked{', ' + conn.disorder if conn.disorder else ''}"
                )
            checked += conn.ids_checked
        rates.append(n / (finished - started))
    return burst_summary(rates, n, size, checked if ids else None)


def burst_summary(rates: list[float], n: int, size: int, ids_checked: int | None) -> dict:
    """The burst figures of bursts of ``n`` events of ``size`` B read at ``rates`` events/s: their median."""
    out = {"events_per_s": statistics.median(rates), "runs": rates, "n": n, "size": size, "delivered": 1.0}
    if ids_checked is not None:
        out["ids_checked"] = ids_checked
    return out


async def latency(port: int, n: int, every: float, size: int) -> dict:
    """One stream, one timed event every ``every`` s: the delivery latency of single events.

    The client busy-polls its socket instead of sleeping in the event loop between events: its own
    wake-up from idle varies by tens of microseconds from run to run and would drown the servers'
    differences. (It blocks this process's loop for the scenario, which runs alone.)
    """
    conn = SSEConnection(request(f"/latency?n={n}&every={every}&size={size}", port), timed=True, expect=n)
    deadline = time.monotonic() + n * every + 15.0
    with socket.create_connection((HOST, port)) as sock:
        sock.sendall(conn.request)
        sock.setblocking(False)
        while not conn.done.done():
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StreamError(f"latency stream delivered {conn.count} of {n} events in time") from None
                continue
            if not data:
                raise StreamError(f"latency stream delivered {conn.count} of {n} events: connection closed")
            conn.data_received(data)
    conn.done.exception()  # a failure (an HTTP error) is raised here
    return latency_summary([s[1] * 1000 for s in conn.samples], n)


def latency_summary(lat: list[float], n: int) -> dict:
    """The single-event figures of ``lat`` (ms), of ``n`` events sent."""
    return {
        "p50_ms": statistics.median(lat),
        "p99_ms": quantile(lat, 0.99),
        "mean_ms": statistics.fmean(lat),
        "n": len(lat),
        "delivered": len(lat) / n,
        "samples_ms": lat,
    }


async def fanout(port: int, pid: int, streams: int, window: float, tick: float, concurrency: int) -> dict:
    """``streams`` subscribers of the broadcaster; over ``window`` s, the delivery latency of every tick
    (send time to arrival), the share of ticks delivered and the server's CPU."""
    conns, open_s = await open_streams(port, "/fanout", streams, timed=True, concurrency=concurrency)
    try:
        # Every stream has seen a tick, so every stream is subscribed for the ticks after the latest first one.
        first = max(c.samples[0][0] for c in conns) + 2
        ticks = max(1, round(window / tick))
        last = first + ticks - 1
        await _until(lambda: all(c.samples and c.samples[-1][0] >= first - 1 for c in conns), 10 * tick + 10)
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        await _until(lambda: _max_seq(conns) >= last, window + 10 * tick + 10)
        cpu1, t1 = cpu_seconds(pid), time.perf_counter()
        rss = rss_kib(pid)
        # Stragglers: wait (bounded) until every stream has the last tick or gave up.
        await _until(lambda: all(c.lost or c.samples[-1][0] >= last for c in conns), 30.0)
    finally:
        for conn in conns:
            conn.close()
    lat, got = window_samples(conns, first, last)
    expected = ticks * streams
    return {
        "p50_ms": statistics.median(lat) if lat else float("nan"),
        "p99_ms": quantile(lat, 0.99),
        "max_ms": max(lat, default=float("nan")),
        "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
        "delivered": got / expected,
        "events": got,
        "expected": expected,
        "streams": streams,
        "ticks": ticks,
        "open_s": open_s,
        "rss_mib": rss / 1024,
    }


async def idle(
    port: int, pid: int, streams: int, hold: int, warm: int, settle: float, cpu_window: float, concurrency: int
) -> dict:
    """RSS per idle stream (``streams`` opened after a warm-up), then ``hold`` streams in all: RSS and
    idle CPU over ``cpu_window`` s."""
    warm_conns, _ = await open_streams(port, "/idle", warm, concurrency=concurrency)
    for conn in warm_conns:
        conn.close()
    await asyncio.sleep(settle)
    rss0 = rss_kib(pid)
    conns: list[SSEConnection] = []
    try:
        opened, open_s = await open_streams(port, "/idle", streams, concurrency=concurrency)
        conns += opened
        await asyncio.sleep(settle)
        rss1 = rss_kib(pid)
        result = {
            "streams": streams,
            "kib_per_stream": (rss1 - rss0) / streams,
            "rss_base_mib": rss0 / 1024,
            "rss_mib": rss1 / 1024,
            "open_per_s": streams / open_s,
            "delivered": 1.0,
        }
        if hold > streams:
            more, _ = await open_streams(port, "/idle", hold - streams, concurrency=concurrency)
            conns += more
            await asyncio.sleep(settle)
        if hold:
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            await asyncio.sleep(cpu_window)
            cpu1, t1 = cpu_seconds(pid), time.perf_counter()
            lost = sum(c.lost for c in conns)
            if lost:
                raise StreamError(f"{lost} idle streams were closed by the server")
            result |= {
                "hold": len(conns),
                "hold_rss_mib": rss_kib(pid) / 1024,
                "hold_cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
            }
        return result
    finally:
        for conn in conns:
            conn.close()


async def drain(
    port: int,
    proc: subprocess.Popen,
    streams: int,
    every: float,
    settle: float,
    cap: float,
    size: int,
    concurrency: int,
) -> dict:
    """``streams`` streams of ``/ticks`` (one event at once, then one per ``every`` s); once every one
    has its first event (and ``settle`` s more), SIGTERM to the server. From this process: the seconds
    until the server exited (it is killed at ``cap``), how each stream ended (proper end of body or
    cut), which got a ``retry:`` after the signal (a farewell), and when the streams ended."""
    factory = DrainConnection
    conns, open_s = await open_streams(
        port, f"/ticks?every={every}&size={size}", streams, concurrency=concurrency, factory=factory
    )
    try:
        await asyncio.sleep(settle)
        if early := sum(c.ended is not None for c in conns):
            raise StreamError(f"{early} streams ended before the signal")
        for conn in conns:
            conn.mark = len(conn.body)
        signalled = time.perf_counter()
        os.kill(proc.pid, signal.SIGTERM)
        exited = await _until(lambda: proc.poll() is not None, cap, step=0.005)
        exit_s = time.perf_counter() - signalled
        if not exited:
            proc.kill()
            proc.wait(10)
        # The process is gone, so are its sockets: every stream ends now, if it had not.
        await _until(lambda: all(c.ended is not None for c in conns), 10.0)
    finally:
        for conn in conns:
            conn.close()
    ends = sorted(c.ended - signalled for c in conns if c.ended is not None)
    retries = [c.retries_after_mark() for c in conns]
    hints = sorted(r[-1] for r in retries if r)
    peak, lo = 0, 0
    for hi, end in enumerate(ends):  # most stream ends in any 100 ms window
        while end - ends[lo] > 0.1:
            lo += 1
        peak = max(peak, hi - lo + 1)
    return {
        "streams": streams,
        "open_s": open_s,
        "exit_s": exit_s,
        "killed": not exited,
        "returncode": proc.returncode,
        "clean": sum(c.clean for c in conns) / streams,
        "cut": sum(not c.clean for c in conns) / streams,
        "farewell": sum(bool(r) for r in retries) / streams,
        "first_close_s": ends[0] if ends else float("nan"),
        "median_close_s": statistics.median(ends) if ends else float("nan"),
        "last_close_s": ends[-1] if ends else float("nan"),
        "close_spread_s": ends[-1] - ends[0] if ends else float("nan"),
        "peak_100ms": peak / streams,
        "events_after_signal": sum(c.body.count(DATA, c.mark) for c in conns),
        "retry_ms": {"min": hints[0], "median": statistics.median(hints), "max": hints[-1]} if hints else None,
        "not_chunked": sum(c.chunked is None for c in conns),
        "problems": sorted({c.problem for c in conns if c.problem}),
        "never_ended": sum(c.ended is None for c in conns),
    }


def window_samples(conns: list[SSEConnection], first: int, last: int) -> tuple[list[float], int]:
    """The latencies (ms) of the timed events ``first`` to ``last`` as every stream got them (a repeat
    counted once), and how many (event, stream) pairs arrived."""
    latencies: list[float] = []
    delivered = 0
    for conn in conns:
        seqs = set()
        for seq, value in conn.samples:
            if first <= seq <= last and seq not in seqs:
                seqs.add(seq)
                latencies.append(value * 1000)
        delivered += len(seqs)
    return latencies, delivered


def _max_seq(conns: list[SSEConnection]) -> int:
    return max((c.samples[-1][0] for c in conns if c.samples), default=-1)


async def _until(condition: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(step)
    return True


@dataclass
class Plan:
    """What one run measures (sizes and durations); ``smoke`` is seconds-long with few connections."""

    size: int = 100
    burst_n: int = 50_000
    burst_runs: int = 5
    latency_n: int = 150
    latency_every: float = 0.02
    latency_turns: int = 3  # the systems take turns, latency_n / latency_turns events each time
    fanout_streams: int = 1000
    fanout_window: float = 30.0
    tick: float = 0.2
    idle_streams: int = 8000
    idle_hold: int = 10_000
    idle_warm: int = 200
    settle: float = 1.0
    cpu_window: float = 15.0
    concurrency: int = 200
    drain_streams: int = 1000
    drain_every: float = 1.0
    drain_grace: float = 10.0
    drain_server_timeout: int = 30
    drain_cap: float = 45.0
    deploy_healthy: int = 20
    deploy_stuck: int = 10
    deploy_vanished: int = 10
    deploy_grace: float = 5.0
    deploy_cap: float = 40.0
    churn_rounds: int = 10
    churn_per_round: int = 50
    churn_settle: float = 12.0
    churn_ssesup: str = '{"ping": 1, "send_timeout": 3, "dead_peer_timeout": 3}'
    cores_kind: str = "burst_fields"
    cores_n: int = 20_000
    cores_streams: int = 8
    cores_procs: int = 2
    cores_warm: float = 2.0
    cores_window: float = 5.0  # per turn: each server is measured in cores_rounds turns
    cores_rounds: int = 2
    hub_resume_events: int = 10_000
    hub_resume_grace: float = 5.0
    hub_resume_timeout: float = 120.0
    hub_redis_streams: int = 1000  # per server process (two)
    hub_redis_rate: float = 10.0  # publishes/s (issue 13 asks 100: more than 2 cores hold, bench/redis_hub.py)
    hub_redis_warm: float = 5.0
    hub_redis_window: float = 20.0
    scale_max: int = 100_000  # the scale scenario's largest size (bench/scale.py)
    scale_ping: float = 15.0
    scale_idle_window: float = 30.0
    scale_fanout_seconds: float = 20.0  # one broadcast publish per second
    scale_user_rate: float = 1000.0
    scale_user_window: float = 10.0
    scale_storm: bool = True  # at the largest size
    scale_storm_seconds: float = 30.0
    scale_storm_user_rate: float = 100.0
    scale_drain_grace: float = 0.0  # 0: ssesup's default (20 s)
    scale_reconnect: str = ""  # "low,high" seconds of the farewell's retry:; empty: ssesup's default (1-10 s)
    scale_concurrency: int = 256  # streams being admitted at once per client process
    scale_profile: bool = False  # py-spy of one server process per phase (bench/scale.py Profile)
    hub_storm_clients: int = 2000
    hub_storm_events: int = 200
    hub_storm_rate: float = 20.0  # publishes/s (2,000 clients: 40,000 deliveries a second)
    hub_storm_grace: float = 5.0
    hub_storm_timeout: float = 180.0
    runs_count: int = 100  # runs at once (bench/runs.py)
    runs_tokens: int = 1000
    runs_viewers: int = 10  # per run, one of which reconnects every second
    runs_every: float = 0.05  # seconds between two tokens of a run (100 runs: 2,000 tokens/s, 20,000 deliveries/s)
    runs_timeout: float = 300.0
    extra: dict = field(default_factory=dict)

    @classmethod
    def smoke(cls) -> Plan:
        return cls(
            burst_n=2000,
            burst_runs=2,  # two turns: the bursts alternate between systems
            latency_n=10,
            latency_turns=2,
            fanout_streams=20,
            fanout_window=1.0,
            idle_streams=50,
            idle_hold=100,
            idle_warm=10,
            settle=0.3,
            cpu_window=1.0,
            drain_streams=60,
            drain_grace=2.0,
            drain_server_timeout=4,
            drain_cap=10.0,
            deploy_healthy=3,
            deploy_stuck=3,
            deploy_vanished=2,
            deploy_grace=2.0,
            deploy_cap=15.0,
            churn_rounds=2,
            churn_per_round=10,
            churn_settle=8.0,
            cores_n=2000,
            cores_streams=2,
            cores_procs=1,
            cores_warm=0.2,
            cores_window=0.5,
            hub_resume_events=1000,
            hub_resume_grace=1.0,
            hub_resume_timeout=60.0,
            hub_redis_streams=20,
            hub_redis_rate=20.0,
            hub_storm_clients=50,
            hub_storm_events=100,
            hub_storm_grace=1.0,
            hub_storm_timeout=60.0,
            runs_count=5,
            runs_tokens=200,
            runs_viewers=3,
            runs_every=0.01,
            runs_timeout=60.0,
            hub_redis_warm=0.5,
            hub_redis_window=2.0,
            scale_max=2000,
            scale_idle_window=3.0,
            scale_fanout_seconds=3.0,
            scale_user_window=3.0,
            scale_storm_seconds=6.0,
            scale_storm_user_rate=50.0,
            scale_drain_grace=2.0,
            scale_reconnect="0.2,1",
        )
