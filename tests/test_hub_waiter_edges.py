"""The subscriber's wake-up (``ssesup.hub.waiter``) at its edges, with real subscriptions of an in-memory
hub, on asyncio (its C tasks, and its Python tasks), uvloop, and both in debug mode: cancellation (with
a message, twice, undone, in the same step as a publish's wake-up), timeouts, ``shield``, ``TaskGroup``,
``gather``, tasks nobody holds, publishes from other threads and bursts of publishes. Where a task
waiting on an :class:`asyncio.Future` would behave some way, the same scenario is run on a future and
the two must agree. Every run records what the loop's exception handler, the ``asyncio`` logger and
``warnings`` report, and must end with nothing recorded."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from ssesup import Event, Hub
from ssesup.hub.waiter import Waiter


def _python_task(loop: asyncio.AbstractEventLoop, coro: Any, context: Any = None) -> asyncio.Task:
    return asyncio.tasks._PyTask(coro, loop=loop, context=context)  # type: ignore[attr-defined]


# (runner, debug, task factory): asyncio's C tasks and its Python ones step a waiter differently.
LOOPS: dict[str, tuple[Callable[..., Any], bool, Any]] = {
    "asyncio": (asyncio.run, False, None),
    "asyncio-debug": (asyncio.run, True, None),
    "asyncio-pytask": (asyncio.run, False, _python_task),
    "uvloop": (uvloop.run, False, None),
    "uvloop-debug": (uvloop.run, True, None),
}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    """``run(main)``: ``main()`` on the loop, then nothing reported by the loop, its logger or warnings."""
    runner, debug, task_factory = LOOPS[request.param]

    def run_main(main: Callable[[], Awaitable[Any]]) -> Any:
        reported: list[dict[str, Any]] = []

        async def guarded() -> Any:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _loop, context: reported.append(context))
            loop.slow_callback_duration = 60.0  # debug mode's slow-step warnings are about the machine
            if task_factory is not None:
                loop.set_task_factory(task_factory)
            async with asyncio.timeout(60):  # a wake-up that never comes fails, it does not hang
                return await main()

        records = _Records()
        logger = logging.getLogger("asyncio")
        logger.addHandler(records)
        gc.collect()  # what earlier tests left for the collector warns here, outside the recording
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = runner(guarded(), debug=debug)
                gc.collect()
        finally:
            logger.removeHandler(records)
        assert reported == []
        assert [record.getMessage() for record in records.records] == []
        assert [str(warning.message) for warning in caught] == []
        return result

    return run_main


async def subscribed(hub: Hub, *channels: str, last_event_id: str | None = None):
    subscription = hub.subscribe(*(channels or ("c",)), last_event_id=last_event_id)
    start = await anext(subscription)
    assert start.data is None and start.id
    return subscription


async def until_waiting(*subscriptions) -> None:
    """Until every one of ``subscriptions`` (or mailboxes) waits on its waiter (a task's first step gets it
    there)."""
    mailboxes = [getattr(subscription, "mailbox", subscription) for subscription in subscriptions]
    for _ in range(100):
        if all(type(mailbox.wakeup) is Waiter for mailbox in mailboxes):
            return
        await asyncio.sleep(0)
    raise AssertionError("a subscriber never waited")


async def watched(wait: Callable[[], Awaitable[Any]], seen: list[tuple[Any, ...]]) -> Any:
    """``await wait()``, noting the CancelledError it gets and the task's cancel requests then."""
    try:
        return await wait()
    except asyncio.CancelledError as error:
        seen.append((error.args, asyncio.current_task().cancelling()))
        raise


def ending(task: asyncio.Task) -> tuple[Any, ...]:
    """How a finished task ended: its result, or cancelled with the CancelledError's arguments."""
    assert task.done()
    if task.cancelled():
        try:
            task.result()
        except asyncio.CancelledError as error:
            return ("cancelled", error.args)
    return ("result", task.result())


