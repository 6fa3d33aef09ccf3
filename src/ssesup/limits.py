"""Admission of new streams: caps on concurrent streams, globally, per client and per user.

Owns: deciding whether a new stream may open (:meth:`Admission.admit`) and counting the streams it let
in until they leave (:meth:`Admission.leave`); the :class:`Refusal` a refused stream answers with; the
client a stream counts for (the peer address, or ``X-Forwarded-For`` from a trusted proxy); the log of
refusals, one line per reason per interval (:class:`~ssesup.logs.SummaryLog`). Does not own: the
drain's refusal (the supervisor's), sending the refusal (the actor's), the metric of refusals (the
supervisor's observers hear ``rejected``).

Counts are per event loop, like the rest of the live supervision: with several loops (threads) or
worker processes, each has its own caps. With no :class:`StreamLimits` there is no :class:`Admission`
and nothing is counted.

The client. ``scope["client"][0]`` is the peer as the server reports it, and the server may already
have replaced it from ``X-Forwarded-For``: uvicorn does so for peers it trusts (``--proxy-headers``,
on by default, and ``--forwarded-allow-ips``, by default ``127.0.0.1``). Behind a proxy on the same
host that is what you want; but then anything that connects from 127.0.0.1 names its own client, and
may spread its streams over as many invented clients as it likes. Where that matters, give the server
the proxies it may trust (``--forwarded-allow-ips``) or turn its rewriting off (``--no-proxy-headers``)
and list the proxies in :attr:`StreamLimits.trusted_proxies` instead. ssesup reads
``X-Forwarded-For`` only when the peer it sees is one of those, and then counts the stream for the
rightmost address that is not a trusted proxy (the one the last trusted proxy saw); addresses left of
it were written by the client and are ignored.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.types import Scope, Send

from ssesup import checks
from ssesup._loop import LoopPrimitives
from ssesup.logs import SummaryLog, escape

if TYPE_CHECKING:
    from ssesup.stream import SupervisedStream

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# By default, one warning per refusal reason per this many seconds, with the count refused meanwhile.
LOG_EVERY = 10.0
# A client key longer than this (a forwarded value that is no address) is cut: keys are held while
# streams are counted.
_MAX_KEY = 64
# Valid addresses whose key and trust are remembered (emptied when full: the next ones are parsed again):
# at most _MAX_CACHED keys of at most _MAX_KEY characters.
_MAX_CACHED = 4096


@dataclass(frozen=True)
class Refusal:
    """What a refused stream answers: ``status`` with ``Retry-After``, and a short text body."""

    status: int
    retry_after: int
    reason: str
    """The ``reason`` label of ``ssesup_streams_rejected_total``."""
    body: bytes

    async def respond(self, send: Send) -> None:
        """Answer with the refusal: its status, ``Retry-After`` and a short text body."""
        headers = [
            (b"retry-after", str(self.retry_after).encode()),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(self.body)).encode()),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


@dataclass(frozen=True)
class StreamLimits:
    """Caps on concurrent streams (``None``: no cap), counted per event loop.

    ``max_streams``: streams open at once; a stream over it is refused with ``503``
    (reason ``max_streams``). ``max_streams_per_client``: streams open at once for one client; over it,
    ``429`` (reason ``max_streams_per_client``). ``max_streams_per_user``: streams open at once for one
    user (a stream's ``user``; anonymous streams are not counted); over it, ``429`` (reason
    ``max_streams_per_user``). Every cap counts per event loop (one per worker process), not across
    processes: admission is decided on the request's path, where a round trip to a shared store would
    cost every stream its latency and leave counts behind when a worker dies. ``trusted_proxies``: addresses or networks
    (``"10.0.0.0/8"``) whose ``X-Forwarded-For`` names the client (see the module's docstring).
    ``retry_after``: the ``Retry-After`` seconds of both refusals. ``log_every``: seconds between two
    ``stream.refused`` warnings of one reason (each says how many were refused since the last).
    """

    max_streams: int | None = None
    max_streams_per_client: int | None = None
    max_streams_per_user: int | None = None
    trusted_proxies: Iterable[str | Network | ipaddress.IPv4Address | ipaddress.IPv6Address] = ()
    retry_after: int = 5
    log_every: float = LOG_EVERY
    networks: tuple[Network, ...] = field(init=False, repr=False, compare=False)
    """``trusted_proxies`` parsed."""

    def __post_init__(self) -> None:
        for name in ("max_streams", "max_streams_per_client", "max_streams_per_user"):
            checks.optional_whole(name, getattr(self, name), minimum=1, none="no cap")
        checks.whole("retry_after", self.retry_after, minimum=0)
        checks.seconds("log_every", self.log_every, positive=True)
        if isinstance(self.trusted_proxies, (str, bytes)):
            raise TypeError(
                f"trusted_proxies is a list of addresses or networks, not one string: [{self.trusted_proxies!r}]"
            )
        networks = []
        for proxy in self.trusted_proxies:
            try:
                networks.append(ipaddress.ip_network(proxy, strict=False))
            except (TypeError, ValueError):
                raise ValueError(f"trusted_proxies: {proxy!r} is not an IP address or network") from None
        object.__setattr__(self, "trusted_proxies", tuple(self.trusted_proxies))
        object.__setattr__(self, "networks", tuple(networks))


class Admission:
    """One event loop's count of admitted streams, under one :class:`StreamLimits`.

    Made by the loop's supervision, on its loop (``clock``: that loop's clock unless given).
    """

    def __init__(self, limits: StreamLimits, clock: Callable[[], float] | None = None) -> None:
        self.limits = limits
        self.total = 0
        """Streams admitted and not yet left."""
        self.per_client: dict[str, int] = {}
        """Streams admitted and not yet left, by client key (clients with none are absent)."""
        self.per_user: dict[str, int] = {}
        """Streams admitted and not yet left, by user, when the per-user cap is on (users with none are absent)."""
        # The client key and the user each admitted stream counts for (None: that cap is off, or anonymous).
        self._counted: dict[SupervisedStream, tuple[str | None, str | None]] = {}
        self._max_total = limits.max_streams
        self._max_per_client = limits.max_streams_per_client
        self._max_per_user = limits.max_streams_per_user
        self._networks = limits.networks
        self._hosts: dict[str, tuple[str, bool]] = {}
        self.busy = Refusal(503, limits.retry_after, "max_streams", b"server busy: reconnect later\n")
        self.too_many = Refusal(
            429, limits.retry_after, "max_streams_per_client", b"too many streams from this client: reconnect later\n"
        )
        self.too_many_for_user = Refusal(
            429, limits.retry_after, "max_streams_per_user", b"too many streams for this user: reconnect later\n"
        )
        self._log = SummaryLog(
            "stream.refused", clock=clock or LoopPrimitives().clock, interval=limits.log_every, level=logging.WARNING
        )

    def admit(self, stream: SupervisedStream, scope: Scope) -> Refusal | None:
        """``None`` when ``stream`` may open (it is counted until :meth:`leave`), else the refusal."""
        if self._max_total is not None and self.total >= self._max_total:
            self._log.note(self.busy.reason, reason=self.busy.reason, limit=self._max_total, status=503)
            return self.busy
        key = None
        if self._max_per_client is not None:
            key = self.client_key(scope)
            count = self.per_client.get(key, 0)
            if count >= self._max_per_client:
                self._log.note(
                    self.too_many.reason,
                    reason=self.too_many.reason,
                    limit=self._max_per_client,
                    status=429,
                    client=escape(key),
                )
                return self.too_many
        user = stream.user if self._max_per_user is not None else None
        if user is not None:
            assert self._max_per_user is not None
            if self.per_user.get(user, 0) >= self._max_per_user:
                refusal = self.too_many_for_user
                self._log.note(
                    refusal.reason, reason=refusal.reason, limit=self._max_per_user, status=429, user=escape(user)
                )
                return refusal
            self.per_user[user] = self.per_user.get(user, 0) + 1
        if key is not None:
            self.per_client[key] = self.per_client.get(key, 0) + 1
        self.total += 1
        self._counted[stream] = (key, user)
        return None

    def leave(self, stream: SupervisedStream) -> None:
        """``stream`` has ended: it no longer counts."""
        try:
            key, user = self._counted.pop(stream)
        except KeyError:
            return
        self.total -= 1
        if key is not None:
            _uncount(self.per_client, key)
        if user is not None:
            _uncount(self.per_user, user)
        self._log.flush()

    def client_key(self, scope: Scope) -> str:
        """The client a stream of ``scope`` counts for: the peer address, or, when the peer is a trusted
        proxy, the rightmost ``X-Forwarded-For`` address that is not one ("" when the server gave none)."""
        client = scope.get("client")
        peer, trusted = self._host(client[0] if client else "")
        if not trusted:
            return peer
        forwarded = [value for name, value in scope.get("headers", ()) if name == b"x-forwarded-for"]
        for hop in reversed(b",".join(forwarded).decode("latin-1").split(",")):
            host, trusted = self._host(_without_port(hop.strip()))
            if host and not trusted:
                return host
        return peer  # no header, or every hop is a trusted proxy: the request began at one of them

    def _host(self, host: str) -> tuple[str, bool]:
        """``host`` as a key (one per address however it is written, ``::FFFF:0a00:1`` as
        ``::ffff:10.0.0.1``; cut when it is no address), and whether it is a trusted proxy. Valid
        addresses are cached (parsing one costs microseconds, and a client's streams come from few
        addresses), and only those, under a key of at most ``_MAX_KEY`` characters: what a client writes
        in ``X-Forwarded-For`` (up to what the server accepts in a header) is never kept as given."""
        known = self._hosts.get(host)
        if known is not None:
            return known
        if len(host) > _MAX_KEY:  # no address is this long (an IPv6 address with a zone, at most ~60)
            return host[:_MAX_KEY], False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host, False
        known = (address.compressed, any(address in network for network in self._networks))
        if len(self._hosts) >= _MAX_CACHED:
            self._hosts.clear()
        self._hosts[host] = known
        return known


def _uncount(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


def _without_port(hop: str) -> str:
    """The address of one ``X-Forwarded-For`` entry, without a port (``1.2.3.4:80``, ``[::1]:80``)."""
    if hop.startswith("["):
        return hop[1:].partition("]")[0]
    if hop.count(":") == 1:
        return hop.partition(":")[0]
    return hop
