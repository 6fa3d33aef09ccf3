"""Switch from sse-starlette with one import: ``from ssesup.compat import EventSourceResponse, ...``.

Owns: the public names of sse-starlette 3.7 (``sse_starlette``, ``sse_starlette.sse`` and
``sse_starlette.event`` are ``ssesup.compat``, ``ssesup.compat.sse`` and ``ssesup.compat.event``), with
the same signatures, defaults and bytes, each stream a supervised actor underneath. Does not own:
anything a stream does (``ssesup.stream``). See docs/migrating.md.
"""

from ssesup.compat.event import JSONServerSentEvent, ServerSentEvent, ensure_bytes
from ssesup.compat.sse import AppStatus, EventSourceResponse, SendTimeoutError

__all__ = [
    "AppStatus",
    "EventSourceResponse",
    "JSONServerSentEvent",
    "SendTimeoutError",
    "ServerSentEvent",
    "ensure_bytes",
]
