"""The edge's own pieces, without a server: a socket of this process found by its two ends (granian's way),
the addresses of the kernel's table, and the warning at the first stream a server's connections cannot be
reached."""

from __future__ import annotations

import socket
import struct
import time

import pytest
import structlog

from ssesup import connection
from ssesup.edge import sockets
from ssesup.edge.sockets import OwnSocket, _address, normal


def test_the_kernels_addresses_read_as_the_scopes():
    assert _address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert _address("00000000000000000000000001000000:0050") == ("::1", 80)
    assert _address("0000000000000000FFFF00000100007F:0050") == ("127.0.0.1", 80)  # IPv4-mapped
    assert normal(("127.0.0.1", "8931")) == ("127.0.0.1", 8931)  # granian's port is a string
    assert normal(("::ffff:10.0.0.1", 5)) == ("10.0.0.1", 5)
    assert normal(None) is None


@pytest.fixture
def pair(monkeypatch):
    monkeypatch.setattr(sockets, "REBUILD_EVERY", 0.0)  # each look sees the connections made just before
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    yield server, client
    for sock in (listener, client, server):
        sock.close()


def test_a_socket_of_this_process_is_found_by_its_two_ends_and_released_with_a_reset(pair):
    server, client = pair
    own = OwnSocket(server.getsockname(), server.getpeername())
    assert own.unacknowledged() is False  # found: TCP_INFO read through a duplicate
    assert own.keeps_up() is False

    own.release()

    # Shut down under the server's feet (its reads end, its writes fail), to be reset when it closes it.
    assert server.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == struct.pack("ii", 1, 0)
    with pytest.raises(BrokenPipeError):
        server.send(b"more")
    client.settimeout(5)
    assert client.recv(10) == b""
    assert server.fileno() != -1  # the server's own descriptor is the server's to close
    server.close()
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        for _ in range(10):
            client.send(b"x")
            time.sleep(0.05)


def test_a_socket_bound_to_every_address_is_found_by_its_port(pair):
    server, _ = pair
    own = OwnSocket(("0.0.0.0", server.getsockname()[1]), server.getpeername())
    assert own.unacknowledged() is False


def test_a_socket_that_is_gone_is_not_found_and_nothing_is_done(pair):
    server, _ = pair
    own = OwnSocket(server.getsockname(), server.getpeername())
    assert own.unacknowledged() is False
    server.close()  # the descriptor may be reused now: the inode check refuses it
    other = socket.socket()
    try:
        assert own.unacknowledged() is None
        own.release()
    finally:
        other.close()


async def unknown_send(message):
    pass


def test_the_first_stream_of_each_http_version_warns_once_where_no_connection_is_found(monkeypatch):
    monkeypatch.setattr(connection, "_checked", set())
    with structlog.testing.capture_logs() as logs:
        for version in ("1.1", "1.1", "2", "2"):
            assert connection.supervised_send({"http_version": version}, unknown_send, None) is unknown_send
    warned = [entry for entry in logs if entry["event"] == "edge.connection_unknown"]
    assert [entry["http_version"] for entry in warned] == ["1.1", "2"]


def test_no_warning_where_the_connection_is_found(monkeypatch, pair):
    monkeypatch.setattr(connection, "_checked", set())
    monkeypatch.setattr(sockets, "readable", lambda: True)

    class Transport:  # what uvicorn's send leads to
        def __init__(self, sock):
            self.sock = sock

        def abort(self):
            pass

        def get_extra_info(self, name):
            return self.sock

    class Cycle:
        def __init__(self, transport):
            self.transport = transport

        async def send(self, message):
            pass

    send = Cycle(Transport(pair[0])).send
    with structlog.testing.capture_logs() as logs:
        assert connection.supervised_send({"http_version": "1.1"}, send, None) is send
    assert not [entry for entry in logs if entry["event"] == "edge.connection_unknown"]


def test_no_warning_for_a_test_client_that_calls_the_app_in_process(monkeypatch):
    from ssesup.testing import SSEClient

    monkeypatch.setattr(connection, "_checked", set())

    async def app(scope, receive, send):
        with structlog.testing.capture_logs() as logs:
            connection.supervised_send(scope, send, None)
        app.logs = logs
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with SSEClient(app) as client:
        client.stream("/")
    assert app.logs == []


def test_a_uvloop_connection_is_read_through_one_socket_object_that_never_closes_its_descriptor():
    """uvloop's socket stand-in builds a socket object at every read of an option: the dead-peer check
    reads through one of ssesup's own instead, made once, that never closes the server's descriptor,
    and reads nothing once the transport has closed it (the number may belong to another connection)."""
    import asyncio
    import gc
    import os

    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future = loop.create_future()

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.set_result(transport)

        server = await loop.create_server(Protocol, "127.0.0.1", 0)
        client = socket.create_connection(server.sockets[0].getsockname())
        try:
            transport = await accepted
            stand_in = transport.get_extra_info("socket")
            fd = stand_in.fileno()
            found = connection.Connection(transport, stand_in)
            assert found.unacknowledged() is False
            reader = found._reader
            assert reader is not stand_in and reader.fileno() == fd
            assert found.unacknowledged() is False and found._reader is reader  # made once
            del found, reader
            gc.collect()
            os.fstat(fd)  # still open: ssesup's object let go of it
            kept = connection.Connection(transport, stand_in)
            assert kept.unacknowledged() is False
            transport.abort()
            await asyncio.sleep(0.05)
            assert kept.unacknowledged() is None  # closed by the server: never read again
        finally:
            client.close()
            server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
