"""Channel names: the grammar every name must follow, and the checks of names and lists of them.

Owns: what a channel name may be (1 to 200 characters of ``A-Z a-z 0-9 _ - . : @ / + = # ~``), what a
subscription's list may be (1 to 16 distinct names), and :class:`InvalidChannel`, whose message is safe
to send back to a client. Does not own what a channel holds (the engines) or who follows it.

Names are kept (in memory, as Redis keys) while their channel has history or subscribers, and often come
from requests (``user:42``, a path parameter): bounded and plain, never a place for a client to store
data or control characters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ssesup.hub.ids import MAX_CHANNELS

# A channel name: 1 to MAX_CHANNEL_LENGTH characters, each an ASCII letter or digit or one of
# ``_ - . : @ / + = # ~`` (no spaces, no control characters). Names are kept (in memory, as Redis keys)
# while their channel has history or subscribers, and often come from requests: bounded and plain.
MAX_CHANNEL_LENGTH = 200
CHANNEL_CHARACTERS = "A-Za-z0-9_.:@/+=#~-"
_CHANNEL = re.compile(f"[{CHANNEL_CHARACTERS}]{{1,{MAX_CHANNEL_LENGTH}}}")
_CHANNEL_SHOWN = 40  # characters of a refused name an error repeats


class InvalidChannel(ValueError):
    """A channel name, or a list of them, that the hub refuses. Its message is safe to send back to the
    client that asked (it repeats at most the first 40 characters of a name)."""


# ssesup's own channels (control messages between the processes of one engine: revocations, a run's
# cancellation) are named with this prefix, which no client's name can have: nothing a client asks for
# reaches them. The hub's internal API (``Hub.publish_internal``, ``Hub.subscribe_internal``) adds it.
INTERNAL_PREFIX = "!"


def internal_channel(name: str) -> str:
    """The internal channel of ``name`` (a valid channel name): ``!name``."""
    return INTERNAL_PREFIX + check_channel(name)


def check_channels(channels: Sequence[str], *, internal: bool = False) -> tuple[str, ...]:
    """``channels`` as a tuple when they are a valid subscription: 1 to 16 distinct valid names
    (:func:`check_channel`); else :class:`InvalidChannel` (a ``ValueError``), or ``TypeError`` for a
    name that is not a str. For channel lists that come from a request: answer 400 with the message.
    With ``internal`` (ssesup's own subscriptions), names of internal channels are valid too."""
    if isinstance(channels, str):
        raise TypeError(f"channels are a sequence of names, not one str: [{_shown(channels)}]")
    if not channels:
        raise InvalidChannel("subscribe to at least one channel")
    if len(channels) > MAX_CHANNELS:
        raise InvalidChannel(f"a subscription has at most {MAX_CHANNELS} channels (its id must fit 256 bytes)")
    for channel in channels:
        if internal and isinstance(channel, str) and channel.startswith(INTERNAL_PREFIX):
            check_channel(channel[len(INTERNAL_PREFIX) :])
        else:
            check_channel(channel)
    if len(set(channels)) != len(channels):
        twice = next(channel for channel in channels if channels.count(channel) > 1)
        raise InvalidChannel(f"channel {_shown(twice)} appears twice")
    return tuple(channels)


def check_channel(channel: object) -> str:
    """``channel`` when it is a valid channel name: 1 to 200 characters of ``A-Z a-z 0-9 _ - . : @ / +
    = # ~``; else :class:`InvalidChannel` (a ``ValueError``), or ``TypeError`` when it is not a str."""
    if not isinstance(channel, str):
        raise TypeError(f"a channel name is a str, not {type(channel).__name__}")
    if not _CHANNEL.fullmatch(channel):
        if not channel:
            raise InvalidChannel("a channel name is not empty")
        if len(channel) > MAX_CHANNEL_LENGTH:
            raise InvalidChannel(f"a channel name has at most {MAX_CHANNEL_LENGTH} characters, not {len(channel)}")
        raise InvalidChannel(
            f"a channel name is made of A-Z a-z 0-9 and _ - . : @ / + = # ~ only, not {_shown(channel)}"
        )
    return channel


def _shown(name: str) -> str:
    cut = name[:_CHANNEL_SHOWN]
    return repr(cut) + ("..." if len(name) > _CHANNEL_SHOWN else "")
