"""Who a stream serves, and until when: the checks of ``user`` and ``expires_at``.

Owns: what a stream's ``user`` may be (a str of 1 to :data:`MAX_USER_LENGTH` characters), the user of
a request that Starlette's ``AuthenticationMiddleware`` authenticated (``scope["user"].identity`` when
``is_authenticated``), and ``expires_at`` as a UNIX time (a number of the ``time.time()`` clock, or an
aware ``datetime``). Does not own what either does (the actor's timer ends an expired stream; the
supervisor indexes streams by user, closes them when revoked; the hub counts them in presence).

A user is a name the app gives (an account id, an email): ssesup keeps it while the user's streams
live, names it in logs (escaped) and, for presence and revocation, sends it to the hub's engine. Never
a secret: not a token, not a session id.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from starlette.types import Scope

# A user's name is held per live stream, written in logs and in the hub's engine: bounded.
MAX_USER_LENGTH = 256


def check_user(user: object, where: str = "user") -> str | None:
    """``user`` when it is ``None`` or a str of 1 to MAX_USER_LENGTH characters; else ``TypeError`` or
    ``ValueError`` (naming ``where``)."""
    if user is None:
        return None
    if not isinstance(user, str):
        raise TypeError(f"{where} is a str (the user's id) or None, not {type(user).__name__}")
    if not 0 < len(user) <= MAX_USER_LENGTH:
        raise ValueError(f"{where} has 1 to {MAX_USER_LENGTH} characters, not {len(user)}")
    return user


def user_of_scope(scope: Scope) -> str | None:
    """The identity of the user Starlette's ``AuthenticationMiddleware`` authenticated (``None`` when it
    is not installed or the user is anonymous)."""
    user: Any = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    try:
        identity = user.identity
    except NotImplementedError:  # starlette's BaseUser: a user class without an identity
        return None
    # Inferred, never refused: an app's identity may be a number or a UUID (a primary key), or empty, or
    # longer than a user id may be; the request must not fail for it. Such a stream has no user unless
    # the app passes ``user=`` itself (which is checked).
    text = identity if isinstance(identity, str) else str(identity) if identity is not None else ""
    return text if 0 < len(text) <= MAX_USER_LENGTH else None


def check_expires_at(expires_at: object) -> float | None:
    """``expires_at`` as a UNIX time in seconds: a number (``time.time()``'s clock) or an aware
    ``datetime``; ``None`` for a stream that never expires."""
    if expires_at is None:
        return None
    if isinstance(expires_at, datetime):
        if expires_at.tzinfo is None or expires_at.utcoffset() is None:
            raise ValueError("expires_at is an aware datetime (with a tzinfo, datetime.now(UTC)), not a naive one")
        return expires_at.timestamp()
    if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)) or not math.isfinite(expires_at):
        raise TypeError(f"expires_at is a UNIX time (time.time()) or an aware datetime, not {expires_at!r}")
    return float(expires_at)
