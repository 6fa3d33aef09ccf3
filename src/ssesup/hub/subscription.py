"""One subscriber of the hub: its resume point, its bounded mailbox, and what it sends.

Owns: reading the id a subscriber resumes from, replaying history after it, the seam to live events
(no gap, no duplicate), the mailbox (bounded in events and bytes) and its overflow policy, the gap
events, and the subscriber's id, which says where it is in every channel. Does not own the reader that
fills the mailbox (``ssesup.hub.fanout``) or storage (the engine).

How a subscription starts: it joins each channel on its loop's reader first (from then on, every entry
after the returned cursor reaches its mailbox), then replays history after the id it asked for, then
takes from the mailbox, skipping what it already sent (a position per channel). Its first event is an
id with no data (``id: ...`` and a blank line): clients dispatch nothing, but an ``EventSource`` takes
the id, so even a client that got no event yet resumes from where it subscribed.
"""

from __future__ import annotations

import enum
import json
import re
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from functools import partial
from types import AsyncGeneratorType
from typing import TYPE_CHECKING, Any

from ssesup._loop import wake
from ssesup.current import running_stream
from ssesup.errors import StreamEnding
from ssesup.events import Event
from ssesup.hub.backend import Entry, History, Missed
from ssesup.hub.ids import (
    MAX_CHANNELS,
    MAX_ID_BYTES,
    GapReason,
    Position,
    Unhonoured,
    channels_digest,
    format_id,
    parse_id,
)
from ssesup.hub.waiter import Waiter
from ssesup.states import Trigger

if TYPE_CHECKING:
    from ssesup.hub import Hub
    from ssesup.hub.fanout import LoopHub
    from ssesup.stream import SupervisedStream

# Entries read from history per engine call while replaying.
PAGE = 500


class Overflow(enum.Enum):
    """What a full mailbox does with a subscriber that does not keep up."""

    DISCONNECT = "disconnect"
    """Close its stream with ``slow_consumer``; the client reconnects and resumes from history."""
    DROP_OLDEST = "drop_oldest"
    """Drop its oldest events; it gets a gap event (reason ``dropped``) before the next one."""


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


def check_channels(channels: Sequence[str]) -> tuple[str, ...]:
    """``channels`` as a tuple when they are a valid subscription: 1 to 16 distinct valid names
    (:func:`check_channel`); else :class:`InvalidChannel` (a ``ValueError``), or ``TypeError`` for a
    name that is not a str. For channel lists that come from a request: answer 400 with the message."""
    if isinstance(channels, str):
        raise TypeError(f"channels are a sequence of names, not one str: [{_shown(channels)}]")
    if not channels:
        raise InvalidChannel("subscribe to at least one channel")
    if len(channels) > MAX_CHANNELS:
        raise InvalidChannel(f"a subscription has at most {MAX_CHANNELS} channels (its id must fit 256 bytes)")
    for channel in channels:
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


