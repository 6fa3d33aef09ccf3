"""Prometheus metrics for supervised streams, and the ``/metrics`` endpoint that serves them.

Owns: ssesup's collectors (one set per :class:`~prometheus_client.CollectorRegistry`), the observer
that keeps them (:class:`StreamMetrics`, subscribed by every :class:`~ssesup.Supervisor` unless it is
made with ``metrics=False``), the ASGI app for ``/metrics`` (:func:`metrics_app`) and the bookkeeping of
prometheus-client's multiprocess mode. Does not own: when things happen (the supervisor tells it) or
what is logged (``ssesup.logs``).

Labels stay bounded: ``route`` is the route template (``/users/{id}/events``, ``unknown`` when the
stream was not served through a router), never the raw path; states, reasons and triggers are enums.
The series of a route are made the first time a stream of that route opens, all of them at once and
at zero, so rates and ratios exist before the first close of each kind.

Multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before the server starts): every worker writes its
values to files in that directory, and :func:`metrics_app` serves their sum. Gauges are summed (or
maxed) over live workers only: before each scrape, the live values of every writer that no longer runs
are removed (:func:`remove_dead_workers`), however it ended (uvicorn re-raises SIGTERM after its
shutdown, so ``atexit`` never runs there; a killed worker runs nothing). gunicorn can do the same at
once from its ``child_exit`` hook (:func:`gunicorn_child_exit`). A dead writer's live values are the
files prometheus-client's public ``multiprocess.mark_process_dead`` removes (``gauge_live*_PID.db``);
ssesup removes them itself because that function raises when two workers sweep the same file at once.
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app, multiprocess
from starlette.types import ASGIApp, Receive, Scope, Send

from ssesup.observers import StreamObserver
from ssesup.states import TRANSITIONS, CloseReason, State, Transition, Trigger
from ssesup.sync_source import watch_abandoned

if TYPE_CHECKING:
    from ssesup.stream import SupervisedStream

UNKNOWN_ROUTE = "unknown"

# Streams last from a fraction of a second (a client that gives up) to hours (a dashboard left open).
STREAM_DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, float("inf"))
# A drain lasts up to its grace, usually seconds to a couple of minutes.
DRAIN_DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, float("inf"))

_ACTIVE_STATES = (State.OPEN, State.STREAMING, State.DRAINING)
# Why new streams are refused: a drain (503), the cap on streams (503), the cap per client (429).
REJECT_REASONS = ("draining", "max_streams", "max_streams_per_client", "max_streams_per_user")
# Why the drain endpoint refused a request: no bearer token (401), a wrong one (403), or it came during
# the back-off after wrong ones and its token was not looked at (429).
AUTH_FAILURE_REASONS = ("missing_token", "wrong_token", "backoff")


class _RouteSeries:
    """The labelled children of one route, looked up once per route instead of once per call."""

    __slots__ = ("active", "bytes", "closed", "duration", "events", "opened", "pings", "send_timeouts")

    def __init__(self, metrics: StreamMetrics, route: str) -> None:
        label = route or UNKNOWN_ROUTE
        self.opened = metrics.streams_opened.labels(label)
        self.events = metrics.events_sent.labels(label)
        self.bytes = metrics.bytes_sent.labels(label)
        self.pings = metrics.pings_sent.labels(label)
        self.send_timeouts = metrics.send_timeouts.labels(label)
        self.active = {state: metrics.streams_active.labels(label, state.value) for state in _ACTIVE_STATES}
        self.closed = {reason: metrics.streams_closed.labels(label, reason.value) for reason in CloseReason}
        self.duration = {reason: metrics.stream_duration.labels(label, reason.value) for reason in CloseReason}


class StreamMetrics(StreamObserver):
    """ssesup's collectors in one registry, and the observer that keeps them up to date.

    Make it with :func:`metrics_observer` (one per registry, shared by every supervisor that records
    there), not directly: a registry refuses a second set of the same names.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = (), *, mode: Literal["livesum", "livemax"]) -> Gauge:
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode=mode)

        route = ("route",)
        self.streams_active = gauge(
            "ssesup_streams_active", "Streams open now, by route template and state.", (*route, "state"), mode="livesum"
        )
        self.streams_opened = counter("ssesup_streams_opened", "Streams opened.", route)
        self.streams_closed = counter("ssesup_streams_closed", "Streams closed, by close reason.", (*route, "reason"))
        self.stream_duration = Histogram(
            "ssesup_stream_duration_seconds",
            "Seconds from a stream's opening to its close, by close reason.",
            (*route, "reason"),
            registry=registry,
            buckets=STREAM_DURATION_BUCKETS,
        )
        self.events_sent = counter("ssesup_events_sent", "Events sent (pings not counted).", route)
        self.bytes_sent = counter("ssesup_bytes_sent", "Bytes of event-stream body sent, pings included.", route)
        self.pings_sent = counter("ssesup_pings_sent", "Keep-alive pings sent.", route)
        self.send_timeouts = counter(
            "ssesup_send_timeouts", "Streams closed because a send missed its deadline.", route
        )
        self.state_transitions = counter(
            "ssesup_state_transitions", "Stream state transitions.", ("from_state", "to_state")
        )
        self.streams_rejected = counter("ssesup_streams_rejected", "New streams refused, by reason.", ("reason",))
        self.drain_auth_failures = counter(
            "ssesup_drain_auth_failures",
            "Requests to the drain endpoint refused: no bearer token, a wrong one, or during a back-off.",
            ("reason",),
        )
        self.sync_threads_abandoned = gauge(
            "ssesup_sync_threads_abandoned",
            "Threads still blocked in a sync generator whose stream has ended (abandoned, not yet returned).",
            mode="livesum",
        )
        watch_abandoned(self.sync_threads_abandoned.inc)
        self.draining = gauge("ssesup_draining", "1 while this process drains its streams, else 0.", mode="livemax")
        self.drain_grace = gauge(
            "ssesup_drain_grace_seconds", "The grace of the current or last drain.", mode="livemax"
        )
        self.drain_started_timestamp = gauge(
            "ssesup_drain_started_timestamp_seconds", "Unix time the current or last drain began.", mode="livemax"
        )
        self.drain_duration = Histogram(
            "ssesup_drain_duration_seconds",
            "Seconds from the start of a drain to its last stream's close.",
            registry=registry,
            buckets=DRAIN_DURATION_BUCKETS,
        )
        self._routes: dict[str, _RouteSeries] = {}
        self._transitions = {
            (state, to_state): self.state_transitions.labels(state.value, to_state.value)
            for (state, _), (to_state, *_) in TRANSITIONS.items()
        }
        self._rejected = {reason: self.streams_rejected.labels(reason) for reason in REJECT_REASONS}
        self._auth_failures = {reason: self.drain_auth_failures.labels(reason) for reason in AUTH_FAILURE_REASONS}
        self._drains = 0
        self._drain_lock = threading.Lock()
        self.draining.set(0)

    def _route(self, route: str) -> _RouteSeries:
        series = self._routes.get(route)
        if series is None:
            series = self._routes.setdefault(route, _RouteSeries(self, route))
        return series

    # -- the observer --------------------------------------------------------------------------------

    def opened(self, stream: SupervisedStream) -> None:
        series = self._route(stream.route)
        series.opened.inc()
        series.active[State.OPEN].inc()

    def transitioned(self, stream: SupervisedStream, transition: Transition) -> None:
        from_state, to_state = transition.from_state, transition.to_state
        moved = self._transitions.get((from_state, to_state))
        if moved is None:
            moved = self._transitions.setdefault(
                (from_state, to_state), self.state_transitions.labels(from_state.value, to_state.value)
            )
        moved.inc()
        series = self._route(stream.route)
        if from_state is not to_state:
            series.active[from_state].dec()
            if to_state is not State.CLOSED:
                series.active[to_state].inc()
        if transition.trigger is Trigger.SEND_TIMEOUT:
            series.send_timeouts.inc()
        reason = transition.close_reason
        if reason is not None:
            series.closed[reason].inc()
            series.duration[reason].observe(stream.duration)

    def sent(self, stream: SupervisedStream, events: int, pings: int, nbytes: int) -> None:
        series = self._routes.get(stream.route) or self._route(stream.route)
        if events:
            series.events.inc(events)
        if pings:
            series.pings.inc(pings)
        series.bytes.inc(nbytes)

    def rejected(self, reason: str) -> None:
        child = self._rejected.get(reason)
        if child is None:
            child = self._rejected.setdefault(reason, self.streams_rejected.labels(reason))
        child.inc()

    def drain_auth_failed(self, reason: str) -> None:
        """The drain endpoint refused a request (``reason``: one of :data:`AUTH_FAILURE_REASONS`)."""
        child = self._auth_failures.get(reason)
        if child is None:
            child = self._auth_failures.setdefault(reason, self.drain_auth_failures.labels(reason))
        child.inc()

    def drain_started(self, grace: float) -> None:
        with self._drain_lock:
            self._drains += 1
            if self._drains == 1:
                self.drain_started_timestamp.set_to_current_time()
                self.drain_grace.set(grace)
                self.draining.set(1)

    def drain_finished(self, duration: float) -> None:
        self.drain_duration.observe(duration)
        with self._drain_lock:
            self._drains = max(self._drains - 1, 0)
            if self._drains == 0:
                self.draining.set(0)


