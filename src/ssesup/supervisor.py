"""The supervisor: the registry of live streams, the central timers, and every transition's observers.

Owns: which streams are alive on this event loop and whom they serve (the user index a revocation
reads), the loop's :class:`~ssesup.timers.TimerService`, the drain flag, the farewell of each ending,
and the one place where transitions are observed (logs, then metrics and user observers). Does not own:
per-connection I/O (that is the actor's), state rules (``ssesup.states``), or reaching the other loops
of the process (``ssesup.revocation``).

A ``Supervisor`` is configuration plus an API; its live part is one :class:`LoopSupervision` per event
loop (an anyio ``RunVar``), so several loops in several threads share nothing. With zero configuration
the module's :data:`default_supervisor` is used; ``supervisor.install(app)`` makes an app use another.

It also owns work that no request owns: the hub's runs (``ssesup.hub.runs``) are adopted by the
supervisor of the request that started them (or the default one). A drain lets them go on for its
grace, then interrupts them, and is finished when the last stream and the last run have ended; an app
the supervisor is installed on holds its lifespan's shutdown until then, so that the server, which
exits after it, gives its runs the drain's grace.
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import structlog
from anyio.lowlevel import RunVar
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ssesup import checks, logs, revocation
from ssesup._loop import LoopPrimitives, loop_local, loop_token
from ssesup.drain import DrainSettings, reconnect_ms, wave_offsets
from ssesup.endpoints import DrainEndpoint, LivenessEndpoint, ReadinessEndpoint
from ssesup.events import Event
from ssesup.identity import check_user
from ssesup.limits import Admission, Refusal, StreamLimits
from ssesup.metrics import metrics_observer
from ssesup.observers import OBSERVER_METHODS, StreamObserver, _LogObserver, _TransitionCallback
from ssesup.settings import PingFactory, StreamSettings
from ssesup.signals import NO_SERVER_HANDLER, listen_for_signals, server_graceful_timeout
from ssesup.states import CloseReason, State, Transition, Trigger
from ssesup.timers import Timer, TimerService

if TYPE_CHECKING:
    from ssesup.stream import SupervisedStream

log = structlog.get_logger("ssesup")

_App = TypeVar("_App")

SCOPE_KEY = "ssesup.supervisor"

# Observers hear what streams sent (``sent``) at most this many seconds late, and at each stream's end:
# once per stream per period, not once per send, so a send costs no observer call.
REPORT_EVERY = 1.0

# How long past its drain's grace a lifespan's shutdown waits for the loop's runs to have ended (an
# interrupted run closes its source and publishes its end within this).
RUNS_END_BUDGET = 1.0


class OwnedRun(Protocol):
    """Work a supervisor owns that no request does (a hub's run): what its drain asks of it."""

    def interrupt(self) -> None:
        """End now, as interrupted by the drain."""


class LoopSupervision:
    """The live part of a supervisor on one event loop."""

    def __init__(self, limits: StreamLimits | None = None, sync_threads: int = 40) -> None:
        self.streams: set[SupervisedStream] = set()
        self.sync_limiter = anyio.CapacityLimiter(sync_threads)
        self.admission = Admission(limits) if limits is not None else None
        self.loop = LoopPrimitives()
        self.timers = TimerService()
        self.draining = False
        self.drain_started_at: float | None = None
        self.drain_finished_at: float | None = None
        self.drained = anyio.Event()
        self.drain_timers: list[Timer] = []
        self.listening_for_signals = False
        self.signals_seen = 0
        self.unreported: list[SupervisedStream] = []
        self.report_timer: Timer | None = None
        # A ping factory that fails does so at every ping of every stream: one line per interval.
        self.ping_failures = logs.SummaryLog("stream.ping_factory_failed", clock=self.loop.clock, level=logging.ERROR)
        # Who the live streams serve: user -> their streams (users with none are absent), so that a
        # revocation touches that user's streams only.
        self.users: dict[str, set[SupervisedStream]] = {}
        self.token = loop_token()  # which loop this is (revocations from other threads go through its loop)
        # Runs (``ssesup.hub.runs``) this loop owns: a drain interrupts them after its grace.
        self.runs: set[OwnedRun] = set()
        self.drain_grace: float | None = None  # the grace of the drain, once one began

    def close_user(self, user: str) -> int:
        """End every live stream of ``user`` on this loop with ``revoked``; how many were open."""
        streams = self.users.get(user)
        if not streams:
            return 0
        closed = 0
        for stream in tuple(streams):
            if stream.state is not State.CLOSED:
                stream.trigger(Trigger.REVOKED)
                closed += 1
        return closed


class Supervisor:
    """Configuration and control of supervised streams.

    ``ping``: seconds of idleness before a keep-alive comment is sent (0 disables).
    ``send_timeout``: seconds a single send may take before the stream is closed (0 disables).
    ``dead_peer_timeout``: seconds that sent bytes may stay unacknowledged by the peer (the kernel
    retransmitting them) before the stream is closed with ``dead_peer`` (0 disables).
    ``close_grace``: seconds a generator's cleanup (its ``finally``) may take once its stream ended.
    ``max_event_size``: bytes an encoded event may have (``None``: no limit); a larger one ends the
    stream with ``error``.
    ``sep``: line separator, ``"\\r\\n"`` (default), ``"\\n"`` or ``"\\r"``.
    ``ping_factory``: makes the ping event instead of the default comment.
    ``drain_grace``: seconds a drain lets streams end in order before force-closing the rest.
    ``retry_after``: ``Retry-After`` seconds of a stream refused (503) during a drain.
    ``reconnect``: range in seconds of the jittered ``retry:`` hint every farewell carries.
    ``drain_on_signals``: drain on SIGTERM/SIGINT, chained to the server's own handlers.
    ``farewell``: ``farewell(stream)`` makes a last event for each drained stream (or ``None``).
    ``sync_threads``: how many sync generators may be pulled at once on one event loop, each in a
    daemon thread of ssesup's own (not the app's thread pool); see ``ssesup.sync_source``.
    ``limits``: caps on concurrent streams (:class:`~ssesup.limits.StreamLimits`); none by default.
    ``metrics``: record Prometheus metrics in prometheus-client's registry (``True``), in this
    registry, or not at all (``False``); see ``ssesup.metrics``.
    """

    def __init__(
        self,
        *,
        ping: float = 15.0,
        send_timeout: float = 30.0,
        dead_peer_timeout: float = 30.0,
        close_grace: float = 5.0,
        max_event_size: int | None = None,
        sep: str = "\r\n",
        ping_factory: PingFactory | None = None,
        metrics: bool | CollectorRegistry = True,
        drain_grace: float = DrainSettings.grace,
        retry_after: int = DrainSettings.retry_after,
        reconnect: tuple[float, float] = DrainSettings.reconnect,
        drain_on_signals: bool = DrainSettings.on_signals,
        farewell: Callable[[SupervisedStream], Event | None] | None = None,
        limits: StreamLimits | None = None,
        sync_threads: int = 40,
    ) -> None:
        self.stream_settings = StreamSettings(
            ping, send_timeout, dead_peer_timeout, close_grace, max_event_size, sep, ping_factory
        )
        """The settings of this supervisor's streams (each stream may override some of them)."""
        self.drain_settings = DrainSettings(drain_grace, retry_after, reconnect, drain_on_signals)
        self.farewell = checks.optional_callable("farewell", farewell, "farewell(stream) -> Event | None")
        self.limits = checks.optional_instance("limits", limits, StreamLimits, " (ssesup.StreamLimits(...))")
        self.sync_threads = checks.whole("sync_threads", sync_threads, minimum=1)
        if not isinstance(metrics, (bool, CollectorRegistry)):
            raise TypeError(f"metrics must be True, False or a prometheus_client CollectorRegistry, not {metrics!r}")
        self.drain_refusal = Refusal(503, self.drain_settings.retry_after, "draining", b"draining: reconnect later\n")
        self._rng = random.Random()
        self._observers: list[StreamObserver] = [_LogObserver()]
        if metrics is not False:
            self._observers.append(metrics_observer(None if metrics is True else metrics))
        self._handlers: dict[str, list[StreamObserver]] = {}
        self._index_handlers()
        self._live: RunVar[LoopSupervision] = RunVar(f"ssesup.supervision.{id(self)}")
        # This supervisor's loops that have streams with a user now (a revocation reaches these).
        self._with_users: set[LoopSupervision] = set()
        self.lifespan_seen = False
        """Whether an app this supervisor is installed on has had its lifespan started (the shutdown
        then waits for the runs to end)."""

    @property
    def ping(self) -> float:
        return self.stream_settings.ping

    @property
    def send_timeout(self) -> float:
        return self.stream_settings.send_timeout

    @property
    def dead_peer_timeout(self) -> float:
        return self.stream_settings.dead_peer_timeout

    @property
    def close_grace(self) -> float:
        return self.stream_settings.close_grace

    @property
    def max_event_size(self) -> int | None:
        return self.stream_settings.max_event_size

    @property
    def sep(self) -> str:
        return self.stream_settings.sep

    @property
    def ping_factory(self) -> PingFactory | None:
        return self.stream_settings.ping_factory

    # -- the live part, per event loop -------------------------------------------------------------

    @property
    def loop_supervision(self) -> LoopSupervision:
        """This event loop's registry, timers and drain flag (created on first use)."""
        return loop_local(self._live, partial(LoopSupervision, self.limits, self.sync_threads))

    def streams(self) -> Iterator[SupervisedStream]:
        """The live streams of the current event loop."""
        return iter(tuple(self.loop_supervision.streams))

    def register(self, stream: SupervisedStream, live: LoopSupervision) -> None:
        """Add ``stream`` to this loop's registry (``live``: this loop's :attr:`loop_supervision`)."""
        if not live.listening_for_signals:
            self._listen_for_signals(live)
        live.streams.add(stream)
        user = stream.user
        if user is not None:
            if not live.users:
                with revocation.registry_lock:
                    revocation.with_users.add(live)
                    self._with_users.add(live)
            live.users.setdefault(user, set()).add(stream)
            revocation.identified_changed()
        self.notify("opened", stream)

    def unregister(self, stream: SupervisedStream, live: LoopSupervision) -> None:
        """Remove an ended ``stream``; its observers hear what it sent since its last report."""
        live.streams.discard(stream)
        user = stream.user
        streams = live.users.get(user) if user is not None else None
        if streams is not None and stream in streams:
            assert user is not None
            streams.discard(stream)
            if not streams:
                del live.users[user]
                if not live.users:
                    with revocation.registry_lock:
                        revocation.with_users.discard(live)
                        self._with_users.discard(live)
            revocation.identified_changed()
        if live.admission is not None:
            live.admission.leave(stream)
        self.report_sent(stream)
        if live.streams:
            return
        self._report_sent(live)  # nothing left to wait for: no timer outlives the last stream
        if live.draining and not live.drained.is_set() and not live.runs:
            self._finish_drain(live)

    # -- identity ------------------------------------------------------------------------------------

    async def disconnect(self, user: str) -> int:
        """End every stream of ``user`` that this supervisor supervises in this process, on every event
        loop (each in its own loop's thread), with ``revoked``: a ``revoked`` event, then the end of the
        body. Returns how many streams were open. For every process of a hub's engine, use
        ``hub.disconnect(user)``; see docs/auth.md for making the reconnect fail (401/403)."""
        check_user(user)
        with revocation.registry_lock:
            loops = list(self._with_users)
        return await revocation.close_user_on(loops, user)

    # -- runs: work no request owns -------------------------------------------------------------------

    def adopt(self, run: OwnedRun, live: LoopSupervision) -> None:
        """Own ``run`` on this loop (``live``: its :attr:`loop_supervision`): a drain lets it go on for
        its grace, then interrupts it."""
        if not live.listening_for_signals:
            self._listen_for_signals(live)
        live.runs.add(run)

    def release(self, run: OwnedRun, live: LoopSupervision) -> None:
        """``run`` has ended: a drain that waited only for it is finished."""
        live.runs.discard(run)
        if live.draining and not live.drained.is_set() and not live.streams and not live.runs:
            self._finish_drain(live)

    async def wait_runs(self) -> None:
        """Return once this loop's runs have ended: a drain (begun here if none was) lets them go on for
        its grace, then interrupts them. What an installed app's lifespan shutdown awaits."""
        live = self.loop_supervision
        if not live.runs:
            return
        self.begin_drain()
        started = live.drain_started_at if live.drain_started_at is not None else anyio.current_time()
        grace = live.drain_grace if live.drain_grace is not None else self.drain_settings.grace
        with anyio.move_on_after(max(0.0, started + grace + RUNS_END_BUDGET - anyio.current_time())):
            await live.drained.wait()

    def _interrupt_runs(self, live: LoopSupervision, now: float) -> None:
        for run in tuple(live.runs):
            run.interrupt()

    # -- what streams sent ---------------------------------------------------------------------------

    def report_sent_soon(self, stream: SupervisedStream, live: LoopSupervision) -> None:
        """``stream`` has sent bytes its observers have not heard of: report them within
        :data:`REPORT_EVERY` seconds (``live``: this loop's :attr:`loop_supervision`). A stream that ends is reported
        by :meth:`unregister` and stays listed until then, harmlessly: at most a second of ended streams."""
        live.unreported.append(stream)
        if live.report_timer is None:
            live.report_timer = live.timers.schedule(live.loop.clock() + REPORT_EVERY, partial(self._report_sent, live))

    def report_sent(self, stream: SupervisedStream) -> None:
        """Tell the observers what ``stream`` sent since it was last reported (nothing if nothing)."""
        counts = stream.take_unreported()
        if counts is not None:
            self.notify("sent", stream, *counts)

    def _report_sent(self, live: LoopSupervision, now: float | None = None) -> None:
        if live.report_timer is not None:
            live.report_timer.cancel()
            live.report_timer = None
        streams, live.unreported = live.unreported, []
        for stream in streams:
            self.report_sent(stream)

    # -- drain -------------------------------------------------------------------------------------------

    async def drain(self, grace: float | None = None, *, wait: bool = True) -> dict[str, Any]:
        """Drain this event loop's streams: refuse new ones, farewell and close the live ones in waves,
        force-close what is left when ``grace`` (default ``drain_grace``) runs out. With ``wait``,
        return when every stream is closed. Returns a summary (``streams``, ``duration``)."""
        live = self.loop_supervision
        if not live.draining:
            self.begin_drain(grace)
        if wait:
            await live.drained.wait()
        return self.drain_status()

    def drain_status(self) -> dict[str, Any]:
        live = self.loop_supervision
        started, finished = live.drain_started_at, live.drain_finished_at
        return {
            "draining": live.draining,
            "done": live.drained.is_set(),
            "streams": len(live.streams),
            "duration": None if started is None or finished is None else round(finished - started, 6),
        }

    def begin_drain(self, grace: float | None = None) -> None:
        """Start a drain now (synchronous: safe from a signal callback). A second call does nothing."""
        live = self.loop_supervision
        if live.draining:
            return
        grace = self.drain_settings.grace if grace is None else checks.seconds("grace", grace, positive=True)
        now = anyio.current_time()
        live.draining = True
        live.drain_started_at = now
        live.drain_grace = grace
        self.notify("drain_started", grace)
        log.info("drain.started", grace_s=grace, streams=len(live.streams), runs=len(live.runs))
        streams = sorted(live.streams, key=lambda stream: stream.started_at)
        for stream in streams:
            stream.trigger(Trigger.DRAIN)
        in_waves = [stream for stream in streams if stream.drain_grace is None]  # the others time their own
        waves: dict[float, list[SupervisedStream]] = {}
        for stream, offset in zip(in_waves, wave_offsets(len(in_waves), grace), strict=True):
            waves.setdefault(offset, []).append(stream)
        for offset, wave in waves.items():
            live.drain_timers.append(live.timers.schedule(now + offset, _closer(wave, Trigger.DRAIN_CLOSE)))
        live.drain_timers.append(live.timers.schedule(now + grace, _closer(streams, Trigger.GRACE_EXPIRED)))
        live.drain_timers.append(live.timers.schedule(now + grace, partial(self._interrupt_runs, live)))
        if not live.streams and not live.runs:
            self._finish_drain(live)

    def force_close(self) -> None:
        """Close every stream of this loop now (the farewell is still sent where the socket allows)."""
        for stream in tuple(self.loop_supervision.streams):
            stream.trigger(Trigger.FORCE_CLOSE)

    def farewell_bytes(self, stream: SupervisedStream, sep: str) -> bytes:
        """The farewell of a stream whose row's ending is ``farewell``, in the words of its close reason.

        ``drained``, ``shutdown``: the user's last event, if any, and a jittered ``retry:``. The hint goes
        out whatever the ``farewell`` function does: one that raises or returns something that is not an
        :class:`Event` is logged (``stream.farewell_failed``) and its event left out.
        ``expired``: an event named ``expired`` (JSON data: ``reason`` and ``expires_at``) and a jittered
        ``retry:``: the client gets a fresh credential and reconnects, resuming after its last id.
        ``revoked``: an event named ``revoked`` (JSON data: ``reason``) and no ``retry:``: the client
        reconnects after its own delay, and a route that refuses the revoked credential (401, 403) stops
        it (docs/auth.md)."""
        reason = stream.close_reason
        if reason is CloseReason.REVOKED:
            return Event.json({"reason": reason.value}, event="revoked").encode(sep)
        hint = Event(retry=reconnect_ms(self.drain_settings.reconnect, self._rng)).encode(sep)
        if reason is CloseReason.EXPIRED:
            data = {"reason": reason.value, "expires_at": stream.expires_at}
            return Event.json(data, event="expired").encode(sep) + hint
        if self.farewell is None:
            return hint
        try:
            last = self.farewell(stream)
            if last is None:
                return hint
            if not isinstance(last, Event):
                raise TypeError(f"farewell(stream) must return an Event or None, not {type(last).__name__}")
            return last.encode(sep) + hint
        except Exception:
            logs.exception("stream.farewell_failed", stream_id=stream.stream_id, route=stream.route)
            return hint

    def _finish_drain(self, live: LoopSupervision) -> None:
        live.drain_finished_at = anyio.current_time()
        for timer in live.drain_timers:
            timer.cancel()
        live.drain_timers.clear()
        duration = live.drain_finished_at - (live.drain_started_at or live.drain_finished_at)
        self.notify("drain_finished", duration)
        log.info("drain.finished", duration_s=round(duration, 6))
        live.drained.set()

    def _listen_for_signals(self, live: LoopSupervision) -> None:
        live.listening_for_signals = True
        if not self.drain_settings.on_signals:
            return
        not_chained = listen_for_signals(self._on_signal)
        if not_chained == NO_SERVER_HANDLER:
            log.warning(
                "drain.no_signal_to_chain",
                hint="the server handles neither SIGTERM nor SIGINT here, so a signal ends the process without "
                "a drain (plain hypercorn's worker processes, hypercorn -k trio): use `hypercorn --workers 0`, "
                "the drain endpoint or supervisor.drain(); see docs/deploying.md",
            )
            return
        if not_chained is not None:
            logs.debug("drain.signals", chained=False, reason=not_chained)
            return
        logs.debug("drain.signals", chained=True)
        server_timeout = server_graceful_timeout()
        if server_timeout is not None and self.drain_settings.grace >= server_timeout:
            log.warning(
                "drain.grace_exceeds_server_timeout",
                drain_grace_s=self.drain_settings.grace,
                server_graceful_timeout_s=server_timeout,
                hint="the server would cut streams before the drain ends: lower drain_grace",
            )

    async def _on_signal(self, signum: int) -> None:
        live = self.loop_supervision
        live.signals_seen += 1
        if live.signals_seen == 1:
            log.info("drain.signal", signal=signal.Signals(signum).name)
            self.begin_drain()
        else:
            log.warning("drain.forced", signal=signal.Signals(signum).name)
            self.force_close()

    # -- operator endpoints ------------------------------------------------------------------------------

    def readiness(self) -> ASGIApp:
        """An ASGI app for readiness probes: 200, and 503 from the first moment of a drain."""
        return ReadinessEndpoint(self)

    def liveness(self) -> ASGIApp:
        """An ASGI app for liveness probes: 200 while the process runs."""
        return LivenessEndpoint()

    def drain_endpoint(self, token: str) -> ASGIApp:
        """An ASGI app that drains on ``POST`` with ``Authorization: Bearer <token>`` (off unless mounted)."""
        return DrainEndpoint(self, token)

    # -- observers -----------------------------------------------------------------------------------

    def subscribe(self, observer: StreamObserver | Callable[[SupervisedStream, Transition], None]) -> StreamObserver:
        """Add an observer: a :class:`StreamObserver`, or a callable ``(stream, transition)``."""
        if not isinstance(observer, StreamObserver):
            if not callable(observer):
                raise TypeError(f"an observer is a StreamObserver or a callable, not {type(observer).__name__}")
            observer = _TransitionCallback(observer)
        self._observers.append(observer)
        self._index_handlers()
        return observer

    def unsubscribe(self, observer: StreamObserver) -> None:
        self._observers.remove(observer)
        self._index_handlers()

    def notify(self, method: str, *args: Any) -> None:
        """Call ``method(*args)`` on every observer that has it; one that fails is logged, never raised."""
        for observer in self._handlers.get(method, ()):
            try:
                getattr(observer, method)(*args)
            except Exception:
                logs.exception("observer.failed", observer=type(observer).__qualname__, method=method)

    def _index_handlers(self) -> None:
        """Per method, the observers that override it: ``notify`` runs for every transition and every
        report of what streams sent, so the protocol's no-op methods are left out rather than called."""
        self._handlers = {
            name: [o for o in self._observers if getattr(type(o), name) is not getattr(StreamObserver, name)]
            for name in OBSERVER_METHODS
        }

    # -- installation --------------------------------------------------------------------------------

    def install(self, app: _App) -> _App:
        """Make a Starlette or FastAPI ``app`` use this supervisor: ``Supervisor(...).install(app)``."""
        add_middleware = getattr(app, "add_middleware", None)
        if add_middleware is None:
            raise TypeError(
                f"{type(app).__name__} has no add_middleware(); wrap a plain ASGI app with "
                "SupervisorMiddleware(app, supervisor)"
            )
        add_middleware(SupervisorMiddleware, supervisor=self)
        return app


def _closer(streams: list[SupervisedStream], trigger: Trigger) -> Callable[[float], None]:
    """A timer callback that feeds ``trigger`` to ``streams`` (those already closed drop it: the first
    ending wins)."""

    def close(now: float) -> None:
        for stream in streams:
            stream.trigger(trigger)

    return close


class SupervisorMiddleware:
    """ASGI middleware that hands ``supervisor`` to the SupervisedStreams of the app it wraps."""

    def __init__(self, app: ASGIApp, supervisor: Supervisor) -> None:
        self.app = app
        self.supervisor = supervisor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.supervisor.lifespan_seen = True
            await self.app(scope, self._lifespan_receive(receive), send)
            return
        scope[SCOPE_KEY] = self.supervisor
        token = _serving.set(self.supervisor)
        try:
            await self.app(scope, receive, send)
        finally:
            _serving.reset(token)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        """The lifespan's ``receive``, whose shutdown waits for the supervisor's runs to end (the
        server exits once the app's shutdown is complete)."""

        async def shutdown_after_runs() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.supervisor.wait_runs()
            return message

        return shutdown_after_runs


default_supervisor = Supervisor()
"""The supervisor of apps that install none."""


def supervisor_for(scope: Scope) -> Supervisor:
    supervisor: Supervisor = scope.get(SCOPE_KEY, default_supervisor)
    return supervisor


_serving: ContextVar[Supervisor | None] = ContextVar("ssesup.serving_supervisor", default=None)


def serving_supervisor() -> Supervisor:
    """The supervisor installed on the app whose request is being served here, else the default one."""
    return _serving.get() or default_supervisor
