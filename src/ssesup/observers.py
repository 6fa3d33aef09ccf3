"""The observer protocol: what the supervisor tells the parts that watch streams (logs, metrics, users).

Owns: :class:`StreamObserver` and the built-in log observer. Does not own: calling them (the supervisor
does, in one place, catching what they raise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ssesup.logs import log_transition
from ssesup.states import Transition

if TYPE_CHECKING:
    from ssesup.stream import SupervisedStream


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
        """Since ``stream`` was last reported, ``events`` events and ``pings`` pings went out in
        ``nbytes`` bytes. Reported once per stream per second at most (``supervisor.REPORT_EVERY``)
        while it sends, and once more when it ends, never once per send: counting stays off the path
        of every event. The last report of a stream comes after its ``transitioned`` to CLOSED (its
        farewell and end of body are sent after the close), so totals per stream are complete only
        then."""

    def rejected(self, reason: str) -> None:
        """A new stream was refused (``reason``: ``draining``, ``max_streams``, ``max_streams_per_client``,
        ``max_streams_per_user``)."""

    def drain_started(self, grace: float) -> None:
        """This loop's supervisor began a drain."""

    def drain_finished(self, duration: float) -> None:
        """The drain ended: every stream is closed."""

    def drain_auth_failed(self, reason: str) -> None:
        """The drain endpoint refused a request (``reason``: ``missing_token``, ``wrong_token``, ``backoff``)."""


OBSERVER_METHODS = (
    "opened",
    "transitioned",
    "sent",
    "rejected",
    "drain_started",
    "drain_finished",
    "drain_auth_failed",
)


class _TransitionCallback(StreamObserver):
    def __init__(self, callback: Callable[[SupervisedStream, Transition], None]) -> None:
        self.callback = callback

    def transitioned(self, stream: SupervisedStream, transition: Transition) -> None:
        self.callback(stream, transition)


class _LogObserver(StreamObserver):
    def transitioned(self, stream: SupervisedStream, transition: Transition) -> None:
        log_transition(stream, transition)