_observers: weakref.WeakKeyDictionary[CollectorRegistry, StreamMetrics] = weakref.WeakKeyDictionary()
_observers_lock = threading.Lock()


def metrics_observer(registry: CollectorRegistry | None = None) -> StreamMetrics:
    """The :class:`StreamMetrics` of ``registry`` (default: prometheus-client's ``REGISTRY``).

    Made on first use and shared afterwards, so any number of supervisors can record in one registry.
    To add ssesup's metrics to a registry that an existing ``/metrics`` serves, pass it here (or make
    the supervisor with ``Supervisor(metrics=registry)``)::

        default_supervisor.subscribe(metrics_observer(my_registry))
    """
    registry = REGISTRY if registry is None else registry
    with _observers_lock:
        observer = _observers.get(registry)
        if observer is None:
            observer = _observers[registry] = StreamMetrics(registry)
        return observer


# -- the /metrics endpoint -----------------------------------------------------------------------------


class MetricsApp:
    """The ASGI app of :func:`metrics_app`."""

    def __init__(self, registry: CollectorRegistry, multiprocess_path: str | None) -> None:
        self.multiprocess_path = multiprocess_path
        self._app: Callable[..., Any] = make_asgi_app(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.multiprocess_path:
            remove_dead_workers(self.multiprocess_path)
        await self._app(scope, receive, send)


def metrics_app(registry: CollectorRegistry | None = None) -> ASGIApp:
    """The ``/metrics`` endpoint as an ASGI app. One line in a Starlette or FastAPI app::

        routes = [..., Route("/metrics", ssesup.metrics.metrics_app())]
        app.add_route("/metrics", metrics_app())  # FastAPI / Starlette, after the fact

    ``registry``: what to serve. By default prometheus-client's ``REGISTRY`` (ssesup's metrics and any
    others of the process); in multiprocess mode the sum of every worker's files instead.
    """
    if registry is not None:
        return MetricsApp(registry, None)
    path = multiprocess_dir()
    if path is None:
        return MetricsApp(REGISTRY, None)
    summed = CollectorRegistry()
    multiprocess.MultiProcessCollector(summed, path)
    return MetricsApp(summed, path)


# -- multiprocess bookkeeping --------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    """prometheus-client's multiprocess directory, or ``None`` when the process runs in the usual mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def gunicorn_child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook: drop a dead worker's live values. In ``gunicorn.conf.py``::

    from ssesup.metrics import gunicorn_child_exit as child_exit
    """
    path = multiprocess_dir()
    if path:
        _remove_live_values(path, worker.pid)


def remove_dead_workers(path: str) -> list[int]:
    """Drop the live gauge values of every process that wrote to ``path`` and no longer runs.

    However a worker ended (a clean exit, a kill, the out-of-memory killer), its open streams stop
    counting at the next scrape. Returns the process ids whose values were removed.
    """
    dead: set[int] = set()
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        digits = os.path.basename(name)[: -len(".db")].rpartition("_")[2]
        if digits.isdigit() and not _runs(int(digits)):
            dead.add(int(digits))
    for pid in dead:
        _remove_live_values(path, pid)
    return sorted(dead)


def _remove_live_values(path: str, pid: int) -> None:
    """prometheus-client's ``mark_process_dead``, safe when two workers sweep at once."""
    for name in glob.glob(os.path.join(path, f"gauge_live*_{pid}.db")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)


def _runs(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")
