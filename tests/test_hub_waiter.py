"""The subscriber's wake-up on asyncio and uvloop (``ssesup.hub.waiter``): a publish wakes every waiting
subscriber in the order it joined, with one waiter per subscription and no future per wait; a
cancelled, timed-out or moved-on subscriber wakes alone and loses nothing for the others; and on trio
the hub keeps the loop's own wake-up, and a subscription closed by another task ends the wait in it."""

from __future__ import annotations

import asyncio
import contextvars
import gc

import anyio
import pytest
import uvloop

from ssesup import Event, Hub
from ssesup.hub.waiter import Waiter

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    return LOOPS[request.param]


async def subscribed(hub: Hub, channel: str = "c"):
    subscription = hub.subscribe(channel)
    start = await anext(subscription)
    assert start.data is None and start.id
    return subscription


def test_a_publish_wakes_every_waiting_subscriber_in_the_order_it_joined_and_makes_no_future_per_wait(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        received: list[tuple[int, str]] = []
        ready = asyncio.Event()
        joined = 0
        count = 500

        async def subscriber(number: int) -> None:
            nonlocal joined
            subscription = await subscribed(hub)
            joined += 1
            if joined == count:
                ready.set()
            async with subscription:
                for _ in range(3):
                    event = await anext(subscription)
                    received.append((number, event.data))

        tasks = [asyncio.create_task(subscriber(number)) for number in range(count)]
        await ready.wait()
        await asyncio.sleep(0)
        gc.collect()
        loop = asyncio.get_running_loop()
        waiting_futures = sum(
            1
            for thing in gc.get_objects()
            if isinstance(thing, asyncio.Future) and not thing.done() and thing.get_loop() is loop
        )
        # The tasks themselves are futures; a future per waiting subscriber would add `count` more. (This
        # loop's only: what earlier tests left in the process is not this test's.)
        assert waiting_futures < count + 50, waiting_futures
        waiters = [thing for thing in gc.get_objects() if type(thing) is Waiter]
        assert len(waiters) == count
        for n in range(3):
            await hub.publish("c", Event(f"e{n}"))
            await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for n in range(3):
            order = [number for number, data in received if data == f"e{n}"]
            assert order == list(range(count))  # everyone, once, in the order they joined

    run(main())


def test_a_cancelled_subscriber_wakes_alone_and_the_others_get_every_event(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        got: dict[int, list[str]] = {n: [] for n in range(5)}
        cancelled = []

        async def subscriber(number: int, subscription) -> None:
            try:
                async for event in subscription:
                    got[number].append(event.data)
                    if len(got[number]) == 4:
                        return
            except asyncio.CancelledError:
                cancelled.append(number)
                raise
            finally:
                await subscription.aclose()

        subscriptions = [await subscribed(hub) for _ in range(5)]
        tasks = [asyncio.create_task(subscriber(n, s)) for n, s in enumerate(subscriptions)]
        await asyncio.sleep(0.01)
        await hub.publish("c", Event("a"))
        await asyncio.sleep(0.01)
        tasks[2].cancel()  # waiting on its waiter
        await asyncio.sleep(0.01)
        assert cancelled == [2] and tasks[2].cancelled()
        await hub.publish("c", Event("b"))
        # Cancelled with a publish's wake-up pending: it ends cancelled, the others go on.
        await hub.publish("c", Event("c"))
        tasks[3].cancel()
        await hub.publish("c", Event("d"))
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert cancelled == [2, 3] and tasks[3].cancelled()
        for number in (0, 1, 4):
            assert got[number] == ["a", "b", "c", "d"]
        assert got[2] == ["a"]
        assert not hub.loop_hub().mailboxes  # each closed subscription left its channel

    run(main())


def test_a_subscriber_that_times_out_or_moves_on_can_wait_again_and_loses_nothing(run):
    async def main() -> None:
        hub = Hub(metrics=False)
        subscription = hub.subscribe("c")
        items = subscription.encoded()  # the stream's form, iterated by hand
        await anext(items)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await anext(items)
        # The generator of that wait ended with the timeout; a new subscription resumes after the start.
        again = await subscribed(hub)
        with anyio.move_on_after(0.05) as scope:
            await anext(again)
        assert scope.cancelled_caught
        third = await subscribed(hub)
        waiter_task = asyncio.create_task(anext(third))
        await asyncio.sleep(0.01)
        await hub.publish("c", Event("after"))
        event = await asyncio.wait_for(waiter_task, 5)
        assert event.data == "after"
        # The same subscription waits again on its one waiter, and again.
        for n in range(3):
            task = asyncio.create_task(anext(third))
            await asyncio.sleep(0.01)
            await hub.publish("c", Event(str(n)))
            assert (await asyncio.wait_for(task, 5)).data == str(n)
        await third.aclose()
        await again.aclose()
        await subscription.aclose()

    run(main())


def test_a_woken_subscriber_runs_in_its_own_context(run):
    who: contextvars.ContextVar[str] = contextvars.ContextVar("who")

    async def main() -> None:
        hub = Hub(metrics=False)
        seen: list[tuple[str, str]] = []

        async def subscriber(name: str) -> None:
            who.set(name)
            async with await subscribed(hub) as subscription:
                event = await anext(subscription)
                seen.append((name, who.get()))
                assert event.data == "x"

        tasks = [asyncio.create_task(subscriber(name)) for name in ("left", "right")]
        await asyncio.sleep(0.01)
        await hub.publish("c", Event("x"))
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert sorted(seen) == [("left", "left"), ("right", "right")]

    run(main())


def test_one_waiter_is_awaited_by_one_task_at_a_time():
    async def main() -> None:
        waiter = Waiter(asyncio.get_running_loop())
        first = asyncio.create_task(_await(waiter))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="one task at a time"):
            await waiter
        waiter.set()
        await asyncio.wait_for(first, 5)
        # Woken and resumed: it can be awaited again, and a set before the task looks still wakes it.
        again = asyncio.create_task(_await(waiter))
        await asyncio.sleep(0)
        waiter.set()
        await asyncio.wait_for(again, 5)
        cancelled = asyncio.create_task(_await(waiter))
        await asyncio.sleep(0)
        cancelled.cancel("stop")
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        last = asyncio.create_task(_await(waiter))
        await asyncio.sleep(0)
        waiter.set()
        await asyncio.wait_for(last, 5)

    asyncio.run(main())


async def _await(waiter: Waiter) -> None:
    await waiter


def test_on_trio_the_hub_wakes_every_subscriber_with_the_loop_s_own_wake_up():
    import trio

    async def main() -> None:
        hub = Hub(metrics=False)
        got: dict[int, list[str]] = {n: [] for n in range(3)}

        async def subscriber(number: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
            async with hub.subscribe("c") as subscription:
                await anext(subscription)
                task_status.started()
                async for event in subscription:
                    got[number].append(event.data)
                    if len(got[number]) == 3:
                        return

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for number in range(3):
                    await nursery.start(subscriber, number)
                for n in range(3):
                    await hub.publish("c", Event(str(n)))
        assert got == {n: ["0", "1", "2"] for n in range(3)}

    trio.run(main)


def test_on_trio_a_subscription_closed_from_another_task_ends_the_wait_in_it():
    import trio
    import trio.testing

    async def main() -> None:
        hub = Hub(metrics=False)
        subscription, other = hub.subscribe("c"), hub.subscribe("c")
        await anext(subscription)
        await anext(other)
        ended: list[str] = []

        async def waiting() -> None:
            with pytest.raises(StopAsyncIteration):
                await anext(subscription)
            ended.append("closed")

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiting)
                await trio.testing.wait_all_tasks_blocked()
                await subscription.aclose()  # from this task, while `waiting` waits in it
        assert ended == ["closed"]
        await hub.publish("c", Event("after"))
        assert (await anext(other)).data == "after"
        await other.aclose()

    trio.run(main)
