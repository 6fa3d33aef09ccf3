"""Prometheus metrics of the hub: published, delivered, replayed, gaps, slow consumers, mailboxes and
the engine's latency and errors.

Owns: the hub's collectors, one set per :class:`~prometheus_client.CollectorRegistry` (the registry
the supervisor records in by default, prometheus-client's ``REGISTRY``), shared by every hub that
records there. Does not own when things happen (the hub counts) or the stream metrics
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
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

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
