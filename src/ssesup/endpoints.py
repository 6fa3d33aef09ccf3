"""The small ASGI apps operators mount: readiness, liveness, and the authenticated drain endpoint.

Owns: their answers (JSON, ``no-store``), the drain endpoint's token check (constant time) and its
back-off for wrong tokens (per peer, and for all past a number of peers), counted and logged once per
interval. Does not own: the drain (the supervisor's), or whether they are mounted (off unless an app
mounts them).
"""

from __future__ import annotations

import hmac
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from ssesup import checks
from ssesup.logs import SummaryLog, escape

if TYPE_CHECKING:
    from ssesup.supervisor import Supervisor


async def _respond(send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class ReadinessEndpoint:
    """``200`` while this process takes new streams, ``503`` from the first moment of a drain."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.supervisor.loop_supervision.draining:
            await _respond(send, 503, {"ready": False, "draining": True})
        else:
            await _respond(send, 200, {"ready": True, "draining": False})


class LivenessEndpoint:
    """``200`` while the process runs, drain or not."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, {"alive": True})


class DrainEndpoint:
    """``POST`` with ``Authorization: Bearer <token>`` drains this process's supervisor.

    ``401`` without a bearer token, ``403`` with a wrong one (compared in constant time), ``405`` for any
    other method. ``?wait=1`` answers when the drain is over; otherwise ``202`` at once.

    Brute force is slowed down. A peer (the address the server reports) may present ``free_failures``
    wrong tokens; each further one makes it wait ``backoff[0]`` seconds, doubling up to ``backoff[1]``.
    Meanwhile its requests are answered ``429`` with ``Retry-After``, their token not even compared, so
    waiting is the only way on; once the wait is over the right token works at once, and resets the
    count. All peers together may present ``global_free_failures`` wrong tokens before every peer
    waits the same way: an attacker who rotates addresses (or, behind a proxy the server trusts,
    ``X-Forwarded-For`` values) is slowed down too, at the price that the operator then waits as well
    (a drain on SIGTERM is not affected). A count is forgotten after ``forget_after`` seconds without a
    wrong token; at most ``max_peers`` peers are remembered (the longest quiet is forgotten first).

    Every refusal is counted (``ssesup_drain_auth_failures_total{reason}``: ``missing_token``,
    ``wrong_token``, ``backoff``) and logged as ``drain.auth_failed``, one warning per reason per
    ``LOG_EVERY`` seconds with the count and the last peer (escaped); the token is never logged.
    """

    LOG_EVERY = 10.0

    def __init__(
        self,
        supervisor: Supervisor,
        token: str,
        *,
        free_failures: int = 3,
        global_free_failures: int = 30,
        backoff: tuple[float, float] = (1.0, 60.0),
        forget_after: float = 900.0,
        max_peers: int = 1024,
    ) -> None:
        if not isinstance(token, str) or len(token) < 16:
            raise ValueError("the drain endpoint needs a token of at least 16 characters")
        checks.whole("free_failures", free_failures, minimum=0)
        checks.whole("global_free_failures", global_free_failures, minimum=0)
        first, longest = checks.seconds_range("backoff", backoff)
        if not first > 0:
            raise ValueError(f"backoff must be (first wait, longest wait) with 0 < first <= longest, not {backoff!r}")
        if not forget_after >= longest:
            raise ValueError(
                f"forget_after must be at least the longest back-off ({longest!r} s), not {forget_after!r}"
            )
        checks.whole("max_peers", max_peers, minimum=1)
        self.supervisor = supervisor
        self._token = token.encode()
        self._peers = _FailedAttempts(free_failures, backoff, forget_after)
        self._everyone = _FailedAttempts(global_free_failures, backoff, forget_after)
        self._max_peers = max_peers
        self._lock = threading.Lock()  # one endpoint may serve several event loops (threads)
        self._log = SummaryLog("drain.auth_failed", clock=time.monotonic, interval=self.LOG_EVERY)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            await _respond(send, 405, {"error": "method not allowed"}, [(b"allow", b"POST")])
            return
        client = scope.get("client")
        peer: str = client[0] if client else ""
        now = time.monotonic()
        with self._lock:
            wait = max(self._peers.wait(peer, now), self._everyone.wait("", now))
        if wait > 0:
            self._refused(peer, "backoff")
            retry_after = str(math.ceil(wait)).encode()
            await _respond(send, 429, {"error": "too many failed attempts"}, [(b"retry-after", retry_after)])
            return
        authorization = dict(scope.get("headers", ())).get(b"authorization", b"")
        scheme, _, presented = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not presented.strip():
            self._refused(peer, "missing_token")
            await _respond(send, 401, {"error": "unauthorized"}, [(b"www-authenticate", b'Bearer realm="ssesup"')])
            return
        if not hmac.compare_digest(presented.strip(), self._token):
            with self._lock:
                self._peers.failed(peer, now)
                self._peers.bound(self._max_peers)
                self._everyone.failed("", now)
            self._refused(peer, "wrong_token")
            await _respond(send, 403, {"error": "forbidden"})
            return
        with self._lock:
            self._peers.forget(peer)
            self._everyone.forget("")
        wait = scope.get("query_string", b"") in (b"wait=1", b"wait=true")
        report = await self.supervisor.drain(wait=wait)
        await _respond(send, 200 if wait else 202, report)

    def _refused(self, peer: str, reason: str) -> None:
        with self._lock:
            self._log.note(reason, reason=reason, peer=escape(peer))
        self.supervisor.notify("drain_auth_failed", reason)


class _FailedAttempts:
    """Wrong tokens by key (a peer; ``""`` for everyone), and the back-off they earned. Not locked."""

    def __init__(self, free: int, backoff: tuple[float, float], forget_after: float) -> None:
        self.free = free
        self.first, self.longest = backoff
        self.forget_after = forget_after
        # key -> [wrong tokens, waits until, last wrong token]; the longest quiet first
        self.entries: OrderedDict[str, list[float]] = OrderedDict()

    def wait(self, key: str, now: float) -> float:
        """Seconds ``key`` must still wait (0: none)."""
        entry = self.entries.get(key)
        if entry is None:
            return 0.0
        if now - entry[2] > self.forget_after:
            del self.entries[key]
            return 0.0
        return max(entry[1] - now, 0.0)

    def failed(self, key: str, now: float) -> None:
        entry = self.entries.get(key)
        if entry is None or now - entry[2] > self.forget_after:
            entry = self.entries[key] = [0, now, now]
        entry[0] += 1
        entry[2] = now
        beyond = entry[0] - self.free
        if beyond > 0:
            entry[1] = now + min(self.first * 2 ** min(beyond - 1, 32), self.longest)
        self.entries.move_to_end(key)

    def forget(self, key: str) -> None:
        self.entries.pop(key, None)

    def bound(self, size: int) -> None:
        while len(self.entries) > size:
            self.entries.popitem(last=False)
