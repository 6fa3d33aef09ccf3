"""A real network for tests: Linux network namespaces joined by veth pairs, peers that vanish for real.

Owns: creating and always removing the namespaces (one for the server, one per group of clients, each
group on its own veth pair and private /30), running a server command inside the server namespace,
opening client sockets inside a client namespace (from this process: a short-lived thread enters the
namespace with ``setns`` and makes the socket, which stays in that namespace), black-holing a client
namespace with nftables (every packet in and out dropped: no FIN, no RST ever reaches the server), and
reading the server side: its TCP connections (``ss``), its socket file descriptors and its log.

Does not own: what a test asserts, nor the app it serves (tests/apps/network_app.py). Needs root,
``ip`` and ``nft`` (scripts/install-netns-tools.sh). :func:`namespaces_unavailable` says why when the
kernel refuses namespaces; the tests skip with that reason (never silently).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from procs import running

TESTS = Path(__file__).parent
PORT = 8000  # the server namespace is ours alone: the port is always free there
CLONE_NEWNET = 0x40000000
END_OF_BODY = b"\r\n0\r\n\r\n"
BLACKHOLE = """
table inet ssesup_blackhole {
    chain incoming { type filter hook input priority -300; policy drop; }
    chain outgoing { type filter hook output priority -300; policy drop; }
}
"""
_libc = ctypes.CDLL(None, use_errno=True)
_networks = itertools.count()


def run(*argv: str) -> str:
    """Run a command; its stdout. Raises with its stderr when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"ssesup-probe-{os.getpid()}"
    try:
        run("ip", "netns", "add", probe)
    except RuntimeError as error:
        if "Operation not permitted" in str(error) or "Permission denied" in str(error):
            return f"the kernel does not permit network namespaces here: {error}"
        raise
    run("ip", "netns", "del", probe)
    return None


def socket_in(namespace: str, *, rcvbuf: int | None = None) -> socket.socket:
    """A TCP socket made inside ``namespace`` (it stays there whichever thread uses it).

    ``rcvbuf`` sets ``SO_RCVBUF`` before any connection, so a client that stops reading stops the
    server's sends after a few KiB.
    """
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns({namespace}): {os.strerror(code)}")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            made.append(sock)
        except BaseException as error:
            made.append(error)

    thread = threading.Thread(target=make, name=f"setns-{namespace}")  # the thread dies in the namespace
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


@dataclass(frozen=True)
class Peer:
    """A client namespace: its address, and the server's address on its veth pair."""

    namespace: str
    address: str
    server_address: str


@dataclass
class Network:
    """A server namespace and named client namespaces; every socket made here is closed at the end."""

    server_namespace: str
    peers: dict[str, Peer]
    sockets: list[socket.socket] = field(default_factory=list)

    def blackhole(self, peer: str) -> None:
        """Drop every packet into and out of ``peer``'s namespace, from now on: to the server its
        clients vanish without a FIN or a RST, whatever they do (close, exit) afterwards."""
        subprocess.run(
            ["ip", "netns", "exec", self.peers[peer].namespace, "nft", "-f", "-"],
            input=BLACKHOLE,
            text=True,
            check=True,
            timeout=20,
        )

    def connect(self, peer: str, *, rcvbuf: int | None = None, timeout: float = 10.0) -> socket.socket:
        """A connection from ``peer``'s namespace to the server."""
        sock = socket_in(self.peers[peer].namespace, rcvbuf=rcvbuf)
        self.sockets.append(sock)
        sock.settimeout(timeout)
        sock.connect((self.peers[peer].server_address, PORT))
        return sock

    def in_server(self, *argv: str) -> list[str]:
        """``argv`` run inside the server namespace."""
        return ["ip", "netns", "exec", self.server_namespace, *argv]

    def request(self, path: str, timeout: float = 10.0) -> bytes:
        """A whole response (head and body) to ``GET path``, asked from inside the server namespace."""
        with socket_in(self.server_namespace) as sock:
            sock.settimeout(timeout)
            sock.connect(("127.0.0.1", PORT))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@contextlib.contextmanager
def network(*peers: str) -> Iterator[Network]:
    """A server namespace and one client namespace per name in ``peers``, each on its own veth pair
    (server ``10.251.0.(4k+1)/30``, client ``.(4k+2)/30``); all removed at the end, even on failure.
    Names hold this process's id and a counter, so parallel runs never collide."""
    prefix = f"ssesup-t{os.getpid()}-{next(_networks)}"
    server_ns = f"{prefix}-srv"
    made: list[str] = []
    net = Network(server_ns, {})
    try:
        run("ip", "netns", "add", server_ns)
        made.append(server_ns)
        run("ip", "-n", server_ns, "link", "set", "lo", "up")
        for k, name in enumerate(peers):
            client_ns = f"{prefix}-{name}"
            run("ip", "netns", "add", client_ns)
            made.append(client_ns)
            server_ip, client_ip = f"10.251.0.{4 * k + 1}", f"10.251.0.{4 * k + 2}"
            # Made inside the namespaces: the interface names never meet the host's.
            run("ip", "link", "add", "name", f"srv{k}", "netns", server_ns, "type", "veth",
                "peer", "name", "cli", "netns", client_ns)  # fmt: skip
            run("ip", "-n", server_ns, "addr", "add", f"{server_ip}/30", "dev", f"srv{k}")
            run("ip", "-n", client_ns, "addr", "add", f"{client_ip}/30", "dev", "cli")
            run("ip", "-n", server_ns, "link", "set", f"srv{k}", "up")
            run("ip", "-n", client_ns, "link", "set", "cli", "up")
            run("ip", "-n", client_ns, "link", "set", "lo", "up")
            net.peers[name] = Peer(client_ns, client_ip, server_ip)
        yield net
    finally:
        for sock in net.sockets:
            sock.close()
        for namespace in reversed(made):
            with contextlib.suppress(RuntimeError):
                run("ip", "netns", "del", namespace)  # its veth ends go with it


