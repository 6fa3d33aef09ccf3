"""Caps on concurrent streams under a real uvicorn: over the global cap 503, over a client's cap 429, both
with Retry-After; counts freed when streams end; X-Forwarded-For honoured only from a trusted proxy;
refusals counted in metrics and logged once per interval. Clients connect from several loopback
addresses (127.0.0.2, 127.0.0.3, ...), so each is a distinct peer."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import anyio
import pytest
import structlog
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Route

from servers import HypercornTrioThread, UvicornThread, recv_until, wait_until
from ssesup import Event, SupervisedStream, Supervisor
from ssesup.limits import StreamLimits


def serve(limits: StreamLimits, thread: type = UvicornThread) -> tuple[UvicornThread, Supervisor, CollectorRegistry]:
    registry = CollectorRegistry()
    supervisor = Supervisor(limits=limits, metrics=registry, ping=0)

    async def hold(request):
        async def gen():
            yield Event("hello")
            await anyio.sleep_forever()

        return SupervisedStream(gen())

    app = Starlette(routes=[Route("/hold", hold)])
    supervisor.install(app)
    # uvicorn's own X-Forwarded-For rewriting is off: ssesup's trusted_proxies decide.
    server = thread(app, proxy_headers=False) if thread is UvicornThread else thread(app)
    return server, supervisor, registry


def request(port: int, source: str = "127.0.0.1", forwarded: str | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    header = f"X-Forwarded-For: {forwarded}\r\n" if forwarded is not None else ""
    sock.sendall(f"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}\r\n".encode())
    return sock


def response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and the start of the body (all of it for a refusal, which has a length)."""
    data = recv_until(sock, b"\r\n\r\n")
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    if "content-length" in headers:
        while len(body) < int(headers["content-length"]):
            body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


@contextlib.contextmanager
def streams(port: int, *sources: str, forwarded: str | None = None) -> Iterator[list[socket.socket]]:
    """One open stream per source address (each has its first event); closed at the end."""
    opened = []
    try:
        for source in sources:
            sock = request(port, source, forwarded)
            opened.append(sock)
            status, _, body = response(sock)
            assert status == 200
            if b"hello" not in body:
                recv_until(sock, b"hello")
        yield opened
    finally:
        for sock in opened:
            sock.close()


def refused(port: int, source: str = "127.0.0.1", forwarded: str | None = None) -> tuple[int, str, bytes]:
    with request(port, source, forwarded) as sock:
        status, headers, body = response(sock)
    return status, headers.get("retry-after", ""), body


