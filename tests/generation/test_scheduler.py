"""The scheduler: a fixed number at once, FIFO, bounded queue, cancellation leaves it."""

from __future__ import annotations

import asyncio

import pytest

from picolm_server.errors import QueueFullError
from picolm_server.generation.scheduler import Scheduler


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_runs_at_most_max_concurrent_in_fifo_order() -> None:
    async def scenario() -> None:
        scheduler = Scheduler(max_concurrent=2, max_queue=10)
        order: list[int] = []
        active = 0
        peak = 0
        gates = [asyncio.Event() for _ in range(6)]

        async def job(index: int) -> None:
            nonlocal active, peak
            async with scheduler.slot():
                order.append(index)
                active += 1
                peak = max(peak, active)
                await gates[index].wait()
                active -= 1

        tasks = []
        for index in range(6):
            tasks.append(asyncio.create_task(job(index)))
            await settle()
        assert scheduler.running == 2 and scheduler.queued == 4
        for gate in gates:
            gate.set()
            await settle()
        await asyncio.gather(*tasks)
        assert order == list(range(6))
        assert peak == 2
        assert scheduler.running == 0 and scheduler.queued == 0

    asyncio.run(scenario())


def test_full_queue_is_refused_with_retry_after() -> None:
    async def scenario() -> None:
        scheduler = Scheduler(max_concurrent=1, max_queue=1)
        release = asyncio.Event()

        async def hold() -> None:
            async with scheduler.slot():
                await release.wait()

        first = asyncio.create_task(hold())
        second = asyncio.create_task(hold())
        await settle()
        with pytest.raises(QueueFullError) as caught:
            async with scheduler.slot():
                pass
        assert caught.value.status_code == 429
        assert int(caught.value.headers["Retry-After"]) >= 1
        release.set()
        await asyncio.gather(first, second)

    asyncio.run(scenario())


def test_zero_queue_refuses_anything_that_would_wait() -> None:
    async def scenario() -> None:
        scheduler = Scheduler(max_concurrent=1, max_queue=0)
        async with scheduler.slot():
            with pytest.raises(QueueFullError):
                async with scheduler.slot():
                    pass
        async with scheduler.slot():
            pass

    asyncio.run(scenario())


def test_cancelled_waiter_leaves_the_queue() -> None:
    async def scenario() -> None:
        scheduler = Scheduler(max_concurrent=1, max_queue=5)
        release = asyncio.Event()
        entered: list[str] = []

        async def job(name: str) -> None:
            async with scheduler.slot():
                entered.append(name)
                await release.wait()

        holder = asyncio.create_task(job("holder"))
        await settle()
        leaver = asyncio.create_task(job("leaver"))
        stayer = asyncio.create_task(job("stayer"))
        await settle()
        assert scheduler.queued == 2
        leaver.cancel()
        await settle()
        assert scheduler.queued == 1
        release.set()
        await asyncio.gather(holder, stayer)
        assert entered == ["holder", "stayer"]
        assert scheduler.running == 0 and scheduler.queued == 0

    asyncio.run(scenario())


def test_slot_handed_over_to_a_waiter_cancelled_at_that_moment_is_passed_on() -> None:
    async def scenario() -> None:
        scheduler = Scheduler(max_concurrent=1, max_queue=5)
        release = asyncio.Event()
        entered: list[str] = []

        async def job(name: str) -> None:
            async with scheduler.slot():
                entered.append(name)
                await release.wait()

        holder = asyncio.create_task(job("holder"))
        await settle()
        unlucky = asyncio.create_task(job("unlucky"))
        last = asyncio.create_task(job("last"))
        await settle()
        release.set()
        # The holder hands its slot to "unlucky" (its future is set), which is cancelled
        # before it runs: the slot must go on to "last", not be lost.
        await asyncio.sleep(0)
        unlucky.cancel()
        await asyncio.gather(holder, last, unlucky, return_exceptions=True)
        assert "last" in entered
        assert scheduler.running == 0 and scheduler.queued == 0

    asyncio.run(scenario())


def test_slot_is_released_when_the_work_fails() -> None:
    async def scenario() -> None:
        scheduler = Scheduler(max_concurrent=1, max_queue=0)
        with pytest.raises(RuntimeError):
            async with scheduler.slot():
                raise RuntimeError("boom")
        assert scheduler.running == 0
        async with scheduler.slot():
            assert scheduler.running == 1

    asyncio.run(scenario())
