"""Prometheus metrics of the hub: published, delivered, replayed, gaps, slow consumers, mailboxes and
the engine's latency and errors.

Owns: the hub's collectors, one set per :class:`~prometheus_client.CollectorRegistry` (the registry
the supervisor records in by default, prometheus-client's ``REGISTRY``), shared by every hub that
records there, and a hub's view of them (:class:`HubCounters`: what the hub's parts call when something
happens, with the hub's labels; :class:`NoCounters` when the hub records no metrics, so no caller asks
whether there are any). Does not own when things happen (the hub's parts count) or the stream metrics
(``ssesup.metrics``).

Labels stay bounded: ``backend`` is the engine's name, ``operation`` one of the engine's methods,
``reason`` a :class:`~ssesup.hub.ids.GapReason`. Channel names can be per user, so ``channel`` is
empty (the same as no label to Prometheus) unless the hub is made with ``metrics_channels=True``.

``ssesup_hub_mailbox_events`` is read when scraped (the sum of every mailbox of the process): the hot
path of a publish counts nothing per subscriber. In prometheus-client's multiprocess mode it is not
collected (gauges read at scrape time are per process there).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from ssesup.hub.ids import GapReason

# An engine's call lasts from microseconds (memory) to a network round trip or a reconnect (Redis).
BACKEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, float("inf"))


class HubMetrics:
    """The hub's collectors in one registry. Get it with :func:`hub_metrics` (one per registry)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        labels = ("backend", "channel")
        self.published = Counter("ssesup_hub_published", "Events published to the hub.", labels, registry=registry)
        self.delivered = Counter(
            "ssesup_hub_delivered", "Live events put in subscribers' mailboxes.", labels, registry=registry
        )
        self.replayed = Counter(
            "ssesup_hub_replayed", "Events replayed from history to resuming subscribers.", labels, registry=registry
        )
        self.gaps = Counter(
            "ssesup_hub_gaps", "Gap events sent to subscribers, by reason.", ("backend", "reason"), registry=registry
        )
        self.slow_consumers = Counter(
            "ssesup_hub_slow_consumer_closes",
            "Subscribers closed because their mailbox overflowed (overflow policy disconnect).",
            ("backend",),
            registry=registry,
        )
        self.subscribers = Gauge(
            "ssesup_hub_subscribers",
            "Hub subscriptions open now.",
            ("backend",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.presence_users = Gauge(
            "ssesup_hub_presence_users",
            "Presence records this process holds: (channel, user) pairs with open streams.",
            ("backend",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.presence_streams = Gauge(
            "ssesup_hub_presence_streams",
            "Hub subscriptions of streams with a user (counted in presence) open in this process.",
            ("backend",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.mailbox_events = Gauge(
            "ssesup_hub_mailbox_events", "Events waiting in subscribers' mailboxes now.", registry=registry
        )
        self.backend_seconds = Histogram(
            "ssesup_hub_backend_seconds",
            "Seconds an engine call took, by operation (append, read, last, epoch).",
            ("backend", "operation"),
            registry=registry,
            buckets=BACKEND_BUCKETS,
        )
        self.backend_errors = Counter(
            "ssesup_hub_backend_errors",
            "Engine calls that failed (the engine unreachable), by operation.",
            ("backend", "operation"),
            registry=registry,
        )
        self.runs_started = Counter(
            "ssesup_hub_runs_started", "Runs started in this process (Hub.start_run).", ("backend",), registry=registry
        )
        self.runs_active = Gauge(
            "ssesup_hub_runs_active",
            "Runs going on in this process now.",
            ("backend",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.runs_ended = Counter(
            "ssesup_hub_runs_ended",
            "Runs of this process ended, by status (completed, failed, cancelled, interrupted).",
            ("backend", "status"),
            registry=registry,
        )
        self._depths: weakref.WeakSet[Any] = weakref.WeakSet()
        self.mailbox_events.set_function(self._mailbox_depth)

    def watch_depth(self, source: object) -> None:
        """Count ``source.mailbox_depth()`` in ``ssesup_hub_mailbox_events`` while it lives."""
        self._depths.add(source)

    def _mailbox_depth(self) -> float:
        depth: Callable[[], int]
        total = 0
        for source in list(self._depths):
            depth = source.mailbox_depth
            total += depth()
        return float(total)


_metrics: weakref.WeakKeyDictionary[CollectorRegistry, HubMetrics] = weakref.WeakKeyDictionary()
_metrics_lock = threading.Lock()


def hub_metrics(registry: CollectorRegistry | None = None) -> HubMetrics:
    """The :class:`HubMetrics` of ``registry`` (default: prometheus-client's ``REGISTRY``)."""
    registry = REGISTRY if registry is None else registry
    with _metrics_lock:
        metrics = _metrics.get(registry)
        if metrics is None:
            metrics = _metrics[registry] = HubMetrics(registry)
        return metrics


# The engine calls whose time and failures are counted (``operation`` label of the backend metrics).
ENGINE_OPERATIONS = (
    "append",
    "epoch",
    "last",
    "read",
    "wait",
    "presence",
    "presence_write",
    "presence_leave",
    "runs",
    "start_run",
    "end_run",
    "renew_runs",
)
# How a run ends (``status`` label of ``ssesup_hub_runs_ended_total``: ssesup.hub.runs.RunStatus).
RUN_STATUSES = ("completed", "failed", "cancelled", "interrupted")


class NoCounters:
    """What a hub that records no metrics counts: nothing."""

    def published(self, channel: str) -> None: ...

    def delivered(self, delivered: dict[str, int]) -> None: ...

    def replayed(self, channel: str) -> None: ...

    def gap(self, reason: GapReason) -> None: ...

    def slow_consumer(self) -> None: ...

    def subscribers(self, change: int) -> None: ...

    def presence(self, users: int, streams: int) -> None: ...

    def error(self, operation: str) -> None: ...

    def timed(self, operation: str, seconds: float) -> None: ...

    def watch_depth(self, source: object) -> None: ...

    def run_started(self) -> None: ...

    def run_ended(self, status: str) -> None: ...


class HubCounters(NoCounters):
    """One hub's metrics: its engine's name as the ``backend`` label, and channel names as the
    ``channel`` label only with ``by_channel`` (channels may be per user: unbounded)."""

    def __init__(self, metrics: HubMetrics, backend: str, by_channel: bool) -> None:
        self.metrics = metrics
        self.backend = backend
        self.by_channel = by_channel
        # The series at 0 from the start, so that the first close or engine error shows in rate(); the
        # children that every subscription's start and end moves are kept (``labels()`` takes a lock and
        # makes a key on each call).
        self._slow_consumers = metrics.slow_consumers.labels(backend)
        self._subscribers = metrics.subscribers.labels(backend)
        self._presence_users = metrics.presence_users.labels(backend)
        self._presence_streams = metrics.presence_streams.labels(backend)
        for operation in ENGINE_OPERATIONS:
            metrics.backend_errors.labels(backend, operation)
        metrics.runs_started.labels(backend)
        metrics.runs_active.labels(backend)
        for status in RUN_STATUSES:
            metrics.runs_ended.labels(backend, status)

    def _channel(self, channel: str) -> str:
        return channel if self.by_channel else ""

    def published(self, channel: str) -> None:
        self.metrics.published.labels(self.backend, self._channel(channel)).inc()

    def delivered(self, delivered: dict[str, int]) -> None:
        if not delivered:
            return
        if self.by_channel:
            for channel, count in delivered.items():
                self.metrics.delivered.labels(self.backend, channel).inc(count)
        else:
            self.metrics.delivered.labels(self.backend, "").inc(sum(delivered.values()))

    def replayed(self, channel: str) -> None:
        self.metrics.replayed.labels(self.backend, self._channel(channel)).inc()

    def gap(self, reason: GapReason) -> None:
        self.metrics.gaps.labels(self.backend, reason.value).inc()

    def slow_consumer(self) -> None:
        self._slow_consumers.inc()

    def subscribers(self, change: int) -> None:
        self._subscribers.inc(change)

    def presence(self, users: int, streams: int) -> None:
        if users:
            self._presence_users.inc(users)
        self._presence_streams.inc(streams)

    def error(self, operation: str) -> None:
        self.metrics.backend_errors.labels(self.backend, operation).inc()

    def timed(self, operation: str, seconds: float) -> None:
        self.metrics.backend_seconds.labels(self.backend, operation).observe(seconds)

    def watch_depth(self, source: object) -> None:
        self.metrics.watch_depth(source)

    def run_started(self) -> None:
        self.metrics.runs_started.labels(self.backend).inc()
        self.metrics.runs_active.labels(self.backend).inc()

    def run_ended(self, status: str) -> None:
        self.metrics.runs_active.labels(self.backend).dec()
        self.metrics.runs_ended.labels(self.backend, status).inc()
