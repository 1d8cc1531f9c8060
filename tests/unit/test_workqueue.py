"""WorkQueue: a burst of watch events for one ModelServer gives one reconcile, never two at once
for the same key, and delayed re-checks (time-based checks, retries) keep their earliest time.

Each test runs its own event loop with asyncio.run. Delays are short and only ordering and
presence are asserted (a generous wait_for guards against hangs, never against slowness).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from glowplug_operator.controller.workqueue import WorkQueue

Key = tuple[str, str]
A: Key = ("ml", "llama")
B: Key = ("ml", "minilm")
HANG = 5.0  # seconds before a get() that should return is declared hung


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(test())


async def nothing_ready(queue: WorkQueue[Key]) -> bool:
    """True when no key can be taken now (the queue holds nothing a worker may process)."""
    try:
        await asyncio.wait_for(queue.get(), 0.05)
    except TimeoutError:
        return True
    return False


async def take(queue: WorkQueue[Key]) -> Key:
    return await asyncio.wait_for(queue.get(), HANG)


class TestWorkQueue:
    def test_a_burst_of_adds_queues_each_key_once(self) -> None:
        async def scenario() -> None:
            queue: WorkQueue[Key] = WorkQueue()
            for key in (A, B, A, A, B):
                queue.add(key)
            assert len(queue) == 2
            assert [await take(queue), await take(queue)] == [A, B]
            assert await nothing_ready(queue)

        run(scenario)

    def test_a_key_in_process_is_not_handed_to_a_second_worker(self) -> None:
        async def scenario() -> None:
            queue: WorkQueue[Key] = WorkQueue()
            queue.add(A)
            assert await take(queue) == A
            queue.add(A)  # an event while the first worker reconciles A
            queue.add(B)
            assert await take(queue) == B  # other keys go on
            assert await nothing_ready(queue)
            queue.done(A)
            assert await take(queue) == A  # once more, for the event it has not seen
            queue.done(A)
            queue.done(B)
            assert await nothing_ready(queue)

        run(scenario)

    def test_many_adds_during_processing_give_one_more_run(self) -> None:
        async def scenario() -> None:
            queue: WorkQueue[Key] = WorkQueue()
            queue.add(A)
            assert await take(queue) == A
            for _ in range(5):
                queue.add(A)
            queue.done(A)
            assert await take(queue) == A
            queue.done(A)
            assert await nothing_ready(queue)

        run(scenario)

    def test_done_without_new_events_does_not_requeue(self) -> None:
        async def scenario() -> None:
            queue: WorkQueue[Key] = WorkQueue()
            queue.add(A)
            await take(queue)
            queue.done(A)
            assert len(queue) == 0
            assert await nothing_ready(queue)

        run(scenario)

    def test_workers_never_share_a_key_and_no_event_is_lost(self) -> None:
        """Four workers and a producer that keeps adding the same few keys: no key is processed
        twice at once, and every key is processed after its last add."""

        async def scenario() -> None:
            queue: WorkQueue[Key] = WorkQueue()
            keys = [("ml", f"m{i}") for i in range(3)]
            in_flight: set[Key] = set()
            overlaps: list[Key] = []
            last_add: dict[Key, int] = {}
            last_start: dict[Key, int] = {}
            clock = 0
            rng = random.Random(7)

            async def worker() -> None:
                while True:
                    key = await queue.get()
                    last_start[key] = clock
                    if key in in_flight:
                        overlaps.append(key)
                    in_flight.add(key)
                    await asyncio.sleep(rng.random() / 1000)
                    in_flight.discard(key)
                    queue.done(key)

            workers = [asyncio.create_task(worker()) for _ in range(4)]
            for _ in range(300):
                clock += 1
                key = rng.choice(keys)
                last_add[key] = clock
                queue.add(key)
                await asyncio.sleep(rng.random() / 2000)
            await asyncio.sleep(0.2)
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            assert overlaps == []
            assert all(last_start[key] >= last_add[key] for key in keys)

        run(scenario)

    def test_add_after_queues_the_key_later(self) -> None:
        async def scenario() -> None:
            queue: WorkQueue[Key] = WorkQueue()
            queue.add_after(A, 0.05)
            assert len(queue) == 0
            assert await take(queue) == A
            queue.done(A)
            assert await nothing_ready(queue)  # it fired once

        run(scenario)

    @pytest.mark.parametrize(
        "delays", [(0.05, 3600.0), (3600.0, 0.05)], ids=["earlier-first", "earlier-second"]
    )
    def test_the_earliest_schedule_wins(self, delays: tuple[float, float]) -> None:
        async def scenario() -> None:
            queue: WorkQueue[Key] = WorkQueue()
            for delay in delays:
                queue.add_after(A, delay)
            assert await take(queue) == A  # within HANG, not in an hour
            queue.done(A)
            assert await nothing_ready(queue)

        run(scenario)

    def test_add_after_of_a_queued_key_does_not_queue_it_twice(self) -> None:
        async def scenario() -> None:
            queue: WorkQueue[Key] = WorkQueue()
            queue.add(A)
            queue.add_after(A, 0.01)
            await asyncio.sleep(0.05)
            assert len(queue) == 1
            assert await take(queue) == A
            queue.done(A)
            assert await nothing_ready(queue)

        run(scenario)

    def test_forget_cancels_a_scheduled_key(self) -> None:
        async def scenario() -> None:
            queue: WorkQueue[Key] = WorkQueue()
            queue.add_after(A, 0.02)
            queue.add_after(B, 0.02)
            queue.forget(A)  # the ModelServer was deleted
            await asyncio.sleep(0.1)
            assert await take(queue) == B
            assert await nothing_ready(queue)

        run(scenario)

    def test_a_key_can_be_scheduled_again_after_forget(self) -> None:
        async def scenario() -> None:
            queue: WorkQueue[Key] = WorkQueue()
            queue.add_after(A, 3600)
            queue.forget(A)
            queue.add_after(A, 0.02)
            assert await take(queue) == A

        run(scenario)
