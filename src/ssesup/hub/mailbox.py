"""One subscriber's mailbox: the bounded queue between the loop's reader and the subscriber.

Owns: the queue of ``(channel, entry)`` the reader offers and the subscriber takes, its bounds (events
and encoded bytes) and what happens past them (the overflow policy: ``disconnect`` ends the subscriber,
``drop_oldest`` drops the oldest and counts what it dropped), the subscriber's wake-up while it waits,
and what the subscriber must hear before its next event (an overflow, a new epoch, dropped events).
Does not own: ids, gaps or history (``ssesup.hub.subscription``), or the reader (``ssesup.hub.fanout``,
which knows mailboxes and nothing of subscriptions).

``offer`` runs once per subscriber per event published: it appends one shared tuple, adds the event's
size (a lookup in the entry's cache of bodies, made by the first subscriber, not a call) and returns the
wake-up of a subscriber that waits, for the reader to ring with the others.

The queue is a list read from ``head`` on, emptied (its storage freed) when the subscriber has taken all
of it, and compacted when what was taken is most of a long one: an idle subscriber's mailbox holds an
empty list (56 bytes), where a deque always holds a block of 64 slots (760 bytes with the deque). Until
it is compacted, a list keeps the entries taken or dropped before ``head`` alive: fewer than
``COMPACT_AFTER``, or fewer than it holds past ``head`` (within its bounds).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

from ssesup._loop import wake
from ssesup.hub.backend import Entry
from ssesup.hub.ids import Position

# Taken entries are dropped from the front of a mailbox's list once there are this many and they are
# at least half of it.
COMPACT_AFTER = 64


class Overflow(enum.Enum):
    """What a subscriber's mailbox does when it is full.

    ``disconnect`` (the default) closes the subscriber's stream with the close reason
    ``slow_consumer``: its client reconnects and resumes from history, so nothing is lost while history
    still holds what it missed. ``drop_oldest`` drops the oldest waiting events and sends a ``dropped``
    gap in their place; the stream stays open.
    """

    DISCONNECT = "disconnect"
    DROP_OLDEST = "drop_oldest"


class Mailbox:
    """A subscriber's queue, bounded by ``max_events`` and ``max_bytes`` (bodies encoded with ``sep``).

    The subscriber takes ``items[head]`` while ``head < len(items)``, moves ``head`` on (emptying the
    list when it took the last, else :meth:`compact`) and lowers ``size`` as it takes them; it sets
    ``wakeup`` before it waits, and reads ``overflowed``, ``new_epoch`` and ``dropped``
    (``dropped_upto``: ``None`` until something is dropped) before each event it takes. ``held`` is
    what it has still to take.
    ``on_overflow()`` is called once when the policy ``disconnect`` ends the subscriber.
    """

    __slots__ = (
        "channels",
        "closed",
        "dropped",
        "dropped_upto",
        "head",
        "items",
        "max_bytes",
        "max_events",
        "new_epoch",
        "on_overflow",
        "overflow",
        "overflowed",
        "sep",
        "size",
        "wakeup",
    )

    def __init__(
        self,
        channels: Sequence[str],
        sep: str,
        max_events: int,
        max_bytes: int,
        overflow: Overflow,
        on_overflow: Callable[[], None],
    ) -> None:
        self.channels = tuple(channels)
        self.sep = sep
        # (channel, entry): one tuple per entry, shared by every mailbox (nothing allocated per subscriber);
        # those before ``head`` are taken.
        self.items: list[tuple[str, Entry]] = []
        self.head = 0
        self.size = 0
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.on_overflow = on_overflow
        self.overflowed = False
        self.closed = False
        self.new_epoch: str | None = None
        self.dropped = 0
        self.dropped_upto: dict[str, Position] | None = None
        self.wakeup: Any = None

    def offer(self, item: tuple[str, Entry]) -> Any:
        """A new ``(channel, entry)`` (the reader's call, never blocking). Returns the subscriber's wake-up
        when it waits for one (the caller wakes it), else ``None``."""
        if self.closed or self.overflowed:
            return None
        items = self.items
        items.append(item)
        entry = item[1]
        self.size += len(entry.encoded.get(self.sep) or entry.body(self.sep))
        if len(items) - self.head > self.max_events or self.size > self.max_bytes:
            if self.overflow is Overflow.DISCONNECT:
                self.overflowed = True
                self._empty()
                self.on_overflow()
            else:
                self._drop_oldest()
        wakeup = self.wakeup
        self.wakeup = None
        return wakeup

    @property
    def held(self) -> int:
        """Entries offered and not yet taken."""
        return len(self.items) - self.head

    def compact(self) -> None:
        """Drop the entries taken from the front of a long list, mostly taken (a subscriber that never
        quite catches up never empties it)."""
        head = self.head
        if head >= COMPACT_AFTER and 2 * head >= len(self.items):
            del self.items[:head]
            self.head = 0

    def _empty(self) -> None:
        self.items.clear()
        self.head = 0
        self.size = 0

    def _drop_oldest(self) -> None:
        items = self.items
        head = self.head
        while len(items) - head > 1 and (len(items) - head > self.max_events or self.size > self.max_bytes):
            channel, dropped = items[head]
            head += 1
            self.size -= len(dropped.body(self.sep))
            self.dropped += 1
            if self.dropped_upto is None:
                self.dropped_upto = {}
            self.dropped_upto[channel] = dropped.position
        self.head = head
        self.compact()

    def epoch_changed(self, epoch: str) -> None:
        """The engine's history was lost (a new epoch): the subscriber says so with a gap."""
        self.new_epoch = epoch
        self.ring()

    def close(self) -> None:
        """No more offers; a subscriber that waits is woken (to end its iteration)."""
        self.closed = True
        self._empty()
        self.ring()

    def ring(self) -> None:
        """Wake the subscriber if it waits."""
        if self.wakeup is not None:
            wake(self.wakeup)
            self.wakeup = None
