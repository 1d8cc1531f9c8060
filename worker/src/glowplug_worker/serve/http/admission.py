"""Admission control: at most `max_running` requests run on the model at once and at most
`max_queued` wait; anything beyond is refused at once (429) instead of piling up in memory.
Also counts in-flight requests for the drain on SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from glowplug_worker.serve.http.protocol import ApiError


class Overloaded(Exception):
    """Every slot and every queue place is taken."""


class Scheduler:
    def __init__(self, max_running: int, max_queued: int) -> None:
        if max_running < 1:
            raise ValueError("--max-concurrency must be at least 1")
        if max_queued < 0:
            raise ValueError("--max-queue must be 0 or more")
        self.max_running = max_running
        self.max_queued = max_queued
        self.running = 0
        self.queued = 0
        self._slots: asyncio.Semaphore | None = None
        self._idle: asyncio.Event | None = None

    def _ensure(self) -> asyncio.Semaphore:
        # Created lazily, inside the event loop that uses them.
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_running)
            self._idle = asyncio.Event()
            self._idle.set()
        return self._slots

    @property
    def in_flight(self) -> int:
        return self.running + self.queued

    @asynccontextmanager
    async def slot(self, timeout: float | None, weight: int = 1) -> AsyncIterator[None]:
        """Hold `weight` running slots (one per sequence: a request with `n` choices takes n)
        for the body; raises `Overloaded` when full and `TimeoutError` when the slots do not
        free up within `timeout` seconds."""
        slots = self._ensure()
        assert self._idle is not None
        if weight > self.max_running:
            raise ValueError(f"a request may take at most {self.max_running} slots")
        if self.in_flight + weight > self.max_running + self.max_queued:
            raise Overloaded()
        self.queued += weight
        self._idle.clear()
        taken = 0
        try:
            async with asyncio.timeout(timeout):
                for _ in range(weight):
                    await slots.acquire()
                    taken += 1
        except BaseException:
            for _ in range(taken):
                slots.release()
            self.queued -= weight
            self._settle()
            raise
        self.queued -= weight
        self.running += weight
        try:
            yield
        finally:
            self.running -= weight
            for _ in range(weight):
                slots.release()
            self._settle()

    def _settle(self) -> None:
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False if `timeout` passed first."""
        self._ensure()
        assert self._idle is not None
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


async def admit(
    stack: AsyncExitStack, scheduler: Scheduler, remaining: float, weight: int = 1
) -> None:
    """Take `weight` slots for a request that has `remaining` seconds left, held until `stack`
    closes; a full server answers 429, no free slot in time 504."""
    try:
        await stack.enter_async_context(scheduler.slot(max(remaining, 0.001), weight))
    except Overloaded as exc:
        raise ApiError(
            429,
            "the server is at capacity; retry later",
            type_="rate_limit_error",
            code="overloaded",
        ) from exc
    except TimeoutError as exc:
        raise ApiError(504, "timed out waiting for a free slot", type_="timeout_error") from exc
