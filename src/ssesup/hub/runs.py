"""Runs: work that outlives its viewers (``Hub.start_run``).

Owns: :class:`Run` (one run: its source pulled in a task of its own, each item published to the run's
channel, its end and the end's status), :class:`LoopRuns` (a hub's runs on one event loop, and their
keeper: one task that hears cancellations from any process, on the internal channel ``!runs``, and
renews the runs' records where the engine keeps them beyond a process), :class:`RunStatus`,
:class:`RunActive` and :class:`RunRefused`, and the events a source's items become. Does not own
storage (the engines' run records, ``ssesup.hub.backend``), viewers (a run's channel is streamed as any
other: ``ssesup.hub.subscription`` starts a viewer at the run's first event and ends it after the
end), or the drain (the supervisor owns every run: a drain lets it go on for its grace, then
interrupts it).

A run is a producer of the hub owned by the supervisor of its event loop, not by a request: its task
is the loop's (``spawn_owned``), so no viewer, and no viewer's leaving, touches it. Its end is the
event ``end`` on its channel, with JSON data ``{"status": ...}``:

* ``completed``: the source ended; ``failed``: it raised (logged with its traceback; nothing of the
  error reaches a client);
* ``cancelled``: ``Hub.cancel_run`` (from any process of the engine) or :meth:`Run.cancel`;
* ``interrupted``: this process drained before the run ended (after the drain's grace), or its event
  loop closed under it.

On asyncio the source is pulled in a task of the run's own, as a stream's generator is (ARCHITECTURE,
the producer): stopping it is one cancellation, so its ``finally`` may await its cleanup, within the
supervisor's ``close_grace`` (a cancel) or the farewell budget (an interruption, so that a process
exits within its drain's grace and a second). On trio it is cancelled as trio cancels (level-triggered).
"""

from __future__ import annotations

import asyncio
import enum
import json
import random
import secrets
import sys
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from ssesup._loop import spawn_owned, wait, wake
from ssesup.closing import close_generator
from ssesup.events import Event, json_data
from ssesup.hub.backend import RunBounds
from ssesup.hub.fanout import backoff
from ssesup.parser import EventStreamParser
from ssesup.supervisor import LoopSupervision, Supervisor, serving_supervisor

if TYPE_CHECKING:
    from ssesup.hub import Hub

log = structlog.get_logger("ssesup")

END_EVENT = "end"
"""The name of a run's last event."""

CONTROL = "runs"
"""The internal channel (``!runs``) a cancellation travels on to the process that runs the run."""

# How long a run that is interrupted may take to close its source, and then to publish its end: a
# process drained by its supervisor exits within the drain's grace and a second.
INTERRUPT_CLOSE = 0.5
INTERRUPT_END = 0.3
# How long a run keeps trying to publish to an engine that cannot be reached before it fails (its
# source waits meanwhile).
PATIENCE = 30.0
# The longest a start waits for the loop's keeper to listen for cancellations.
KEEPER_READY = 5.0


class RunStatus(enum.Enum):
    """How a run ended: the ``status`` of its ``end`` event."""

    COMPLETED = "completed"
    """Its source ended."""
    FAILED = "failed"
    """Its source raised (logged as ``run.failed``, with the traceback; clients get the status only)."""
    CANCELLED = "cancelled"
    """``Hub.cancel_run`` (from any process sharing the engine) or :meth:`Run.cancel`."""
    INTERRUPTED = "interrupted"
    """Its process drained (after the drain's grace) or its event loop closed before it ended."""


class RunRefused(RuntimeError):
    """A run was not started: a run is active on its channel (:class:`RunActive`), or this process drains."""


class RunActive(RunRefused):
    """A run is active on the channel (in this process or another of the same engine)."""


