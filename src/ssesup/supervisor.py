"""The supervisor: the registry of live streams, the central timers, and every transition's observers.

Owns: which streams are alive on this event loop, the loop's :class:`~ssesup.timers.TimerService`,
the drain flag, and the one place where transitions are observed (logs, then metrics and user
observers). Does not own: per-connection I/O (that is the actor's) or state rules (``ssesup.states``).

A ``Supervisor`` is configuration plus an API; its live part is one :class:`LoopSupervision` per event
loop (an anyio ``RunVar``), so several loops in several threads share nothing. With zero configuration
the module's :data:`default_supervisor` is used; ``supervisor.install(app)`` makes an app use another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog
from anyio.lowlevel import RunVar
from starlette.types import ASGIApp, Receive, Scope, Send

from ssesup.events import Event, check_separator
from ssesup.logs import log_transition
from ssesup.states import Transition
from ssesup.timers import TimerService

if TYPE_CHECKING:
    from ssesup.stream import SupervisedStream

log = structlog.get_logger("ssesup")

SCOPE_KEY = "ssesup.supervisor"


class StreamObserver:
    """What the supervisor tells its observers. Subclass and override what you need.

    Every method is called on the event loop, must not block, and may raise: a failing observer is
    logged and never fails a stream.
    """

    def opened(self, stream: SupervisedStream) -> None:
        """A stream registered (state OPEN)."""

    def transitioned(self, stream: SupervisedStream, transition: Transition) -> None:
        """A stream changed state; ``transition.close_reason`` is set when it closed."""

    def sent(self, stream: SupervisedStream, events: int, pings: int, nbytes: int) -> None:
        """A body chunk went out: ``events`` events and ``pings`` pings in ``nbytes`` bytes."""

    def rejected(self, reason: str) -> None:
        """A new stream was refused (``reason``: ``draining``)."""

    def drain_started(self, grace: float) -> None:
        """This loop's supervisor began a drain."""

    def drain_finished(self, duration: float) -> None:
        """The drain ended: every stream is closed."""


class _TransitionCallback(StreamObserver):
    def __init__(self, callback: Callable[[SupervisedStream, Transition], None]) -> None:
        self.callback = callback

    def transitioned(self, stream: SupervisedStream, transition: Transition) -> None:
        self.callback(stream, transition)


class _LogObserver(StreamObserver):
    def transitioned(self, stream: SupervisedStream, transition: Transition) -> None:
        log_transition(stream, transition)


class LoopSupervision:
    """The live part of a supervisor on one event loop."""

    def __init__(self) -> None:
        self.streams: set[SupervisedStream] = set()
        self.timers = TimerService()
        self.draining = False


class Supervisor:
    """Configuration and control of supervised streams.

    ``ping``: seconds of idleness before a keep-alive comment is sent (0 disables).
    ``send_timeout``: seconds a single send may take before the stream is closed (0 disables).
    ``sep``: line separator, ``"\\r\\n"`` (default), ``"\\n"`` or ``"\\r"``.
    ``ping_factory``: makes the ping event instead of the default comment.
    """

    def __init__(
        self,
        *,
        ping: float = 15.0,
        send_timeout: float = 30.0,
        sep: str = "\r\n",
        ping_factory: Callable[[], Event] | None = None,
    ) -> None:
        self.ping = check_seconds("ping", ping)
        self.send_timeout = check_seconds("send_timeout", send_timeout)
        self.sep = check_separator(sep)
        self.ping_factory = ping_factory
        self._observers: list[StreamObserver] = [_LogObserver()]
        self._live: RunVar[LoopSupervision] = RunVar(f"ssesup.supervision.{id(self)}")

    # -- the live part, per event loop -------------------------------------------------------------

    @property
    def live(self) -> LoopSupervision:
        """This event loop's registry, timers and drain flag (created on first use)."""
        try:
            return self._live.get()
        except LookupError:
            supervision = LoopSupervision()
            self._live.set(supervision)
            return supervision

    def streams(self) -> Iterator[SupervisedStream]:
        """The live streams of the current event loop."""
        return iter(tuple(self.live.streams))

    def register(self, stream: SupervisedStream) -> LoopSupervision:
        live = self.live
        live.streams.add(stream)
        self.notify("opened", stream)
        return live

    def unregister(self, stream: SupervisedStream) -> None:
        self.live.streams.discard(stream)

    # -- observers -----------------------------------------------------------------------------------

    def subscribe(self, observer: StreamObserver | Callable[[SupervisedStream, Transition], None]) -> StreamObserver:
        """Add an observer: a :class:`StreamObserver`, or a callable ``(stream, transition)``."""
        if not isinstance(observer, StreamObserver):
            if not callable(observer):
                raise TypeError(f"an observer is a StreamObserver or a callable, not {type(observer).__name__}")
            observer = _TransitionCallback(observer)
        self._observers.append(observer)
        return observer

    def unsubscribe(self, observer: StreamObserver) -> None:
        self._observers.remove(observer)

    def notify(self, method: str, *args: Any) -> None:
        """Call ``method(*args)`` on every observer; one that fails is logged, never raised."""
        for observer in self._observers:
            try:
                getattr(observer, method)(*args)
            except Exception:
                log.exception("observer.failed", observer=type(observer).__qualname__, method=method)

    # -- installation --------------------------------------------------------------------------------

    def install(self, app: Any) -> Any:
        """Make a Starlette or FastAPI ``app`` use this supervisor: ``Supervisor(...).install(app)``."""
        add_middleware = getattr(app, "add_middleware", None)
        if add_middleware is None:
            raise TypeError(
                f"{type(app).__name__} has no add_middleware(); wrap a plain ASGI app with "
                "SupervisorMiddleware(app, supervisor)"
            )
        add_middleware(SupervisorMiddleware, supervisor=self)
        return app


def check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0 (0 disables), not {value!r}")
    return float(value)


class SupervisorMiddleware:
    """ASGI middleware that hands ``supervisor`` to the SupervisedStreams of the app it wraps."""

    def __init__(self, app: ASGIApp, supervisor: Supervisor) -> None:
        self.app = app
        self.supervisor = supervisor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            scope[SCOPE_KEY] = self.supervisor
        await self.app(scope, receive, send)


default_supervisor = Supervisor()
"""The supervisor of apps that install none."""


def supervisor_for(scope: Scope) -> Supervisor:
    supervisor: Supervisor = scope.get(SCOPE_KEY, default_supervisor)
    return supervisor
