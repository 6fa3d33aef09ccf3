"""ssesup: Server-Sent Events for Starlette and FastAPI, supervised.

A route returns ``SupervisedStream(gen)``; the connection becomes an actor with an explicit state
machine, owned by one supervisor per event loop.
"""

from ssesup.events import Event
from ssesup.hub import Hub, HubUnavailable
from ssesup.limits import StreamLimits
from ssesup.logs import RedactQueryStrings, configure_logging
from ssesup.metrics import metrics_app
from ssesup.observers import StreamObserver
from ssesup.states import CloseReason, IllegalTransition, State, Transition, Trigger
from ssesup.stream import SupervisedStream, current_stream
from ssesup.supervisor import Supervisor, SupervisorMiddleware, default_supervisor

__all__ = [
    "CloseReason",
    "Event",
    "Hub",
    "HubUnavailable",
    "IllegalTransition",
    "RedactQueryStrings",
    "State",
    "StreamLimits",
    "StreamObserver",
    "SupervisedStream",
    "Supervisor",
    "SupervisorMiddleware",
    "Transition",
    "Trigger",
    "configure_logging",
    "current_stream",
    "default_supervisor",
    "metrics_app",
]
__version__ = "0.1.0"
