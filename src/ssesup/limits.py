"""Admission of new streams: caps on concurrent streams, globally and per client.

Owns: deciding whether a new stream may open (:meth:`Admission.admit`) and counting the streams it let
in until they leave (:meth:`Admission.leave`); the :class:`Refusal` a refused stream answers with.
Does not own: the drain's refusal (the supervisor's), sending the refusal (the actor's), metrics or
logs of refusals (the supervisor's observers hear ``rejected``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.types import Scope

if TYPE_CHECKING:
    from ssesup.stream import SupervisedStream


@dataclass(frozen=True)
class Refusal:
    """What a refused stream answers: ``status`` with ``Retry-After``, and a short text body."""

    status: int
    retry_after: int
    reason: str
    """The ``reason`` label of ``ssesup_streams_rejected_total``."""
    body: bytes


@dataclass(frozen=True)
class StreamLimits:
    """Caps on concurrent streams (``None``: no cap)."""


class Admission:
    """One event loop's count of admitted streams, under one :class:`StreamLimits`."""

    def __init__(self, limits: StreamLimits) -> None:
        self.limits = limits

    def admit(self, stream: SupervisedStream, scope: Scope) -> Refusal | None:
        """``None`` when ``stream`` may open (it is counted until :meth:`leave`), else the refusal."""
        return None

    def leave(self, stream: SupervisedStream) -> None:
        """``stream`` has ended: it no longer counts."""
