"""One subscriber of the hub: its resume point, its bounded mailbox, and what it sends.

Owns: reading the id a subscriber resumes from, replaying history after it, the seam to live events
(no gap, no duplicate), the gap events, and the subscriber's id, which says where it is in every
channel. Does not own its mailbox (``ssesup.hub.mailbox``: the bounded queue and its overflow policy),
the reader that fills it (``ssesup.hub.fanout``) or storage (the engine).

How a subscription starts: it joins each channel on its loop's reader first (from then on, every entry
after the returned cursor reaches its mailbox), then replays history after the id it asked for, then
takes from the mailbox, skipping what it already sent (a position per channel). Its first event is an
id with no data (``id: ...`` and a blank line): clients dispatch nothing, but an ``EventSource`` takes
the id, so even a client that got no event yet resumes from where it subscribed.

A run's channel (``Hub.start_run``): a subscription that asks for no id starts from the run's first
event (a viewer that comes late, or after the end, gets the whole run); a subscription of that channel
alone ends after it relays the run's end (a ``hub.stream`` then completes), and one that resumes after
the end gets the end again, then ends.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from functools import partial
from types import AsyncGeneratorType
from typing import TYPE_CHECKING, Any, Literal

from ssesup.current import running_stream
from ssesup.errors import StreamEnding
from ssesup.events import Event
from ssesup.hub.backend import Entry, History, Missed, RunEnd, RunRecord
from ssesup.hub.channels import check_channels
from ssesup.hub.ids import (
    MAX_ID_BYTES,
    GapReason,
    Position,
    Unhonoured,
    channels_digest,
    format_id,
    parse_id,
    position_before,
)
from ssesup.hub.mailbox import COMPACT_AFTER, Mailbox, Overflow
from ssesup.hub.waiter import Waiter
from ssesup.states import Trigger

if TYPE_CHECKING:
    from ssesup.hub import Hub
    from ssesup.hub.fanout import LoopHub
    from ssesup.stream import SupervisedStream

# Entries read from history per engine call while replaying.
PAGE = 500


class Subscription:
    """An async iterator of the :class:`~ssesup.Event` of one or more channels, ids set by the hub.

    Made by :meth:`Hub.subscribe`. Its first event has only an id (where it starts); a gap event
    (``event`` named by the hub's ``gap_event``) says when events were lost. Close it with ``aclose()``
    or ``async with`` (a stream's generator that uses it closes it in its own ``finally``), from any
    task: a task waiting in it ends its iteration. It is iterated once, by one task at a time; closed,
    it does not join again.
    """

    __slots__ = (
        "_closed",
        "_digest",
        "_ended",
        "_epoch",
        "_frame",
        "_items",
        "_loop_hub",
        "_positions",
        "_present",
        "channels",
        "hub",
        "internal",
        "last_event_id",
        "mailbox",
        "sep",
        "stream",
    )

    def __init__(
        self,
        hub: Hub,
        channels: Sequence[str],
        last_event_id: str | None,
        *,
        sep: str = "\r\n",
        internal: bool = False,
    ) -> None:
        self.hub = hub
        self.internal = internal  # ssesup's own (control messages): never counted in presence
        self.channels = check_channels(channels, internal=internal)
        self.last_event_id = last_event_id or None
        self.sep = sep
        self.stream: SupervisedStream | None = None
        self.mailbox = Mailbox(
            self.channels,
            sep,
            hub.mailbox_events,
            hub.mailbox_bytes,
            hub.overflow_of(self.channels),
            self._slow_consumer,
        )
        self._digest = channels_digest(self.channels)
        self._positions: dict[str, Position] = {}
        self._epoch = ""
        self._frame = (sep, "", self._digest)  # Entry.framed's key: kept, not made per delivery
        self._closed = False
        self._ended = False  # it relayed its run's end (a subscription of one channel ends there)
        self._loop_hub: LoopHub | None = None
        self._items: AsyncGenerator[Any, None] | None = None
        self._present: str | None = None  # the user this subscription counts for in presence, while it does

    @property
    def overflow(self) -> Overflow:
        """What this subscriber's mailbox does when it is full."""
        return self.mailbox.overflow

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

    # -- the subscription's life ---------------------------------------------------------------------

    async def _run(self, *, encode: bool) -> AsyncGenerator[Any, None]:
        """The subscription's items: bytes (``encode``) or events. The live part takes every entry
        its mailbox holds without waiting, and waits (once) only when the mailbox is empty."""
        hub = self.hub
        if self.stream is None:
            self.stream = running_stream()
        loop_hub = self._loop_hub = hub.loop_hub()
        hub.counters.subscribers(1)
        user = self.stream.user if self.stream is not None else None
        if user is not None and not self.internal:
            self._present = user
            hub.loop_presence().join(self.channels, user)
        try:
            # The start in methods of their own: what it needs is not kept, with the generator's frame,
            # for as long as the subscription lives.
            first, pages = await self._begin(loop_hub, encode)
            if self._closed:  # by another task, while it joined: what it joined after that, it leaves
                loop_hub.leave(self.mailbox)
                return
            yield first
            if pages:
                async for item in self._replay(loop_hub, pages, encode):
                    yield item
                # Closed by another task while it read history, or its run's end relayed: the replay
                # ended there.
                if self._closed or self._ended:
                    return
            del first, pages
            positions = self._positions
            mailbox = self.mailbox
            items = mailbox.items
            wakeup_of = loop_hub.loop.wakeup
            # One waiter for the subscription's life on asyncio (nothing allocated per wait).
            waiter = None if loop_hub.asyncio_loop is None else Waiter(loop_hub.asyncio_loop)
            # The same for every subscriber of this channel alone: framed once per entry, not per subscriber.
            one_channel = encode and len(self.channels) == 1
            sep = self.sep
            while True:
                if mailbox.overflowed:
                    raise StreamEnding(Trigger.SLOW_CONSUMER, "the subscriber's mailbox overflowed")
                if mailbox.new_epoch is not None:
                    self._set_epoch(mailbox.new_epoch)
                    mailbox.new_epoch = None
                    yield self._gap(encode, GapReason.EPOCH, list(self.channels))
                    continue
                if mailbox.dropped:
                    yield self._dropped(encode)
                    continue
                head = mailbox.head
                if head == len(items):
                    if waiter is not None:
                        mailbox.wakeup = waiter
                        await waiter
                    else:
                        mailbox.wakeup = wakeup = wakeup_of()
                        await wakeup.wait()
                    if self._closed:  # by another task, while this one waited
                        return
                    continue
                # The oldest entry taken, written out here: once per event delivered.
                channel, entry = items[head]
                head += 1
                if head == len(items):
                    items.clear()  # what it held was this entry alone (the common case: no body looked up)
                    mailbox.head = mailbox.size = 0
                else:
                    mailbox.head = head
                    mailbox.size -= len(entry.body(sep))
                    if head >= COMPACT_AFTER:
                        mailbox.compact()
                position = entry.position
                if position <= positions[channel]:
                    continue
                positions[channel] = position
                if type(entry) is not Entry:
                    if type(entry) is Missed:
                        yield self._gap(encode, GapReason.EXPIRED, [channel])
                        continue
                    # A run's end (RunEnd): relayed; a subscription of its channel alone ends after it.
                    yield self._framed(entry) if encode else self._event(entry)
                    if len(self.channels) == 1:
                        self._ended = True
                        return
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
        runs: list[RunRecord | Literal[False] | None] = []
        for channel in self.channels:
            cursor, run = await loop_hub.join(self.mailbox, channel)
            cursors.append(cursor)
            runs.append(run)
        backend = self.hub.backend
        read = backend.read
        if self.last_event_id is not None:
            runs = []  # a resume goes on after its id, a run's or not
        elif False in runs:  # the channels followed already: their runs' records, read after the join
            no_run = loop_hub.no_run
            for index, channel in enumerate(self.channels):
                if runs[index] is False and no_run.get(channel) == cursors[index]:
                    runs[index] = None  # no run at this cursor, read before (see LoopHub.no_run)
            unread = [channel for channel, run in zip(self.channels, runs, strict=True) if run is False]
            if unread:
                records = iter(await loop_hub.shared(("runs", *unread), "runs", partial(backend.runs, unread)))
                for index, channel in enumerate(self.channels):
                    if runs[index] is False:
                        runs[index] = record = next(records)
                        if record is None and loop_hub.cursors.get(channel) is not None:
                            no_run[channel] = cursors[index]
        positions = self._positions
        lost: list[str] = []
        pages = {}
        for index, channel in enumerate(self.channels):
            after = requested[index] if requested is not None else None
            if runs and (run := runs[index]):  # the channel of a run: from the run's first event
                after = run.start
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
            ended = history.ended
            if ended is not None and not history.entries and len(self.channels) == 1:
                # After its run's end (a client that reconnected after it): the end again, then no more.
                positions[channel] = position_before(ended.position)
                history = History([ended], False, history.last, history.floor, ended)
            pages[channel] = history
        if reason is not None:
            asked = self.last_event_id[:MAX_ID_BYTES] if self.last_event_id is not None else None
            return self._gap(encode, reason, lost or list(self.channels), asked), pages
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
                        self.hub.counters.replayed(channel)
                        yield self._framed(entry) if encode else self._event(entry)
                        if type(entry) is RunEnd and len(self.channels) == 1:
                            self._ended = True  # its run's end: the subscription ends here
                            return
                if len(history.entries) < PAGE:
                    break
                after = positions[channel]
                history = await loop_hub.shared(("read", channel, after), "read", partial(read, channel, after, PAGE))
                if self._closed:  # by another task, while this one read
                    return

    def _dropped(self, encode: bool) -> bytes | Event:
        """The gap for what the mailbox dropped (policy drop_oldest); the positions move past it."""
        mailbox = self.mailbox
        upto = mailbox.dropped_upto or {}
        positions = self._positions
        for channel, position in upto.items():
            positions[channel] = max(positions[channel], position)
        mailbox.dropped_upto = None
        dropped, mailbox.dropped = mailbox.dropped, 0
        return self._gap(encode, GapReason.DROPPED, list(upto), dropped=dropped)

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
        self.hub.counters.gap(reason)
        resumed = self._id()
        data = {"reason": reason.value, "requested": requested, "resumed": resumed, "channels": channels, **extra}
        event = Event.json(data, event=self.hub.gap_event, id=resumed)
        return event.encode(self.sep) if encode else event

    def _slow_consumer(self) -> None:
        """The mailbox overflowed with the policy ``disconnect``: the subscriber leaves and its stream ends
        (the mailbox, freed already, wakes the subscriber, which raises ``slow_consumer`` for a stream of
        its own generator)."""
        self.hub.counters.slow_consumer()
        if self._loop_hub is not None:
            self._loop_hub.leave(self.mailbox)
        if self.stream is not None:
            self.stream.trigger(Trigger.SLOW_CONSUMER)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.mailbox.close()  # a task that waits in it is woken, to end its iteration
        if self._loop_hub is not None:
            self._loop_hub.leave(self.mailbox)
            self.hub.counters.subscribers(-1)
        if self._present is not None:
            self.hub.loop_presence().leave(self.channels, self._present)
            self._present = None