class Run:
    """One run, as :meth:`Hub.start_run` started it: ``channel``, ``status`` (``None`` while it goes on),
    ``events`` (published so far). ``await run.wait()`` returns its status once its end is published;
    ``run.cancel()`` cancels it (from its own event loop; ``Hub.cancel_run`` from anywhere)."""

    def __init__(
        self,
        hub: Hub,
        loop_runs: LoopRuns,
        channel: str,
        source: AsyncIterator[Any],
        token: str,
        supervisor: Supervisor,
        live: LoopSupervision,
    ) -> None:
        self.channel = channel
        self.status: RunStatus | None = None
        self.events = 0
        self.token = token
        self.hub = hub
        self.started_at = live.loop.clock()
        self._loop_runs = loop_runs
        self._source = source
        self._supervisor = supervisor
        self._live = live
        self._stop_reason: RunStatus | None = None
        self._stopped = live.loop.wakeup()
        self._done = anyio.Event()
        self._parser: EventStreamParser | None = None  # for sources that yield encoded bytes
        self._loop_hub = hub.loop_hub()  # looked up once: it costs a backend lookup per call

    def __repr__(self) -> str:
        return f"<Run {self.channel!r} {self.status.value if self.status else 'active'}>"

    def cancel(self) -> None:
        """End the run with ``cancelled``: its source is closed (its ``finally`` runs, within the
        supervisor's ``close_grace``), then ``end`` is published."""
        self._stop(RunStatus.CANCELLED)

    def interrupt(self) -> None:
        """End the run with ``interrupted`` (the supervisor's drain, past its grace)."""
        self._stop(RunStatus.INTERRUPTED)

    async def wait(self) -> RunStatus:
        """Wait until the run has ended and its ``end`` was published; its status."""
        await self._done.wait()
        assert self.status is not None
        return self.status

    def _stop(self, reason: RunStatus) -> None:
        if self.status is None and self._stop_reason is None:
            self._stop_reason = reason
            wake(self._stopped)

    # -- the run's task ------------------------------------------------------------------------------

    async def main(self) -> None:
        """The run, start to end (the loop's task, owned by the supervisor through ``LoopRuns``)."""
        status = RunStatus.INTERRUPTED
        try:
            create_task = self._live.loop.create_task
            status = await (self._run_asyncio(create_task) if create_task is not None else self._run_trio())
            await self._end(status)
        finally:
            self.status = status
            self._loop_runs.ended(self)
            self._done.set()
            log.info(
                "run.ended",
                channel=self.channel,
                status=status.value,
                events=self.events,
                duration_s=round(self._live.loop.clock() - self.started_at, 6),
            )

    async def _run_asyncio(self, create_task: Any) -> RunStatus:
        pump: asyncio.Task[None] = create_task(self._pump())
        try:
            await asyncio.wait((pump, self._stopped), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The loop is closing (asyncio.run cancels every task at its end): the run is interrupted,
            # and its end still published where the engine can be reached.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if self._stop_reason is None:
                self._stop_reason = RunStatus.INTERRUPTED
        clock = self._live.loop.clock
        if pump.done():
            await close_generator(None, False, self._source, self._close_grace(), clock, run=self.channel)
            return self._outcome(None if pump.cancelled() else pump.exception(), pump.cancelled())
        reason = self._stop_reason
        assert reason is not None
        await close_generator(pump, True, self._source, self._close_grace(), clock, run=self.channel)
        return reason

    async def _run_trio(self) -> RunStatus:
        failure: list[BaseException] = []
        finished = False

        async with anyio.create_task_group() as group:

            async def pump() -> None:
                nonlocal finished
                try:
                    await self._pump()
                    finished = True
                except Exception as exc:
                    failure.append(exc)
                group.cancel_scope.cancel()

            group.start_soon(pump)
            await wait(self._stopped)
            group.cancel_scope.cancel()
        clock = self._live.loop.clock
        await close_generator(None, False, self._source, self._close_grace(), clock, run=self.channel)
        if finished or failure:
            return self._outcome(failure[0] if failure else None, False)
        return self._stop_reason or RunStatus.INTERRUPTED

    def _close_grace(self) -> float:
        return INTERRUPT_CLOSE if self._stop_reason is RunStatus.INTERRUPTED else self._supervisor.close_grace

    def _outcome(self, error: BaseException | None, cancelled: bool) -> RunStatus:
        if cancelled:
            return self._stop_reason or RunStatus.INTERRUPTED
        if error is None:
            return RunStatus.COMPLETED
        log.error("run.failed", channel=self.channel, events=self.events, exc_info=error)
        return RunStatus.FAILED

    async def _pump(self) -> None:
        """Pull the source and publish what it yields, one event after the other."""
        async for item in self._source:
            for event in self._events(item):
                await self._publish(event)

    async def _publish(self, event: Event) -> None:
        """Append ``event`` to the run's channel, trying again (for up to PATIENCE seconds, the source
        waiting) while the engine cannot be reached."""
        from ssesup.hub.backend import HubUnavailable

        hub, channel = self.hub, self.channel
        backend = hub.backend
        attempt = 0
        clock = self._live.loop.clock
        give_up = clock() + PATIENCE
        while True:
            try:
                await hub.call("append", lambda: backend.append(channel, event))
                break
            except HubUnavailable:
                if clock() >= give_up:
                    raise
                await anyio.sleep(backoff(attempt, _rng))
                attempt += 1
        self.events += 1
        hub.counters.published(channel)
        self._loop_hub.published(channel)

    async def _end(self, status: RunStatus) -> None:
        """Publish the run's ``end`` (within INTERRUPT_END for an interrupted run; else trying again
        while the engine cannot be reached, for up to PATIENCE seconds). One that cannot be published
        is logged (``run.end_lost``): the run's viewers then wait for it until they leave."""
        from ssesup.hub.backend import HubUnavailable

        hub, channel, backend = self.hub, self.channel, self.hub.backend
        event = Event(json.dumps({"status": status.value}, separators=(",", ":")), event=END_EVENT)
        budget = INTERRUPT_END if status is RunStatus.INTERRUPTED else PATIENCE
        attempt = 0
        with anyio.move_on_after(budget, shield=True):
            while True:
                try:
                    await hub.call("end_run", lambda: backend.end_run(channel, self.token, status.value, event))
                except HubUnavailable:
                    await anyio.sleep(backoff(attempt, _rng))
                    attempt += 1
                    continue
                except Exception as exc:  # its record is another run's now (RunLost)
                    log.error("run.end_lost", channel=channel, status=status.value, error=str(exc))
                    return
                hub.counters.published(channel)
                hub.loop_hub().published(channel)
                return
        log.error("run.end_lost", channel=channel, status=status.value, error="the hub's engine did not answer")

    def _events(self, item: Any) -> Iterable[Event]:
        """The events an item of the source becomes, as a stream's generator's item would be sent, but
        with the hub's ids: an id the item carries is left out."""
        kind = type(item)
        if kind is str:
            return (Event(item),)
        if kind is Event:
            return (item if item.id is None else _without_id(item),)
        if isinstance(item, Event):
            return (_without_id(item),)
        if isinstance(item, str):
            return (Event(str(item)),)
        if isinstance(item, (bytes, bytearray, memoryview)):
            if self._parser is None:
                self._parser = EventStreamParser()
            return [
                Event(sse.data, event=None if sse.event == "message" else sse.event, retry=sse.retry)
                for sse in self._parser.feed(bytes(item))
            ]
        if isinstance(item, Mapping):
            from ssesup.hub import _event_of

            return (_event_of({name: value for name, value in item.items() if name != "id"}),)
        fastapi_sse = sys.modules.get("fastapi.sse")
        if fastapi_sse is not None and isinstance(item, fastapi_sse.ServerSentEvent):
            from ssesup.events import _from_fastapi_event

            return (_without_id(_from_fastapi_event(item)),)
        return (Event(json_data(item)),)


_rng = random.Random()
_warned: weakref.WeakSet[Supervisor] = weakref.WeakSet()  # supervisors whose runs are not drained (logged once)


def _without_id(event: Event) -> Event:
    return Event(event.data, event=event.event, retry=event.retry, comment=event.comment)


class LoopRuns:
    """A hub's runs on one event loop (by channel) and their keeper: a task, while the loop has runs,
    that follows the internal channel ``!runs`` (a cancellation from any process reaches the run's
    own) and, where the engine's records need it, renews the runs' records every third of their
    lease."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.runs: dict[str, Run] = {}
        self.lost: set[str] = set()  # channels whose record lapsed (logged once)
        self._keeper: anyio.CancelScope | None = None
        self._listening = anyio.Event()

    async def add(self, run: Run) -> None:
        """Count ``run`` among the loop's, and wait until the keeper hears cancellations (a cancel sent
        once ``start_run`` has returned reaches the run)."""
        self.runs[run.channel] = run
        self.hub.counters.run_started()
        if self._keeper is None:
            scope = self._keeper = anyio.CancelScope()
            self._listening = anyio.Event()
            spawn_owned(lambda: self._keep(scope))
        with anyio.move_on_after(KEEPER_READY):
            await self._listening.wait()

    def ended(self, run: Run) -> None:
        assert run.status is not None
        if self.runs.get(run.channel) is run:
            del self.runs[run.channel]
        self.lost.discard(run.channel)
        self.hub.counters.run_ended(run.status.value)
        run._supervisor.release(run, run._live)
        if not self.runs and self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None

    def cancel(self, channel: str) -> bool:
        """Cancel the run of ``channel`` if this loop runs it."""
        run = self.runs.get(channel)
        if run is None or run.status is not None:
            return False
        run.cancel()
        return True

    async def _keep(self, scope: anyio.CancelScope) -> None:
        hub = self.hub
        last_id: str | None = None
        with scope:
            async with anyio.create_task_group() as group:
                lease = hub.backend.run_lease
                if lease is not None:
                    group.start_soon(self._renew, lease / 3)
                attempt = 0
                while True:
                    try:
                        async with hub.subscribe_internal(CONTROL, last_event_id=last_id) as control:
                            async for event in control:
                                last_id = event.id or last_id
                                self._listening.set()
                                attempt = 0
                                if event.event == "cancel" and event.data:
                                    self.cancel(event.data)
                    except Exception:  # a StreamEnding too (its mailbox overflowed): joined again
                        log.exception("run.keeper_failed")
                        await anyio.sleep(backoff(attempt, _rng))
                        attempt += 1

    async def _renew(self, every: float) -> None:
        from ssesup.hub.backend import HubUnavailable

        hub = self.hub
        backend = hub.backend
        while True:
            await anyio.sleep(every)
            tokens = {channel: run.token for channel, run in self.runs.items() if run.status is None}
            try:
                lost = await hub.call("renew_runs", partial(backend.renew_runs, tokens))
            except HubUnavailable:
                continue
            for channel in lost:
                if channel not in self.lost and channel in self.runs:
                    self.lost.add(channel)
                    log.warning(
                        "run.lease_lost",
                        channel=channel,
                        hint="the run's record lapsed (its process could not renew it in time): new viewers "
                        "start live, and another run may start on its channel",
                    )


async def start_run(
    hub: Hub,
    loop_runs: LoopRuns,
    channel: str,
    source: AsyncIterable[Any],
    supervisor: Supervisor | None,
    bounds: RunBounds,
) -> Run:
    """Start a run (``Hub.start_run``: see there)."""
    supervisor = supervisor or serving_supervisor()
    live = supervisor.loop_supervision
    iterator = aiter(source)
    if live.draining:
        await _close_unstarted(iterator)
        raise RunRefused("this process is draining: start the run on another")
    token = secrets.token_hex(8)
    backend = hub.backend
    start_at = await hub.call("start_run", lambda: backend.start_run(channel, token, bounds))
    if start_at is None:
        await _close_unstarted(iterator)
        raise RunActive(f"a run is active on channel {channel!r}")
    run = Run(hub, loop_runs, channel, iterator, token, supervisor, live)
    if not supervisor.lifespan_seen and supervisor not in _warned:
        _warned.add(supervisor)
        log.warning(
            "run.not_drained",
            hint="the run's supervisor is installed on no app whose lifespan has started, so a deploy's "
            "SIGTERM may end the process before the drain's grace, the run interrupted as its loop closes: "
            "supervisor.install(app) (ssesup.default_supervisor when the app installs none), with the "
            "server's lifespan on; see docs/runs.md",
        )
    supervisor.adopt(run, live)
    await loop_runs.add(run)
    if live.draining:  # it began while the run was being started: the run ends before it began
        run.interrupt()
    spawn_owned(run.main)
    log.info("run.started", channel=channel)
    return run


async def _close_unstarted(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