def rejected(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("ssesup_streams_rejected_total", {"reason": reason})


def counted(server: UvicornThread, supervisor: Supervisor) -> tuple[int, dict[str, int]]:
    def read() -> tuple[int, dict[str, int]]:
        admission = supervisor.loop_supervision.admission
        return admission.total, dict(admission.per_client)

    return server.call(read)


def test_over_the_global_cap_a_stream_is_refused_with_503_and_retry_after_until_one_ends():
    server, supervisor, registry = serve(StreamLimits(max_streams=3, retry_after=7))
    with server, streams(server.port, "127.0.0.2", "127.0.0.3", "127.0.0.4") as open_streams:
        status, retry_after, body = refused(server.port, "127.0.0.5")
        assert (status, retry_after) == (503, "7")
        assert body == b"server busy: reconnect later\n"
        assert rejected(registry, "max_streams") == 1
        assert rejected(registry, "max_streams_per_client") == 0
        open_streams.pop().close()  # the client leaves: its stream ends and no longer counts
        wait_until(lambda: counted(server, supervisor)[0] == 2)
        with streams(server.port, "127.0.0.5"):
            assert counted(server, supervisor)[0] == 3
            assert refused(server.port)[0] == 503
        assert rejected(registry, "max_streams") == 2


def test_over_a_clients_cap_its_stream_is_refused_with_429_and_other_clients_still_open():
    server, supervisor, registry = serve(StreamLimits(max_streams_per_client=2))
    with server, streams(server.port, "127.0.0.2", "127.0.0.2") as mine:
        status, retry_after, body = refused(server.port, "127.0.0.2")
        assert (status, retry_after) == (429, "5")
        assert body == b"too many streams from this client: reconnect later\n"
        with streams(server.port, "127.0.0.3", "127.0.0.3"):
            assert counted(server, supervisor) == (4, {"127.0.0.2": 2, "127.0.0.3": 2})
        mine.pop().close()
        wait_until(lambda: counted(server, supervisor) == (1, {"127.0.0.2": 1}))
        with streams(server.port, "127.0.0.2"):
            assert refused(server.port, "127.0.0.2")[0] == 429
        assert rejected(registry, "max_streams_per_client") == 2


def test_x_forwarded_for_names_the_client_only_when_the_peer_is_a_trusted_proxy():
    limits = StreamLimits(max_streams_per_client=1, trusted_proxies=["127.0.0.2", "127.0.10.0/24"])
    server, supervisor, _ = serve(limits)
    proxy, other_proxy, untrusted = "127.0.0.2", "127.0.10.7", "127.0.0.3"
    with server:
        with streams(server.port, proxy, forwarded="10.0.0.1"):
            assert counted(server, supervisor)[1] == {"10.0.0.1": 1}
            # The same client through another trusted proxy; and a client that prepends an address of
            # its choosing: the rightmost untrusted address, the one the proxy saw, is what counts.
            assert refused(server.port, other_proxy, "10.0.0.1")[0] == 429
            assert refused(server.port, proxy, "192.0.2.9, 10.0.0.1")[0] == 429
            assert refused(server.port, proxy, "10.0.0.1:4711")[0] == 429
            # Through two trusted proxies: the hop before them.
            assert refused(server.port, proxy, "10.0.0.1, 127.0.10.7")[0] == 429
            with streams(server.port, proxy, forwarded="10.0.0.2"):
                assert counted(server, supervisor)[1] == {"10.0.0.1": 1, "10.0.0.2": 1}
        wait_until(lambda: counted(server, supervisor) == (0, {}))
        # From a peer that is not a trusted proxy the header is ignored: it cannot pick its own name.
        with streams(server.port, untrusted, forwarded="10.0.0.5"):
            assert counted(server, supervisor)[1] == {untrusted: 1}
            assert refused(server.port, untrusted, "10.0.0.6")[0] == 429


def test_refusals_are_logged_once_per_interval_with_their_count_never_per_refusal():
    server, _, registry = serve(StreamLimits(max_streams=1, log_every=2.0))
    # At the suite's level (warning): the summaries are warnings.
    with structlog.testing.capture_logs() as entries, server, streams(server.port, "127.0.0.2") as held:
        for _ in range(20):
            assert refused(server.port)[0] == 503
        lines = [entry for entry in entries if entry["event"] == "stream.refused"]
        assert [(line["reason"], line["count"], line["log_level"]) for line in lines] == [("max_streams", 1, "warning")]
        time.sleep(2.1)
        assert refused(server.port)[0] == 503  # after the interval: the line for the 19 before it
        # A stream that ends after the next interval carries the line for the last one.
        time.sleep(2.1)
        held.pop().close()
        wait_until(lambda: len([e for e in entries if e["event"] == "stream.refused"]) == 3)
    lines = [entry for entry in entries if entry["event"] == "stream.refused"]
    assert [line["count"] for line in lines] == [1, 19, 1]
    assert all(line["limit"] == 1 and line["status"] == 503 for line in lines)
    assert 2.0 <= lines[1]["interval_s"] < 10
    assert rejected(registry, "max_streams") == 21


def test_the_caps_hold_under_trio_too():
    server, _, registry = serve(StreamLimits(max_streams=1), thread=HypercornTrioThread)
    with server, streams(server.port, "127.0.0.2"):
        assert refused(server.port)[:2] == (503, "5")
    assert rejected(registry, "max_streams") == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_streams": 0}, "max_streams must be a whole number >= 1, or None"),
        ({"max_streams": True}, "max_streams must be a whole number >= 1, or None"),
        ({"max_streams_per_client": 2.5}, "max_streams_per_client must be a whole number >= 1, or None"),
        ({"retry_after": -1}, "retry_after must be a whole number >= 0"),
        ({"log_every": 0}, "log_every must be a number of seconds > 0"),
        ({"trusted_proxies": ["10.0.0.0/8", "proxy.local"]}, "'proxy.local' is not an IP address or network"),
    ],
)
def test_settings_are_checked_with_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        StreamLimits(**settings)


def test_trusted_proxies_is_a_list_not_one_string():
    with pytest.raises(TypeError, match="a list of addresses or networks, not one string"):
        StreamLimits(trusted_proxies="10.0.0.1")


def test_the_address_cache_keeps_only_valid_addresses_cut_to_a_bound():
    """``X-Forwarded-For`` values from a trusted peer that are no address (here 200 distinct ones of
    512 KiB each) are not remembered: before, the cache of up to 4,096 client addresses kept each as
    given (600 of them held 318 MiB). What it keeps are valid addresses, each under a short key."""
    import ipaddress
    import tracemalloc

    from ssesup.limits import _MAX_CACHED, _MAX_KEY, Admission

    admission = Admission(StreamLimits(max_streams_per_client=2, trusted_proxies=["127.0.0.1"]), clock=time.monotonic)

    def scope(forwarded: bytes) -> dict:
        return {"client": ("127.0.0.1", 5000), "headers": [(b"x-forwarded-for", forwarded)]}

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keys = set()
    for n in range(200):
        keys.add(admission.client_key(scope(b"%d" % n + b"x" * (512 * 1024))))
    for n in range(100):
        keys.add(admission.client_key(scope(b"%s" % f"::FFFF:10.0.{n // 256}.{n % 256}".encode())))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert held < 2**20, f"{held / 2**20:.1f} MiB held"
    assert all(len(key) <= _MAX_KEY for key in keys) and len(keys) == 300
    assert ipaddress.ip_address("::ffff:10.0.0.1").compressed in keys  # normalised, however written
    assert len(admission._hosts) <= _MAX_CACHED
    assert all(len(host) <= _MAX_KEY for host in admission._hosts)
