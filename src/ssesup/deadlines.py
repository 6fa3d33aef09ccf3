"""When the timer service should look at a stream again: a pure function of numbers.

Owns: :func:`next_check`, the one place that combines a stream's ping, send deadline, dead-peer
check and expiry into one deadline (a stream has one timer entry for all four). Does not own: what happens when
it comes (the actor's timer callback) or the clock (the caller passes ``now``). Tested without a loop.
"""

from __future__ import annotations

import math


def next_check(
    now: float,
    last_activity: float,
    ping: float,
    send_timeout: float,
    send_started: float | None,
    dead_peer_timeout: float,
    stalled_since: float | None,
    expires: float | None = None,
) -> float:
    """The next time to look at a stream (``math.inf``: never), in the clock of ``now``.

    * ``ping`` after the last activity (a send, or the last ping), when pings are on;
    * a send in flight (``send_started``) at its deadline; with none in flight, when no ping check comes
      at least as often as the send timeout, every quarter of the timeout, so that a send that starts is
      caught within 1.25x the timeout (with a ping check that often, the check that finds a send in
      flight schedules its exact deadline);
    * dead-peer checks every half of the timeout, or, once unacknowledged bytes were seen
      (``stalled_since``), when the timeout since then runs out;
    * the credential's expiry (``expires``, in the clock of ``now``), when the stream has one.
    """
    deadline = last_activity + ping if ping else math.inf
    if send_timeout:
        if send_started is not None:
            deadline = min(deadline, send_started + send_timeout)
        elif not 0 < ping <= send_timeout:
            deadline = min(deadline, now + send_timeout / 4)
    if dead_peer_timeout:
        look = now + dead_peer_timeout / 2 if stalled_since is None else stalled_since + dead_peer_timeout
        deadline = min(deadline, look)
    if expires is not None:
        deadline = min(deadline, expires)
    return deadline