class Subscription:
    """An async iterator of the :class:`~ssesup.Event` of one or more channels, ids set by the hub.

    Made by :meth:`Hub.subscribe`. Its first event has only an id (where it starts); a gap event
    (``event`` named by the hub's ``gap_event``) says when events were lost. Close it with ``aclose()``
    or ``async with`` (a stream's generator that uses it closes it in its own ``finally``), from any
    task: a task waiting in it ends its iteration. It is iterated once, by one task at a time; closed,
    it does not join again.
    """

    __slots__ = (
        "_bytes",
        "_closed",
        "_digest",
        "_dropped",
        "_dropped_upto",
        "_epoch",
        "_frame",
        "_items",
        "_loop_hub",
        "_max_bytes",
        "_max_events",
        "_new_epoch",
        "_overflowed",
        "_positions",
        "_wakeup",
        "channels",
        "hub",
        "last_event_id",
        "mailbox",
        "overflow",
        "sep",
        "stream",
    )

    def __init__(self, hub: Hub, channels: Sequence[str], last_event_id: str | None, *, sep: str = "\r\n") -> None:
        self.hub = hub
        self.channels = check_channels(channels)
        self.last_event_id = last_event_id or None
        self.sep = sep
        self.stream: SupervisedStream | None = None
        # (channel, entry): one tuple per entry, shared by every subscriber (nothing allocated per subscriber).
        self.mailbox: deque[tuple[str, Entry]] = deque()
        self._bytes = 0
        self._max_events = hub.mailbox_events
        self._max_bytes = hub.mailbox_bytes
        self.overflow = hub.overflow_of(self.channels)
        self._digest = channels_digest(self.channels)
        self._positions: dict[str, Position] = {}
        self._epoch = ""
        self._frame = (sep, "", self._digest)  # Entry.framed's key: kept, not made per delivery
        self._new_epoch: str | None = None
        self._dropped = 0
        self._dropped_upto: dict[str, Position] = {}
        self._overflowed = False
        self._closed = False
        self._wakeup: Any = None
        self._loop_hub: LoopHub | None = None
        self._items: AsyncGenerator[Any, None] | None = None

    # -- the iterator of events ----------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self._items is None:
            if self._closed:  # closed before it was iterated, or after: it does not join again
                raise StopAsyncIteration
            self._items = self._run(encode=False)
        event: Event = await self._items.__anext__()
        return event

    async def aclose(self) -> None:
        """End the subscription: it leaves the hub; a task waiting in it (another task) ends its iteration."""
        items = self._items
        if isinstance(items, AsyncGeneratorType) and items.ag_running:
            # Another task is inside it, waiting (for an event, or for the engine while it starts): end
            # the subscription now; that task, woken, ends its iteration (``StopAsyncIteration``).
            self._close()
            return
        self._items = None
        if items is not None:
            await items.aclose()
        self._close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def encoded(self) -> AsyncGenerator[bytes, None]:
        """The same, encoded for a stream (what :meth:`Hub.stream` sends): each event is encoded once
        per publish and separator, and, for a subscription of one channel, framed with its id once per
        publish, separator and epoch, whatever the number of subscribers.

        A subscription is iterated once: as events or encoded, not both (``RuntimeError``)."""
        if self._items is not None or self._closed:
            raise RuntimeError(
                "this subscription is closed" if self._closed else "this subscription is iterated already"
            )
        items = self._items = self._run(encode=True)
        return items

    # -- what the reader calls -----------------------------------------------------------------------

    def offer(self, item: tuple[str, Entry]) -> Any:
        """A new ``(channel, entry)`` for this subscriber's mailbox (the reader's call, never blocking).
        Returns the subscriber's wake-up when it waits for one (the caller wakes it), else ``None``."""
        if self._closed or self._overflowed:
            return None
        mailbox = self.mailbox
        mailbox.append(item)
        entry = item[1]
        # The body is made by then for most subscribers (the first one made it): a lookup, not a call.
        self._bytes += len(entry._encoded.get(self.sep) or entry.body(self.sep))
        if len(mailbox) > self._max_events or self._bytes > self._max_bytes:
            if self.overflow is Overflow.DISCONNECT:
                self._disconnect()
                return None
            while len(mailbox) > 1 and (len(mailbox) > self._max_events or self._bytes > self._max_bytes):
                dropped_channel, dropped = mailbox.popleft()
                self._bytes -= len(dropped.body(self.sep))
                self._dropped += 1
                self._dropped_upto[dropped_channel] = dropped.position
        wakeup = self._wakeup
        self._wakeup = None
        return wakeup

    @property
    def held_bytes(self) -> int:
        """The bytes of the events in the mailbox (as the subscriber sends them)."""
        return self._bytes

    def epoch_changed(self, epoch: str) -> None:
        """The engine's history was lost (a new epoch): tell the subscriber with a gap."""
        self._new_epoch = epoch
        if self._wakeup is not None:
            wake(self._wakeup)
            self._wakeup = None

    # -- the subscription's life ---------------------------------------------------------------------

    async def _run(self, *, encode: bool) -> AsyncGenerator[Any, None]:
        """The subscription's items: bytes (``encode``) or events. The live part takes every entry
        its mailbox holds without waiting, and waits (once) only when the mailbox is empty."""
        hub = self.hub
        if self.stream is None:
            self.stream = running_stream()
        loop_hub = self._loop_hub = hub.loop_hub()
        hub.count_subscriber(1)
        try:
            # The start in methods of their own: what it needs is not kept, with the generator's frame,
            # for as long as the subscription lives.
            first, pages = await self._begin(loop_hub, encode)
            if self._closed:  # by another task, while it joined: what it joined after that, it leaves
                loop_hub.leave(self)
                return
            yield first
            if pages:
                async for item in self._replay(loop_hub, pages, encode):
                    yield item
                if self._closed:  # by another task, while it read history (the replay ended there)
                    return
            del first, pages
            positions = self._positions
            mailbox = self.mailbox
            wakeup_of = loop_hub.loop.wakeup
            # One waiter for the subscription's life on asyncio (nothing allocated per wait).
            waiter = None if loop_hub.asyncio_loop is None else Waiter(loop_hub.asyncio_loop)
            # The same for every subscriber of this channel alone: framed once per entry, not per subscriber.
            one_channel = encode and len(self.channels) == 1
            sep = self.sep
            while True:
                if self._overflowed:
                    raise StreamEnding(Trigger.SLOW_CONSUMER, "the subscriber's mailbox overflowed")
                if self._new_epoch is not None:
                    self._set_epoch(self._new_epoch)
                    self._new_epoch = None
                    yield self._gap(encode, GapReason.EPOCH, list(self.channels))
                    continue
                if self._dropped:
                    for dropped_channel, upto in self._dropped_upto.items():
                        positions[dropped_channel] = max(positions[dropped_channel], upto)
                    channels = list(self._dropped_upto)
                    self._dropped_upto = {}
                    dropped, self._dropped = self._dropped, 0
                    yield self._gap(encode, GapReason.DROPPED, channels, dropped=dropped)
                    continue
                if not mailbox:
                    if waiter is not None:
                        self._wakeup = waiter
                        await waiter
                    else:
                        self._wakeup = wakeup = wakeup_of()
                        await wakeup.wait()
                    if self._closed:  # by another task, while this one waited
                        return
                    continue
                channel, entry = mailbox.popleft()
                if mailbox:
                    self._bytes -= len(entry.body(sep))
                else:
                    self._bytes = 0  # what it held was this entry alone (the common case: no body looked up)
                position = entry.position
                if position <= positions[channel]:
                    continue
                positions[channel] = position
                if type(entry) is Missed:
                    yield self._gap(encode, GapReason.EXPIRED, [channel])
                    continue
                if one_channel:
                    frame = self._frame
                    key, framed = entry.last_framed
                    yield framed if key == frame else entry.framed(frame)
                else:
                    yield self._framed(entry) if encode else self._event(entry)
        finally:
            self._close()

    async def _begin(self, loop_hub: LoopHub, encode: bool) -> tuple[bytes | Event, dict[str, History]]:
        """Join every channel, then read history after the id asked for: the first item (an id, or a
        gap when the id cannot be honoured in full) and the first page to replay per channel."""
        epoch = await loop_hub.retrying("epoch", loop_hub.current_epoch)
        self._set_epoch(epoch)
        requested: list[Position] | None = None
        reason: GapReason | None = None
        if self.last_event_id is not None:
            try:
                requested = parse_id(self.last_event_id, epoch, self._digest, len(self.channels))
            except Unhonoured as unhonoured:
                reason = unhonoured.reason
        cursors = []
        for channel in self.channels:
            cursors.append(await loop_hub.join(self, channel))
        read = self.hub.backend.read
        positions = self._positions
        lost: list[str] = []
        pages = {}
        for index, channel in enumerate(self.channels):
            after = requested[index] if requested is not None else None
            if after is None:
                positions[channel] = cursors[index]
                continue
            history = await loop_hub.shared(("read", channel, after), "read", partial(read, channel, after, PAGE))
            if after > history.last:
                reason = reason or GapReason.UNKNOWN
                lost.append(channel)
                positions[channel] = cursors[index]
                continue
            positions[channel] = after
            if history.lost:
                reason = reason or GapReason.EXPIRED
                lost.append(channel)
                # The events up to the floor are gone: the stream resumes after it (the gap says so).
                positions[channel] = max(after, history.floor)
            pages[channel] = history
        if reason is not None:
            asked = self.last_event_id or ""  # a gap answers an id that was asked for: never None here
            return self._gap(encode, reason, lost or list(self.channels), asked[:MAX_ID_BYTES]), pages
        return self._start(encode), pages

    async def _replay(
        self, loop_hub: LoopHub, pages: dict[str, History], encode: bool
    ) -> AsyncGenerator[bytes | Event, None]:
        """History after the id asked for, page by page, from the first pages :meth:`_begin` read."""
        read = self.hub.backend.read
        positions = self._positions
        for channel, history in pages.items():
            while True:
                for entry in history.entries:
                    if entry.position > positions[channel]:
                        positions[channel] = entry.position
                        self.hub.count_replayed(channel)
                        yield self._framed(entry) if encode else self._event(entry)
                if len(history.entries) < PAGE:
                    break
                after = positions[channel]
                history = await loop_hub.shared(("read", channel, after), "read", partial(read, channel, after, PAGE))
                if self._closed:  # by another task, while this one read
                    return

    def _start(self, encode: bool) -> bytes | Event:
        """The first item: only an id (where the subscription starts)."""
        event_id = self._id()
        if encode:
            line_end = self.sep.encode()
            return b"id: " + event_id.encode() + line_end + line_end
        return Event(id=event_id)

    def _set_epoch(self, epoch: str) -> None:
        self._epoch = epoch
        self._frame = (self.sep, epoch, self._digest)

    def _framed(self, entry: Entry) -> bytes:
        """``entry`` encoded with this subscriber's id (its positions are up to date)."""
        if len(self.channels) == 1:  # the id is the same for every subscriber of this channel alone
            return entry.framed(self._frame)
        return b"id: " + self._id().encode() + self.sep.encode() + entry.body(self.sep)

    def _event(self, entry: Entry) -> Event:
        fields = entry.event
        return Event(fields.data, event=fields.event, id=self._id(), retry=fields.retry, comment=fields.comment)

    def _id(self) -> str:
        positions = self._positions
        return format_id(self._epoch, self._digest, [positions[channel] for channel in self.channels])

    def _gap(
        self, encode: bool, reason: GapReason, channels: list[str], requested: str | None = None, **extra: int
    ) -> bytes | Event:
        self.hub.count_gap(reason)
        resumed = self._id()
        data = {"reason": reason.value, "requested": requested, "resumed": resumed, "channels": channels, **extra}
        event = Event(json.dumps(data, separators=(",", ":"), ensure_ascii=False), event=self.hub.gap_event, id=resumed)
        return event.encode(self.sep) if encode else event

    def _disconnect(self) -> None:
        """Overflow with the policy ``disconnect``: free the mailbox and end the subscriber's stream."""
        self._overflowed = True
        self.mailbox.clear()
        self._bytes = 0
        self.hub.count_slow_consumer()
        if self._loop_hub is not None:
            self._loop_hub.leave(self)
        if self.stream is not None:
            self.stream.trigger(Trigger.SLOW_CONSUMER)
        if self._wakeup is not None:
            wake(self._wakeup)
            self._wakeup = None

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.mailbox.clear()
        self._bytes = 0
        if self._loop_hub is not None:
            self._loop_hub.leave(self)
            self.hub.count_subscriber(-1)
        if self._wakeup is not None:  # a task waits in it: wake it to end its iteration
            wake(self._wakeup)
            self._wakeup = None
