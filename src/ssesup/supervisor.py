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

TransitionObserver = Callable[["SupervisedStream", Transition], None]
SCOPE_KEY = "ssesup.supervisor"


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
        self._observers: list[TransitionObserver] = [log_transition]
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
        return live

    def unregister(self, stream: SupervisedStream) -> None:
        self.live.streams.discard(stream)

    # -- observers -----------------------------------------------------------------------------------

    def subscribe(self, observer: TransitionObserver) -> None:
        """Call ``observer(stream, transition)`` on every transition of every stream."""
        self._observers.append(observer)

    def observe(self, stream: SupervisedStream, transition: Transition) -> None:
        """Tell every observer; an observer that fails is logged and never fails the stream."""
        for observer in self._observers:
            try:
                observer(stream, transition)
            except Exception:
                log.exception("observer.failed", observer=getattr(observer, "__qualname__", repr(observer)))

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