async def on_a_future(act: Callable[[asyncio.Task, Callable[[], Awaitable[Any]]], Awaitable[None]]) -> tuple[Any, ...]:
    """The reference: a task waits on an asyncio.Future; ``await act(task, wake)`` (``wake`` completes
    the future); what the task saw and how it ended."""
    future = asyncio.get_running_loop().create_future()
    seen: list[tuple[Any, ...]] = []
    task = asyncio.create_task(watched(lambda: future, seen))
    await asyncio.sleep(0)

    async def wake() -> None:
        if not future.done():  # as ssesup._loop.wake
            future.set_result("woken")

    await act(task, wake)
    await asyncio.wait([task], timeout=10)
    return seen, ending(task)


async def on_a_subscription(
    hub: Hub, act: Callable[[asyncio.Task, Callable[[], Awaitable[Any]]], Awaitable[None]]
) -> tuple[Any, ...]:
    """The same with a task waiting on a subscription (``wake`` publishes to it)."""
    subscription = await subscribed(hub)
    seen: list[tuple[Any, ...]] = []
    task = asyncio.create_task(watched(lambda: anext(subscription), seen))
    await until_waiting(subscription)
    await act(task, lambda: hub.publish("c", Event("woken", event="wake")))
    await asyncio.wait([task], timeout=10)
    outcome = ending(task)
    await subscription.aclose()
    if outcome[0] == "result":
        outcome = ("result", outcome[1].data)
    return seen, outcome


def same_as_a_future(run, act) -> tuple[Any, ...]:
    """Run ``act`` on a future and on a subscription; they must agree; return what they saw."""

    async def main() -> tuple[Any, ...]:
        hub = Hub(metrics=False)
        reference = await on_a_future(act)
        ours = await on_a_subscription(hub, act)
        assert ours == reference
        assert not hub.loop_hub().mailboxes  # the subscription left its channel
        return ours

    return run(main)


# -- the protocol, against a future ---------------------------------------------------------------------


def _states(waitable: Any) -> Callable[[], Awaitable[list[str]]]:
    """What ``result()``, ``done()`` and ``cancelled()`` of ``waitable()`` (a fresh one per wait) say
    before a task waits, while it waits, woken, after the task ran, and cancelled with a message."""

    async def main() -> list[str]:
        said: list[str] = []

        def look(what: Any) -> None:
            try:
                outcome = repr(what.result())
            except BaseException as error:  # what it raises is what is compared
                outcome = f"{type(error).__name__}{error.args}"
            said.append(f"{outcome} done={what.done()} cancelled={what.cancelled()}")

        async def wait(what: Any) -> None:
            await what

        woken = waitable()
        look(woken)
        task = asyncio.create_task(wait(woken))
        await asyncio.sleep(0)
        look(woken)
        woken.set_result(None) if isinstance(woken, asyncio.Future) else woken.set()
        look(woken)
        await task
        if isinstance(woken, asyncio.Future):
            woken = waitable()  # a future is done for good; a waiter is ready for the next wait
        look(woken)
        task = asyncio.create_task(wait(woken))
        await asyncio.sleep(0)
        task.cancel("bye")
        look(woken)  # before the task runs: a waiter is ready again once it has
        with pytest.raises(asyncio.CancelledError):
            await task
        return said

    return main


def test_a_waiter_s_result_done_and_cancelled_say_what_a_future_s_say_in_each_state(run):
    reference = run(_states(lambda: asyncio.get_running_loop().create_future()))
    assert reference == [
        "InvalidStateError('Result is not set.',) done=False cancelled=False",
        "InvalidStateError('Result is not set.',) done=False cancelled=False",
        "None done=True cancelled=False",
        "InvalidStateError('Result is not set.',) done=False cancelled=False",
        "CancelledError('bye',) done=True cancelled=True",
    ]
    ours = run(_states(lambda: Waiter(asyncio.get_running_loop())))
    # The same but the words of InvalidStateError; and a waiter the task resumed from is ready again.
    assert [line.replace("the waiter has not been woken", "Result is not set.") for line in ours] == reference
    assert not hasattr(Waiter, "get_loop")  # tasks take its loop from _loop (no call per wait)


# -- cancellation, against a future ----------------------------------------------------------------------


def test_a_cancel_s_message_reaches_the_waiting_subscriber_as_it_reaches_a_future_s(run):
    async def act(task, wake) -> None:
        assert task.cancel("stop: deploy")

    seen, outcome = same_as_a_future(run, act)
    assert seen == [(("stop: deploy",), 1)]
    assert outcome == ("cancelled", ("stop: deploy",))