@dataclass(frozen=True)
class Connection:
    """One TCP connection of the server, as ``ss`` shows it; ``fds``: descriptors of it still open."""

    state: str
    recv_q: int
    send_q: int
    local: str
    peer: str
    fds: int

    @property
    def peer_port(self) -> int:
        return int(self.peer.rpartition(":")[2])

    @property
    def holds(self) -> bool:
        """Still holding the connection: open, a descriptor of it open, or bytes the kernel still keeps."""
        return self.state in ("ESTAB", "CLOSE-WAIT") or self.fds > 0 or self.send_q > 0


@dataclass
class NamespacedServer:
    """A server process (and its workers) running inside a network's server namespace."""

    process: subprocess.Popen
    network: Network
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def pids(self) -> list[int]:
        """The server process and every process of its session (gunicorn's workers, say)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                    if int(stat[3]) == self.process.pid:  # field 6: the session id
                        found.append(int(entry))
        return found

    def socket_fds(self) -> int:
        """Open socket file descriptors over the server's processes."""
        count = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        return count

    def connections(self) -> list[Connection]:
        """Every TCP connection in the server namespace but the listening ones (all are the server's),
        with the descriptors the server's processes hold of each."""
        rows = []
        for line in run(*self.network.in_server("ss", "-tanpH")).splitlines():
            state, recv_q, send_q, local, peer, *users = line.split()
            if state != "LISTEN":
                rows.append(Connection(state, int(recv_q), int(send_q), local, peer, " ".join(users).count("fd=")))
        return rows

    def held(self, ports: set[int]) -> list[Connection]:
        """The connections to client ``ports`` that the server still holds."""
        return [c for c in self.connections() if c.peer_port in ports and c.holds]

    def wait_unsendable(self, ports: set[int], timeout: float = 10.0) -> None:
        """Wait until the server has bytes queued that it cannot send on every connection to ``ports``."""
        deadline = time.monotonic() + timeout
        while {c.peer_port for c in self.connections() if c.send_q > 0} < ports:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no bytes queued for {ports} within {timeout} s: {self.connections()}")
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> float | None:
        """Seconds until the server process exits, or ``None`` when it is still running after ``timeout``."""
        started = time.monotonic()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return time.monotonic() - started


@contextlib.contextmanager
def serve(
    net: Network, argv: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[NamespacedServer]:
    """Run ``argv`` (listening on 0.0.0.0:``PORT``) inside ``net``'s server namespace until it answers
    there; kill its whole process group at the end. The server imports from tests/ and from this
    process's ``PYTHONPATH``."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    environment = {**os.environ, "PYTHONPATH": path, **(env or {})}

    def answers() -> bool:
        try:
            return net.request("/", timeout=2).startswith(b"HTTP/")  # any answer: it serves
        except OSError as error:
            if error.errno not in (errno.ECONNREFUSED, errno.ECONNRESET, None):
                raise
            return False

    with running(net.in_server(*argv), log_path, environment, answers, 30, "in its namespace") as process:
        yield NamespacedServer(process, net, log_path)


class StreamClient:
    """One SSE request on a socket: reads its head and first event, then reads on (in a thread) or not."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.body = b""
        self.closed_at: float | None = None
        self._reader: threading.Thread | None = None
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: server\r\n\r\n".encode())

    def read_until(self, marker: bytes, timeout: float = 10.0) -> None:
        """Read until ``marker`` arrived (the ``hello`` event, say)."""
        deadline = time.monotonic() + timeout
        while marker not in self.body:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {marker!r} within {timeout} s; got {self.body[-200:]!r}")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}; got {self.body[-200:]!r}")
            self.body += chunk

    def read_on(self, timeout: float) -> None:
        """Read in a thread until the body ends, the connection closes, or ``timeout`` passes."""

        def read() -> None:
            deadline = time.monotonic() + timeout
            with contextlib.suppress(OSError):
                while not self.body.endswith(END_OF_BODY) and time.monotonic() < deadline:
                    self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        break
                    self.body += chunk
            self.closed_at = time.monotonic()

        self._reader = threading.Thread(target=read, name=f"reader-{self.port}", daemon=True)
        self._reader.start()

    def join(self, timeout: float) -> None:
        assert self._reader is not None
        self._reader.join(timeout)

    @property
    def ended_cleanly(self) -> bool:
        """The chunked body ended with its terminator: not a cut connection."""
        return self.body.endswith(END_OF_BODY)


def closes(path: Path) -> list[tuple[float, str, str, int]]:
    """The app's close records: ``(unix time, route, reason, client port)``."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        at, route, reason, client = line.split()
        rows.append((float(at), route, reason, int(client.rpartition(":")[2])))
    return rows
