"""Channels with lossless resume: :class:`Hub`.

Owns: the hub's API (``publish``, ``stream``, ``subscribe``, ``readiness``, ``aclose``; runs:
``start_run``, ``cancel_run``, ``run_status``), its settings, choosing the engine from a URL, timing and
counting engine calls. Does not own storage (the engines: ``ssesup.hub.memory``, ``ssesup.hub.redis``,
behind ``ssesup.hub.backend``), the per-loop reader (``ssesup.hub.fanout``), a subscriber's mailbox and
ids (``ssesup.hub.subscription``) or a run's life (``ssesup.hub.runs``).

``Hub()`` keeps history in this process's memory; ``Hub("redis://...")`` in Redis Streams, shared by
every process and host that uses the same server (install ``ssesup[redis]``). Nothing needs a lifespan:
the engine is reached on first use on each event loop, and the loop's reader ends with its last
subscriber. ``await hub.aclose()`` (in a lifespan's shutdown, say) stops this loop's presence task and
follower of ``!control`` and releases its connections.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio
from anyio.lowlevel import RunVar
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ssesup import checks
from ssesup._loop import loop_local
from ssesup.events import Event, json_data
from ssesup.hub.backend import ACTIVE, Backend, Entry, History, HubUnavailable, RunBounds
from ssesup.hub.channels import MAX_CHANNEL_LENGTH, InvalidChannel, check_channel, check_channels, internal_channel
from ssesup.hub.control import CHANNEL as CONTROL_CHANNEL
from ssesup.hub.control import LoopControl, revoke_message
from ssesup.hub.fanout import LoopHub
from ssesup.hub.ids import GapReason, channels_digest, format_id
from ssesup.hub.mailbox import Overflow
from ssesup.hub.metrics import HubCounters, NoCounters, hub_metrics
from ssesup.hub.presence import LoopPresence, summed
from ssesup.hub.runs import CONTROL, LoopRuns, Run, RunActive, RunRefused, RunStatus, start_run
from ssesup.hub.subscription import Subscription
from ssesup.identity import check_user
from ssesup.logs import redact_query
from ssesup.revocation import disconnect_everywhere, watch_identified
from ssesup.stream import SupervisedStream
from ssesup.supervisor import Supervisor, supervisor_for

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


__all__ = [
    "MAX_CHANNEL_LENGTH",
    "Backend",
    "Entry",
    "GapReason",
    "History",
    "Hub",
    "HubUnavailable",
    "InvalidChannel",
    "Overflow",
    "Run",
    "RunActive",
    "RunRefused",
    "RunStatus",
    "Subscription",
    "check_channel",
    "check_channels",
]

T = TypeVar("T")

# History is bounded by age first: HISTORY_TTL covers the longest a client of ssesup's own drain is away
# (the drain's grace, 20 s, then a reconnect hint of up to 10 s) many times over. The count is a guard
# on memory per channel, sized from the same window: 10,000 events cover 30 s at 333 events per second
# per channel (RATE_COVERED), 100 s at 100 per second. Sizing rule: history_size >= the channel's rate
# x (drain grace + the reconnect range's top + what a client adds: its own back-off, a slow network).
HISTORY_SIZE = 10_000
HISTORY_TTL = 300.0
RATE_COVERED = 333
# Redis connections per event loop for publishes, joins and history reads (a call waits for a free one);
# the loop's reader has one more.
REDIS_CONNECTIONS = 16
# history_ttl is kept in milliseconds by an engine elsewhere (Redis: PEXPIRE): bounded well below its range.
MAX_HISTORY_TTL = 1e9
MAILBOX_EVENTS = 1000
MAILBOX_BYTES = 1024 * 1024
# A run's history is kept whole while it goes on and RUN_TTL seconds after its end (a viewer that comes
# back, or comes late, within that gets the whole run), within RUN_EVENTS events and RUN_BYTES bytes
# per run (past either, its oldest events are dropped): an LLM's answer of 2,000 tokens, or a job's
# thousands of progress events, fit many times over.
RUN_TTL = 600.0
RUN_EVENTS = 10_000
RUN_BYTES = 4 * 1024 * 1024


class Hub:
    """Publish to channels; stream them to clients that resume after their ``Last-Event-ID``.

    ``url``: ``None`` (or ``"memory://"``) for this process's memory, ``"redis://host:port/db"``
    (``rediss://``, ``unix://``) for Redis Streams. ``backend``: an engine of your own instead.
    ``history_size`` events per channel are kept, none older than ``history_ttl`` seconds (Redis trims
    approximately: at least that many are kept). Each subscriber's mailbox holds at most
    ``mailbox_events`` events and ``mailbox_bytes`` bytes; past that, ``overflow`` (``"disconnect"``
    or ``"drop_oldest"``; ``channel_overflow`` per channel) applies. ``gap_event`` names the event
    that tells a subscriber events were lost. ``metrics``: record in prometheus-client's registry
    (``True``), in this registry, or not at all; ``metrics_channels`` labels them by channel (only
    when channels are few). ``redis_prefix``: the prefix of the hub's Redis keys. ``redis_connections``:
    the Redis connections each event loop uses for publishes, joins and history reads (a call waits for
    a free one, within its deadline; the loop's reader has one more of its own). ``run_ttl``,
    ``run_events``, ``run_bytes``: what a run's channel keeps (:meth:`start_run`).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        history_size: int = HISTORY_SIZE,
        history_ttl: float = HISTORY_TTL,
        mailbox_events: int = MAILBOX_EVENTS,
        mailbox_bytes: int = MAILBOX_BYTES,
        overflow: Overflow | str = Overflow.DISCONNECT,
        channel_overflow: Mapping[str, Overflow | str] | None = None,
        gap_event: str = "gap",
        metrics: bool | CollectorRegistry = True,
        metrics_channels: bool = False,
        redis_prefix: str = "ssesup:",
        redis_connections: int = REDIS_CONNECTIONS,
        backend: Backend | None = None,
        run_ttl: float = RUN_TTL,
        run_events: int = RUN_EVENTS,
        run_bytes: int = RUN_BYTES,
    ) -> None:
        history_size = checks.whole("history_size", history_size, minimum=1)
        history_ttl = checks.seconds("history_ttl", history_ttl, positive=True, below=MAX_HISTORY_TTL)
        mailbox_events = checks.whole("mailbox_events", mailbox_events, minimum=1)
        mailbox_bytes = checks.whole("mailbox_bytes", mailbox_bytes, minimum=1)
        redis_connections = checks.whole("redis_connections", redis_connections, minimum=1)
        checks.instance("gap_event", gap_event, str, " (an event name)")
        Event(gap_event, event=gap_event)  # the same checks as any event's name
        checks.flag("metrics_channels", metrics_channels)
        checks.instance("redis_prefix", redis_prefix, str)
        checks.optional_instance("channel_overflow", channel_overflow, Mapping, " of channel names to policies")
        checks.optional_instance("backend", backend, Backend, " (ssesup.hub.Backend)")
        if backend is not None and url is not None:
            raise ValueError("give a hub url or a backend, not both")
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.mailbox_events = mailbox_events
        self.mailbox_bytes = mailbox_bytes
        self.overflow = _overflow(overflow, "overflow")
        self.channel_overflow = {
            check_channel(c): _overflow(p, f"channel_overflow[{c!r}]") for c, p in (channel_overflow or {}).items()
        }
        self.gap_event = gap_event
        if backend is None:
            backend = _backend_for(url, history_size, self.history_ttl, redis_prefix, redis_connections)
        self.backend = backend
        self.counters: NoCounters = (
            NoCounters()
            if metrics is False
            else HubCounters(hub_metrics(None if metrics is True else metrics), self.backend.name, metrics_channels)
        )
        self.metrics_channels = metrics_channels
        self._live: RunVar[LoopHub] = RunVar(f"ssesup.hub.{id(self)}")
        # Revocations from other processes: followed on each loop while it has streams with a user.
        self._control: RunVar[LoopControl] = RunVar(f"ssesup.hub.control.{id(self)}")
        self._presence: RunVar[LoopPresence] = RunVar(f"ssesup.hub.presence.{id(self)}")
        if self.backend.shared:
            watch_identified(self._identified)
        self.run_bounds = _run_bounds(run_events, run_bytes, run_ttl)
        self._runs: RunVar[LoopRuns] = RunVar(f"ssesup.hub.runs.{id(self)}")

    # -- the API -------------------------------------------------------------------------------------

    async def publish(self, channel: str, event: Event | str | Mapping[str, Any]) -> str:
        """Append ``event`` to ``channel`` and return its id (as a subscriber of that channel alone
        sees it). ``event``: an :class:`~ssesup.Event`, a str (its data), or a dict of event fields as
        a stream's generator may yield (``{"data": obj, "event": "order"}``; a ``data`` that is not a
        str is sent as JSON). The hub sets ids: an event with one raises ``ValueError``. A channel name
        that is not a str raises ``TypeError``, one outside the grammar :class:`InvalidChannel`. Raises
        :class:`HubUnavailable` when the engine cannot be reached (nothing was published) or does not
        answer within its deadline (Redis: 5 s per call; the event may have been stored)."""
        check_channel(channel)
        return await self._publish(channel, event)

    async def _publish(self, channel: str, event: Event | str | Mapping[str, Any]) -> str:
        if isinstance(event, str):
            event = Event(event)
        elif isinstance(event, Mapping):
            event = _event_of(event)
        elif not isinstance(event, Event):
            raise TypeError(f"publish an Event, a str or a dict of event fields, not {type(event).__name__}")
        if event.id is not None:
            raise ValueError("the hub sets event ids (monotonic per channel): publish the event without an id")
        backend = self.backend
        position = await self.call("append", lambda: backend.append(channel, event))
        self.counters.published(channel)
        loop_hub = self.loop_hub()
        loop_hub.published(channel)
        epoch = await loop_hub.current_epoch()
        return format_id(epoch, channels_digest((channel,)), (position,))

    def stream(
        self,
        request: Request,
        *channels: str,
        user: str | None = None,
        expires_at: float | datetime | None = None,
        **stream_options: Any,
    ) -> SupervisedStream:
        """A :class:`~ssesup.SupervisedStream` of ``channels`` that resumes after the request's
        ``Last-Event-ID`` header, else its ``last_event_id`` query parameter. ``stream_options`` are
        SupervisedStream's (``ping``, ``send_timeout``, ``sep``, ...). ``user`` (by default the
        request's authenticated user) and ``expires_at`` are the stream's: a stream that expires ends
        with an ``expired`` event and resumes, with a fresh credential, after its last id."""
        last_event_id = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        supervisor: Supervisor = stream_options.get("supervisor") or supervisor_for(request.scope)
        sep = stream_options.get("sep") or supervisor.sep
        subscription = Subscription(self, channels, last_event_id, sep=sep)
        stream = SupervisedStream(subscription.encoded(), user=user, expires_at=expires_at, **stream_options)
        subscription.stream = stream
        return stream

    def subscribe(self, *channels: str, last_event_id: str | None = None) -> Subscription:
        """An async iterator of the events of ``channels`` after ``last_event_id`` (ids set), for
        generators that merge, filter or add events of their own. Inside a SupervisedStream's generator,
        an overflow (policy ``disconnect``) ends that stream with ``slow_consumer``."""
        return Subscription(self, channels, last_event_id)

    # -- runs: work that outlives its viewers (ssesup.hub.runs) ----------------------------------------

    async def start_run(
        self,
        channel: str,
        source: AsyncIterable[Any],
        *,
        supervisor: Supervisor | None = None,
        ttl: float | None = None,
        max_events: int | None = None,
        max_bytes: int | None = None,
    ) -> Run:
        """Run ``source`` (an async iterable or generator of what a stream's generator may yield) in
        this process, detached from any request, publishing each item to ``channel`` with the hub's ids
        (an id an item carries is left out). Its end is an event ``end`` with JSON data ``{"status":
        ...}``: ``completed``, ``failed`` (the source raised: logged, no error text reaches clients),
        ``cancelled`` (:meth:`cancel_run`) or ``interrupted`` (this process drained first). A viewer,
        ``hub.stream(request, channel)``, starts at the run's first event unless it resumes after an id,
        and completes after ``end``; viewers never stop the run.

        Owned by ``supervisor`` (by default the one installed on the app whose request calls this, else
        the default supervisor): its drain lets the run go on for the drain's grace, then interrupts it.
        The channel's history is kept whole while the run goes on and ``ttl`` seconds after it ended
        (the hub's ``run_ttl``), within ``max_events`` events and ``max_bytes`` bytes (``run_events``,
        ``run_bytes``; past either the oldest are dropped and a viewer from the start gets an
        ``expired`` gap first). Raises :class:`RunActive` when a run is active on ``channel`` (in any
        process of the engine), :class:`RunRefused` while this process drains,
        :class:`HubUnavailable` when the engine cannot be reached (nothing started); the source is then
        closed. Returns the :class:`Run`."""
        check_channel(channel)
        if not isinstance(source, AsyncIterable):
            raise TypeError(f"a run's source is an async iterable or generator, not {type(source).__name__}")
        if supervisor is not None and not isinstance(supervisor, Supervisor):
            raise TypeError(f"supervisor must be a Supervisor or None, not {supervisor!r}")
        defaults = self.run_bounds
        bounds = _run_bounds(
            defaults.max_events if max_events is None else max_events,
            defaults.max_bytes if max_bytes is None else max_bytes,
            defaults.ttl if ttl is None else ttl,
            "",
        )
        return await start_run(self, self.loop_runs(), channel, source, supervisor, bounds)

    async def cancel_run(self, channel: str) -> bool:
        """Cancel the run of ``channel``, wherever it runs (any process of the engine): its source is
        closed (its ``finally`` runs, within ``close_grace``) and its viewers get ``end`` with the status
        ``cancelled``. Returns whether a run was active on it (``False``: none, or it has ended)."""
        check_channel(channel)
        if self.loop_runs().cancel(channel):
            return True
        if await self.run_status(channel) != ACTIVE:
            return False
        await self.publish_internal(CONTROL, Event(channel, event="cancel"))
        return True

    async def run_status(self, channel: str) -> str | None:
        """The status of the run of ``channel``: ``"active"``, how it ended (``"completed"``, ...) while its
        history is kept, or ``None`` (no run, or forgotten)."""
        check_channel(channel)
        backend = self.backend
        (record,) = await self.call("runs", lambda: backend.runs((channel,)))
        return None if record is None else record.status

    def loop_runs(self) -> LoopRuns:
        """This event loop's runs of this hub and their keeper."""
        return loop_local(self._runs, partial(LoopRuns, self))

    # -- ssesup's own channels (control messages between the processes of one engine) ------------------

    async def publish_internal(self, name: str, event: Event | str | Mapping[str, Any]) -> str:
        """Publish to the internal channel ``name`` (``!name``: no client can name it, to publish or to
        subscribe). For ssesup's own messages between processes; as :meth:`publish` otherwise."""
        return await self._publish(internal_channel(name), event)

    def subscribe_internal(self, *names: str, last_event_id: str | None = None) -> Subscription:
        """A subscription of internal channels (:meth:`publish_internal`), as :meth:`subscribe`."""
        return Subscription(self, [internal_channel(name) for name in names], last_event_id, internal=True)

    # -- identity: revocation across processes -------------------------------------------------------

    async def disconnect(self, user: str) -> int:
        """End every supervised stream of ``user`` (hub stream or not) with ``revoked``, in every process
        that shares this hub's engine: this process's at once (every event loop), the others' when the
        message on the internal channel ``!control`` reaches them (Redis: a round trip). Returns how many
        streams this process closed. Raises :class:`HubUnavailable` when the engine cannot be reached
        (this process's streams are closed; the other processes were not told). See docs/auth.md."""
        check_user(user)
        closed = await disconnect_everywhere(user)
        if self.backend.shared:
            await self._publish(internal_channel(CONTROL_CHANNEL), revoke_message(user))
        return closed

    async def presence(self, channel: str) -> dict[str, int]:
        """Who has streams open on ``channel``: user -> open streams (hub streams, and subscriptions in a
        stream's generator, of streams with a user), across every process of the engine; anonymous
        streams are not listed. This loop's own changes are written first; another process's are seen
        within a fraction of a second (Redis: 50 ms and a round trip), and a process that died without
        cleaning up drops out within 15 s. Raises :class:`HubUnavailable` when the engine cannot be
        reached. See docs/auth.md."""
        check_channel(channel)
        await self.loop_presence().flush()
        return summed(await self.call("presence", lambda: self.backend.presence(channel)))

    def loop_presence(self) -> LoopPresence:
        """This event loop's presence records (``ssesup.hub.presence``)."""
        return loop_local(self._presence, partial(LoopPresence, self))

    def _identified(self) -> None:
        loop_local(self._control, partial(LoopControl, self)).sync()

    async def healthy(self, timeout: float = 1.0) -> bool:
        """Whether the engine answers within ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            try:
                await self.call("epoch", self.backend.epoch)
            except HubUnavailable:
                return False
            return True
        return False

    def readiness(self, supervisor: Supervisor | None = None) -> ASGIApp:
        """An ASGI app for readiness probes that includes the hub: ``503`` during a drain (as
        ``supervisor.readiness()``) and while the engine does not answer, else ``200``."""
        return _HubReadiness(self, supervisor)

    async def aclose(self) -> None:
        """Stop this event loop's presence task (removing its records from the engine) and its follower
        of ``!control``, and release its connections to the engine (the next use connects again)."""
        control = self._control.get(None)
        if control is not None:
            await control.aclose()
        presence = self._presence.get(None)
        if presence is not None:
            await presence.aclose()
        live = self._live.get(None)
        if live is not None:
            await live.reader_stopped()  # a reader its last subscription cancelled ends on its connection
        await self.backend.close()

    # -- what the hub's parts share ------------------------------------------------------------------

    def loop_hub(self) -> LoopHub:
        """This event loop's part of the hub: its subscriptions, cursors and reader."""
        return loop_local(self._live, partial(LoopHub, self))

    def overflow_of(self, channels: tuple[str, ...]) -> Overflow:
        """A subscription drops events only when each of its channels allows it."""
        policies = {self.channel_overflow.get(channel, self.overflow) for channel in channels}
        return Overflow.DROP_OLDEST if policies == {Overflow.DROP_OLDEST} else Overflow.DISCONNECT

    async def call(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()``, an engine call, timed and its failures counted."""
        started = time.perf_counter()
        try:
            result = await fn()
        except HubUnavailable:
            self.counters.error(operation)
            raise
        self.counters.timed(operation, time.perf_counter() - started)
        return result


def _run_bounds(max_events: object, max_bytes: object, ttl: object, prefix: str = "run_") -> RunBounds:
    """The bounds of a run's channel, checked (``prefix``: the hub's settings', or start_run's own)."""
    names = (f"{prefix}events", f"{prefix}bytes", f"{prefix}ttl") if prefix else ("max_events", "max_bytes", "ttl")
    for name, value in zip(names[:2], (max_events, max_bytes), strict=True):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, not {value!r}")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < 1e9:
        raise ValueError(f"{names[2]} must be a number of seconds > 0, not {ttl!r}")
    assert isinstance(max_events, int) and isinstance(max_bytes, int)
    return RunBounds(max_events, max_bytes, float(ttl))


def _overflow(value: object, name: str) -> Overflow:
    return checks.one_of(name, value, Overflow, tuple(policy.value for policy in Overflow))


def _event_of(fields: Mapping[str, Any]) -> Event:
    """A dict of event fields as an :class:`Event`, by the rules of a stream generator's dict items."""
    data = fields.get("data")
    if data is not None and not isinstance(data, str):
        fields = {**fields, "data": json_data(data)}
    return Event.from_mapping(fields)


def _backend_for(url: str | None, history_size: int, history_ttl: float, prefix: str, connections: int) -> Backend:
    if url is not None and not isinstance(url, str):
        raise ValueError(f"a hub URL is a str (memory://, redis://host, rediss://host or unix:///path), not {url!r}")
    if url is None or url == "memory://":
        from ssesup.hub.memory import MemoryBackend

        return MemoryBackend(history_size, history_ttl)
    scheme = url.partition("://")[0]
    if scheme in ("redis", "rediss", "unix"):
        parts = urlsplit(url)
        if (parts.path if scheme == "unix" else parts.hostname) in (None, "", "/"):
            where = "a socket's path (unix:///run/redis.sock)" if scheme == "unix" else "a host (redis://host:6379/0)"
            raise ValueError(f"a hub URL {scheme}:// names {where}: {_without_password(url)!r} names none")
        from ssesup.hub.redis import RedisBackend

        return RedisBackend(url, history_size, history_ttl, prefix=prefix, connections=connections)
    raise ValueError(f"a hub URL is memory://, redis://, rediss:// or unix://, not {_without_password(url)!r}")


def _without_password(url: str) -> str:
    """``url`` as an error may show it: a password in its user part, and every query value (redis-py
    takes ``?password=``), as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = f"?{parts.query}" if parts.query else ""
    return redact_query(f"{parts.scheme}://{netloc}{parts.path}{query}")


class _HubReadiness:
    def __init__(self, hub: Hub, supervisor: Supervisor | None) -> None:
        self.hub = hub
        self.supervisor = supervisor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        supervisor = self.supervisor or supervisor_for(scope)
        if supervisor.loop_supervision.draining:
            response = JSONResponse({"ready": False, "draining": True, "hub": "unknown"}, 503)
        elif not await self.hub.healthy():
            response = JSONResponse({"ready": False, "draining": False, "hub": "unavailable"}, 503)
        else:
            response = JSONResponse({"ready": True, "draining": False, "hub": "ok"})
        await response(scope, receive, send)