def test_a_second_cancel_keeps_the_first_message_and_counts_both_requests_as_with_a_future(run):
    async def act(task, wake) -> None:
        assert task.cancel("first")
        assert task.cancel("second")

    seen, outcome = same_as_a_future(run, act)
    assert seen == [(("first",), 2)]
    assert outcome == ("cancelled", ("first",))


def test_a_cancel_taken_back_with_uncancel_still_cancels_the_wait_as_with_a_future(run):
    async def act(task, wake) -> None:
        assert task.cancel("undone")
        assert task.uncancel() == 0

    seen, outcome = same_as_a_future(run, act)
    assert seen == [(("undone",), 0)]
    assert outcome == ("cancelled", ("undone",))


@pytest.mark.parametrize("order", ["wake_then_cancel", "cancel_then_wake"])
def test_a_cancel_in_the_same_step_as_the_wake_up_wins_as_with_a_future(run, order):
    async def act(task, wake) -> None:
        if order == "wake_then_cancel":
            await wake()
            assert task.cancel("same step")
        else:
            assert task.cancel("same step")
            await wake()

    seen, outcome = same_as_a_future(run, act)
    assert seen == [(("same step",), 1)]
    assert outcome == ("cancelled", ("same step",))


def test_a_task_cancelled_in_the_same_step_as_its_wake_up_loses_nothing_and_the_others_get_everything(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        got: dict[int, list[Event]] = {n: [] for n in range(4)}
        seen: list[tuple[Any, ...]] = []

        async def subscriber(number: int, subscription) -> None:
            async with subscription:
                async for event in subscription:
                    got[number].append(event)
                    if len(got[number]) == 3:
                        return

        subscriptions = [hub.subscribe("c") for _ in range(4)]
        starts = [(await anext(subscription)).id for subscription in subscriptions]
        tasks = [
            asyncio.create_task(watched(lambda n=n, s=s: subscriber(n, s), seen)) for n, s in enumerate(subscriptions)
        ]
        await until_waiting(*subscriptions)
        first = await hub.publish("c", Event("one", event="tick"))
        assert all(not events for events in got.values())  # the ring has not run: still this step
        assert tasks[1].cancel("gone")
        second = await hub.publish("c", Event("two", event="tock"))
        assert tasks[2].cancel("gone too")  # cancelled after a ring and a publish: it waits on nothing new
        await asyncio.wait([tasks[1], tasks[2]], timeout=10)
        assert [ending(task)[0] for task in (tasks[1], tasks[2])] == ["cancelled", "cancelled"]
        assert sorted(seen) == [(("gone",), 1), (("gone too",), 1)]
        third = await hub.publish("c", Event("three", event="tick"))
        await asyncio.wait([tasks[0], tasks[3]], timeout=10)
        for number in (0, 3):
            assert ending(tasks[number])[0] == "result"
            assert [(e.data, e.event, e.id) for e in got[number]] == [
                ("one", "tick", first),
                ("two", "tock", second),
                ("three", "tick", third),
            ]
        assert got[1] == [] and got[2] == []
        assert not hub.loop_hub().mailboxes
        # What the cancelled ones did not take is there for their next wait: a resume from their last id.
        resumed = await subscribed(hub, last_event_id=starts[1])
        events = [await asyncio.wait_for(anext(resumed), 10) for _ in range(3)]
        assert [(e.data, e.event, e.id) for e in events] == [
            ("one", "tick", first),
            ("two", "tock", second),
            ("three", "tick", third),
        ]
        await resumed.aclose()

    run(main)


def test_a_subscriber_woken_by_a_ring_cancels_one_later_in_the_same_ring(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        first, second, third = [await subscribed(hub) for _ in range(3)]
        later: list[asyncio.Task] = []

        async def canceller() -> Event:
            async with first:
                event = await anext(first)
                assert later[0].cancel("from the ring")
                return event

        async def plain(subscription) -> Event:
            async with subscription:
                return await anext(subscription)

        tasks = [asyncio.create_task(canceller()), asyncio.create_task(plain(second))]
        later.append(tasks[1])
        tasks.append(asyncio.create_task(plain(third)))
        await until_waiting(first, second, third)
        event_id = await hub.publish("c", Event("x", event="n"))
        await asyncio.wait(tasks, timeout=10)
        assert ending(tasks[0]) == ending(tasks[2]) == ("result", Event("x", event="n", id=event_id))
        assert ending(tasks[1]) == ("cancelled", ("from the ring",))
        assert not hub.loop_hub().mailboxes

    run(main)


def test_a_subscriber_woken_by_a_ring_that_publishes_again_reaches_everyone_once_in_order(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        subscriptions = [await subscribed(hub) for _ in range(3)]
        got: list[list[str]] = [[], [], []]

        async def subscriber(number: int) -> None:
            async with subscriptions[number]:
                async for event in subscriptions[number]:
                    got[number].append(event.data)
                    if number == 0 and event.data == "one":
                        await hub.publish("c", Event("two"))  # inside the ring's step of this task
                    if len(got[number]) == 2:
                        return

        tasks = [asyncio.create_task(subscriber(number)) for number in range(3)]
        await until_waiting(*subscriptions)
        await hub.publish("c", Event("one"))
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert got == [["one", "two"]] * 3

    run(main)


def test_a_cancel_after_a_slow_consumer_s_wake_up_cancels_it_as_with_a_future(run):
    """An overflow wakes the subscriber through ``Waiter.set`` (a callback of its own, not the ring):
    cancelled in that step, the task ends cancelled, as a task whose future was already done."""

    async def main() -> None:
        hub = Hub(metrics=False, mailbox_bytes=64)
        reference = await on_a_future(_wake_then_cancel)
        subscription = await subscribed(hub)
        other = await subscribed(hub)
        seen: list[tuple[Any, ...]] = []
        task = asyncio.create_task(watched(lambda: anext(subscription), seen))
        other_task = asyncio.create_task(anext(other))
        await until_waiting(subscription, other)
        await hub.publish("c", Event("x" * 100))  # over 64 bytes: both overflow, woken by set()
        assert subscription.mailbox.wakeup is None  # woken
        await _wake_then_cancel(task, _woken_already)
        await asyncio.wait([task], timeout=10)
        assert (seen, ending(task)) == reference == ([(("same step",), 1)], ("cancelled", ("same step",)))
        from ssesup.stream import StreamEnding

        with pytest.raises(StreamEnding):  # not cancelled: woken, it ends as a slow consumer
            await asyncio.wait_for(other_task, 10)
        await subscription.aclose()
        await other.aclose()
        assert not hub.loop_hub().mailboxes

    run(main)


async def _wake_then_cancel(task: asyncio.Task, wake: Callable[[], Awaitable[Any]]) -> None:
    await wake()
    assert task.cancel("same step")


async def _woken_already() -> None:
    """A wake-up that does nothing (and does not yield to the loop): the publish woke the task."""


# -- timeouts, shield, task groups, gather ----------------------------------------------------------------


def test_a_wait_for_that_expires_ends_the_subscription_and_a_resume_from_its_last_id_loses_nothing(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        subscription = await subscribed(hub)
        before = await hub.publish("c", Event("before", event="n"))
        event = await asyncio.wait_for(anext(subscription), 10)
        assert (event.data, event.id) == ("before", before)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(subscription), 0.05)
        after = await hub.publish("c", Event("after", event="n"))
        # The timeout's CancelledError went through the subscription's generator: it ended and left,
        # and says so at once (no wait for an event that will never come, no second start).
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(subscription), 10)
        assert not hub.loop_hub().mailboxes
        resumed = await subscribed(hub, last_event_id=event.id)
        later = await hub.publish("c", Event("later", event="n"))
        events = [await asyncio.wait_for(anext(resumed), 10) for _ in range(2)]
        assert [(e.data, e.event, e.id) for e in events] == [("after", "n", after), ("later", "n", later)]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(resumed), 0.05)  # nothing more: no duplicate at the seam

    run(main)


def test_asyncio_timeout_around_a_wait_raises_timeout_error_and_the_task_is_not_left_cancelling(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        subscription = await subscribed(hub)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await anext(subscription)
        assert asyncio.current_task().cancelling() == 0  # the timeout's uncancel took its cancel back
        assert not hub.loop_hub().mailboxes
        async with await subscribed(hub) as again:
            waiting = asyncio.create_task(anext(again))
            await until_waiting(again)
            event_id = await hub.publish("c", Event("next", event="n"))
            assert await asyncio.wait_for(waiting, 10) == Event("next", event="n", id=event_id)

    run(main)


def test_a_shielded_wait_goes_on_when_the_outer_task_is_cancelled_and_the_subscription_with_it(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        subscription = await subscribed(hub)
        inner = asyncio.create_task(anext(subscription))
        outer = asyncio.create_task(watched(lambda: asyncio.shield(inner), seen := []))
        await until_waiting(subscription)
        await asyncio.sleep(0)
        assert outer.cancel("outer only")
        await asyncio.wait([outer], timeout=10)
        assert ending(outer) == ("cancelled", ("outer only",)) and seen == [(("outer only",), 1)]
        assert not inner.done() and type(subscription.mailbox.wakeup) is Waiter
        first = await hub.publish("c", Event("one", event="n"))
        assert await asyncio.wait_for(inner, 10) == Event("one", event="n", id=first)
        second = await hub.publish("c", Event("two", event="n"))
        assert await asyncio.wait_for(anext(subscription), 10) == Event("two", event="n", id=second)
        await subscription.aclose()

    run(main)


def test_a_task_group_whose_task_fails_cancels_the_waiting_subscribers_and_the_others_go_on(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        outside = await subscribed(hub)
        in_group, in_body = await subscribed(hub), await subscribed(hub)
        seen: list[tuple[Any, ...]] = []

        async def failing() -> None:
            await until_waiting(in_group, in_body)
            raise ValueError("sibling failed")

        async def consume(subscription) -> None:
            async with subscription:
                async for _ in subscription:
                    raise AssertionError("nothing was published")

        with pytest.raises(Exception, match="unhandled errors in a TaskGroup") as group:  # an ExceptionGroup
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(watched(lambda: consume(in_group), seen))
                tasks.create_task(failing())
                async with in_body:
                    await watched(lambda: anext(in_body), seen)  # the group cancels this task too
        assert [type(error) for error in group.value.exceptions] == [ValueError]
        assert asyncio.current_task().cancelling() == 0
        assert sorted(seen) == [((), 1), ((), 1)]
        assert hub.loop_hub().mailboxes == {outside.mailbox}
        event_id = await hub.publish("c", Event("after", event="n"))
        assert await asyncio.wait_for(anext(outside), 10) == Event("after", event="n", id=event_id)
        await outside.aclose()

    run(main)


def test_gather_with_return_exceptions_reports_a_cancelled_subscriber_as_it_reports_a_cancelled_future(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(3)]
        reference_tasks = [asyncio.create_task(watched(lambda f=f: f, [])) for f in futures]
        subscriptions = [await subscribed(hub) for _ in range(3)]
        tasks = [asyncio.create_task(anext(subscription)) for subscription in subscriptions]
        reference = asyncio.gather(*reference_tasks, return_exceptions=True)
        gathered = asyncio.gather(*tasks, return_exceptions=True)
        await until_waiting(*subscriptions)
        assert reference_tasks[1].cancel("middle") and tasks[1].cancel("middle")
        event_id = await hub.publish("c", Event("x", event="n"))
        for future in (futures[0], futures[2]):
            future.set_result(Event("x", event="n", id=event_id))
        expected = await asyncio.wait_for(reference, 10)
        results = await asyncio.wait_for(gathered, 10)
        assert [(type(r), r.args if isinstance(r, BaseException) else r) for r in results] == [
            (type(r), r.args if isinstance(r, BaseException) else r) for r in expected
        ]
        assert type(results[1]) is asyncio.CancelledError
        for subscription in subscriptions:
            await subscription.aclose()
        # A cancelled gather cancels every waiting subscriber; none is left in the hub.
        subscriptions = [await subscribed(hub) for _ in range(3)]
        gathered = asyncio.gather(*(anext(subscription) for subscription in subscriptions))
        await until_waiting(*subscriptions)
        gathered.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gathered
        assert not hub.loop_hub().mailboxes

    run(main)


# -- tasks nobody holds, debug mode ------------------------------------------------------------------------


def test_a_subscriber_task_nobody_holds_is_kept_while_it_waits_and_freed_when_it_ends(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        got: list[Event] = []

        async def subscriber() -> None:
            async with await subscribed(hub) as subscription:
                got.append(await anext(subscription))

        task = weakref.ref(asyncio.create_task(subscriber()))  # no strong reference of ours
        for _ in range(20):
            await asyncio.sleep(0)
            if hub.loop_hub().mailboxes:
                break
        (mailbox,) = hub.loop_hub().mailboxes
        await until_waiting(mailbox)
        del mailbox
        gc.collect()
        assert task() is not None  # its subscription's waiter holds its wake-up
        event_id = await hub.publish("c", Event("kept", event="n"))
        for _ in range(20):
            await asyncio.sleep(0)
            if got:
                break
        assert got == [Event("kept", event="n", id=event_id)]
        gc.collect()
        assert task() is None  # ended: nothing of the hub or its waiter keeps it

    run(main)


DEBUG_SCRIPT = """
import asyncio, sys
import uvloop
from ssesup import Event, Hub


async def main():
    asyncio.get_running_loop().slow_callback_duration = 60.0
    hub = Hub(metrics=False)
    got = []

    async def subscriber(n):
        async with hub.subscribe("c") as subscription:
            async for event in subscription:
                if event.data is not None:
                    got.append((n, event.data))

    tasks = [asyncio.create_task(subscriber(n)) for n in range(3)]
    while len(hub.loop_hub().mailboxes) < 3 or any(s.wakeup is None for s in hub.loop_hub().mailboxes):
        await asyncio.sleep(0)
    await hub.publish("c", Event("a", event="n"))
    tasks[1].cancel("same step")
    await hub.publish("c", Event("b", event="n"))
    await asyncio.sleep(0.01)
    lonely = hub.subscribe("c")
    await anext(lonely)
    try:
        await asyncio.wait_for(anext(lonely), 0.01)
    except TimeoutError:
        pass
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(sorted(got))


(uvloop.run if sys.argv[1] == "uvloop" else asyncio.run)(main(), debug=True)
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_in_a_process_in_asyncio_debug_and_development_mode_nothing_is_reported(loop):
    environment = dict(os.environ, PYTHONASYNCIODEBUG="1")
    finished = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", DEBUG_SCRIPT, loop],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert (finished.returncode, finished.stderr) == (0, "")
    assert finished.stdout.strip() == "[(0, 'a'), (0, 'b'), (2, 'a'), (2, 'b')]"


# -- other threads, bursts ---------------------------------------------------------------------------------


def test_events_published_from_other_threads_reach_every_subscriber_once_in_order(run):
    """Promised by the memory engine (loops in several threads append and wait at once): a thread
    with a loop of its own, and a thread handing publishes to the subscribers' loop."""
    total = 200

    async def main() -> None:
        hub = Hub(metrics=False, history_size=4 * total)
        loop = asyncio.get_running_loop()
        subscriptions = [await subscribed(hub, "own"), await subscribed(hub, "handed"), await subscribed(hub, "own")]
        both = await subscribed(hub, "own", "handed")
        ids: dict[str, list[str]] = {"own": [], "handed": []}

        async def publish_on_its_own_loop() -> None:
            for n in range(total):
                ids["own"].append(await hub.publish("own", Event(str(n), event="own")))

        def hand_to_the_loop() -> None:
            for n in range(total):
                handed = asyncio.run_coroutine_threadsafe(hub.publish("handed", Event(str(n), event="handed")), loop)
                ids["handed"].append(handed.result(30))

        async def take(subscription, count: int) -> list[Event]:
            return [await anext(subscription) for _ in range(count)]

        threads = [
            threading.Thread(target=asyncio.run, args=(publish_on_its_own_loop(),)),
            threading.Thread(target=hand_to_the_loop),
        ]
        for thread in threads:
            thread.start()
        taken = await asyncio.wait_for(
            asyncio.gather(*(take(s, total) for s in subscriptions), take(both, 2 * total)), 30
        )
        for thread in threads:
            await asyncio.to_thread(thread.join, 30)
        for subscription, events in zip(subscriptions, taken, strict=False):
            channel = subscription.channels[0]
            assert [(e.data, e.event, e.id) for e in events] == [
                (str(n), channel, ids[channel][n]) for n in range(total)
            ]
        mixed = taken[-1]
        for channel in ("own", "handed"):
            assert [e.data for e in mixed if e.event == channel] == [str(n) for n in range(total)]
        assert len({e.id for e in mixed}) == 2 * total
        for subscription in (*subscriptions, both):
            await subscription.aclose()

    run(main)


def test_a_burst_of_publishes_in_one_step_reaches_each_subscriber_once_in_order(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        subscriptions = [*[await subscribed(hub, "c") for _ in range(3)], await subscribed(hub, "c", "d")]

        async def take(subscription, count: int) -> list[Event]:
            return [await anext(subscription) for _ in range(count)]

        seen_ids: set[str] = set()
        for burst in range(2):
            tasks = [asyncio.create_task(take(s, 5)) for s in subscriptions[:3]]
            tasks.append(asyncio.create_task(take(subscriptions[3], 6)))
            await until_waiting(*subscriptions)
            ids = []
            for n in range(5):  # no publish yields to the loop: every subscriber is still waiting
                ids.append(await hub.publish("c", Event(f"{burst}.{n}", event=f"e{n}")))
                assert not any(task.done() for task in tasks)
            await hub.publish("d", Event(f"{burst}.d", event="other"))
            taken = await asyncio.wait_for(asyncio.gather(*tasks), 10)
            expected = [(f"{burst}.{n}", f"e{n}", ids[n]) for n in range(5)]
            for events in taken[:3]:
                assert [(e.data, e.event, e.id) for e in events] == expected
            assert [(e.data, e.event) for e in taken[3]] == [(d, e) for d, e, _ in expected] + [(f"{burst}.d", "other")]
            seen_ids.update(e.id for e in taken[3])
            assert all(s.mailbox.held == 0 for s in subscriptions)  # nothing left over to come twice
        assert len(seen_ids) == 12
        for subscription in subscriptions:
            await subscription.aclose()

    run(main)


# -- a subscription closed by another task, or used after it is closed ------------------------------


def test_a_subscription_closed_from_another_task_ends_the_wait_of_the_task_in_it(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        subscription, other = await subscribed(hub), await subscribed(hub)
        waiting = asyncio.create_task(anext(subscription))
        other_waiting = asyncio.create_task(anext(other))
        await until_waiting(subscription, other)
        await subscription.aclose()  # from this task, while `waiting` waits in it
        assert hub.loop_hub().mailboxes == {other.mailbox}
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 10)
        event_id = await hub.publish("c", Event("after", event="n"))
        assert await asyncio.wait_for(other_waiting, 10) == Event("after", event="n", id=event_id)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(subscription), 10)
        assert hub.loop_hub().mailboxes == {other.mailbox}
        await other.aclose()
        assert not hub.loop_hub().mailboxes

    run(main)


def test_a_closed_subscription_iterated_again_ends_at_once_and_does_not_join_again(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        subscription = await subscribed(hub)
        await subscription.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(subscription), 10)
        never = hub.subscribe("c")
        await never.aclose()  # closed before its first event: it never joins
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(never), 10)
        assert not hub.loop_hub().mailboxes

    run(main)


def test_a_subscription_is_iterated_once_as_events_or_encoded_not_both(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        subscription = await subscribed(hub)
        with pytest.raises(RuntimeError, match="iterated already"):
            subscription.encoded()
        encoded = hub.subscribe("c")
        items = encoded.encoded()
        assert (await anext(items)).startswith(b"id: ")
        with pytest.raises(RuntimeError, match="iterated already"):
            encoded.encoded()
        # Still one subscription each, both delivering.
        event_id = await hub.publish("c", Event("x", id=None, event="n"))
        assert await asyncio.wait_for(anext(subscription), 10) == Event("x", event="n", id=event_id)
        assert (await asyncio.wait_for(anext(items), 10)).endswith(b"event: n\r\ndata: x\r\n\r\n")
        await subscription.aclose()
        await items.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            encoded.encoded()
        assert not hub.loop_hub().mailboxes

    run(main)
