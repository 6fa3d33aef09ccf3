"""A raw HTTP/2 client for the tests: many streams on one connection, per-stream flow control.

Owns: one TCP (or TLS with ALPN ``h2``) connection speaking HTTP/2 with prior knowledge, driven by the
``h2`` package; a reader thread that records, per stream, the head, the body, and how it ended
(``END_STREAM``, ``RST_STREAM`` with its code, or not at all when the connection went away). A stream
opened ``stalled`` never gets its flow-control window reopened: the server can send it 64 KiB (the
default initial window) and then no more, while the connection's own window is reopened for every
byte received, so its siblings stream on. Does not own: what a test asserts.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import ClassVar

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class _GoawayKeepsStreams(h2.connection.H2ConnectionStateMachine):
    """A server's graceful GOAWAY lets the streams it names finish (RFC 9113, 6.8), but the h2 package's
    connection closes on it and refuses every later frame (granian sends a PING right after its GOAWAY,
    then the drain's farewells): here a GOAWAY leaves the connection open."""

    _transitions: ClassVar = {
        **h2.connection.H2ConnectionStateMachine._transitions,
        (h2.connection.ConnectionState.CLIENT_OPEN, h2.connection.ConnectionInputs.RECV_GOAWAY): (
            None,
            h2.connection.ConnectionState.CLIENT_OPEN,
        ),
    }


@dataclass
class H2Stream:
    """One request's response as the client saw it."""

    stream_id: int
    path: str
    stalled: bool
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    ended: bool = False  # END_STREAM: a proper end of body
    reset_code: int | None = None  # RST_STREAM from the server
    ended_at: float | None = None
    changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    @property
    def finished(self) -> bool:
        return self.ended or self.reset_code is not None


class H2Client:
    """One HTTP/2 connection; ``request(path)`` opens a stream on it."""

    def __init__(
        self, host: str, port: int, *, tls: bool = False, sock: socket.socket | None = None, rcvbuf: int | None = None
    ) -> None:
        if sock is None:
            sock = socket.socket()
            if rcvbuf is not None:  # before connecting: a client that stops reading stops the server soon
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(10)
            sock.connect((host, port))
        raw = sock
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["h2"])
            raw = context.wrap_socket(raw, server_hostname=host)
            assert raw.selected_alpn_protocol() == "h2", raw.selected_alpn_protocol()
        raw.settimeout(None)
        self.sock = raw
        self.host = host
        self.scheme = "https" if tls else "http"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.state_machine = _GoawayKeepsStreams()
        self.lock = threading.Lock()
        self.streams: dict[int, H2Stream] = {}
        self.closed_at: float | None = None  # when the connection ended (EOF, reset, GOAWAY)
        self.close_error: str | None = None
        self.goaway: int | None = None
        self.reading = threading.Event()  # cleared: the client stops reading the connection at all
        self.reading.set()
        with self.lock:
            self.conn.initiate_connection()
            self._flush()
        self._reader = threading.Thread(target=self._read, name=f"h2-{port}", daemon=True)
        self._reader.start()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.reading.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(5)

    def request(self, path: str, *, stalled: bool = False) -> H2Stream:
        with self.lock:
            stream_id = self.conn.get_next_available_stream_id()
            stream = self.streams[stream_id] = H2Stream(stream_id, path, stalled)
            headers = [
                (b":method", b"GET"),
                (b":scheme", self.scheme.encode()),
                (b":authority", self.host.encode()),
                (b":path", path.encode()),
                (b"accept", b"text/event-stream"),
            ]
            self.conn.send_headers(stream_id, headers, end_stream=True)
            self._flush()
        return stream

    def cancel(self, stream: H2Stream) -> None:
        """Reset ``stream`` from the client's side (a closed EventSource; the connection stays)."""
        with self.lock:
            self.conn.reset_stream(stream.stream_id, 0x8)
            self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _read(self) -> None:
        try:
            while True:
                self.reading.wait()
                data = self.sock.recv(65536)
                if not data:  # the server closed the connection: close ours, as a browser does
                    self.close_error = "eof"
                    with contextlib.suppress(OSError):
                        self.sock.shutdown(socket.SHUT_RDWR)
                    break
                with self.lock:
                    events = self.conn.receive_data(data)
                    for event in events:
                        self._handle(event)
                    self._flush()
        except (OSError, h2.exceptions.ProtocolError) as error:
            self.close_error = f"{type(error).__name__}: {error}"
        finally:
            self.closed_at = time.monotonic()
            for stream in self.streams.values():
                with stream.changed:
                    stream.changed.notify_all()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event.error_code
            return
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if stream is None:
            return
        with stream.changed:
            if isinstance(event, h2.events.ResponseReceived):
                stream.headers = list(event.headers)
                stream.status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                stream.body += event.data
                size = event.flow_controlled_length
                if size:
                    if stream.stalled:
                        # The connection's window reopens (its siblings go on), the stream's never does.
                        self.conn.increment_flow_control_window(size)
                    else:
                        with contextlib.suppress(h2.exceptions.StreamClosedError):
                            self.conn.acknowledge_received_data(size, stream.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                stream.ended = True
                stream.ended_at = time.monotonic()
            elif isinstance(event, h2.events.StreamReset):
                stream.reset_code = int(event.error_code)
                stream.ended_at = time.monotonic()
            stream.changed.notify_all()

    def wait(self, stream: H2Stream, predicate, timeout: float = 10.0) -> bool:
        """Wait until ``predicate(stream)`` holds (True), or the timeout passes or the connection ends (False)."""
        deadline = time.monotonic() + timeout
        with stream.changed:
            while not predicate(stream):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed_at is not None:
                    return predicate(stream)
                stream.changed.wait(min(remaining, 0.1))
        return True

    def wait_for(self, stream: H2Stream, marker: bytes, timeout: float = 10.0) -> None:
        if not self.wait(stream, lambda s: marker in s.body, timeout):
            raise AssertionError(
                f"stream {stream.stream_id} {stream.path}: no {marker!r} within {timeout} s "
                f"(connection: {self.close_error}); got {stream.body[-200:]!r}"
            )
