"""The operator stops without a traceback when kopf's watchers are cancelled between events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from glowplug_operator.stopping import close_watch_streams


@contextlib.asynccontextmanager
async def streaming_block(closed: list[str]) -> AsyncIterator[asyncio.Task[None]]:
    """Shaped like kopf's: a waiter task that it cancels and awaits as it closes."""
    waiter = asyncio.create_task(asyncio.sleep(3600))
    try:
        yield waiter
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            waiter.cancel()
            await waiter
        closed.append("streaming_block")


async def infinite_watch(closed: list[str]) -> AsyncIterator[int]:
    """Shaped like kopf's watch stream (the name is what close_watch_streams looks for)."""
    while True:
        async with streaming_block(closed):
            for event in range(1000):
                await asyncio.sleep(0)
                yield event


async def _end_of_loop(errors: list[BaseException]) -> None:
    """What asyncio does with the generators still open when the loop ends: it closes them all
    at once, in no set order. Here in the order that fails: the inner context first."""
    open_generators = sorted(
        asyncio.get_running_loop()._asyncgens,  # type: ignore[attr-defined]
        key=lambda generator: generator.ag_code.co_name != "streaming_block",
    )
    for generator in open_generators:
        try:
            await generator.aclose()
        except Exception as error:
            errors.append(error)


def _stop_a_watcher_between_events(close: bool) -> tuple[list[str], list[BaseException]]:
    """A watcher that keeps its stream (kopf's task does) is cancelled while it handles an
    event; returns what was closed and what failed as the loop ended."""
    closed: list[str] = []
    errors: list[BaseException] = []
    kept: list[AsyncIterator[int]] = []

    async def watcher() -> None:
        stream = infinite_watch(closed)
        kept.append(stream)
        async for _ in stream:
            await asyncio.sleep(3600)  # handling an event when the stop comes

    async def main() -> None:
        task = asyncio.create_task(watcher())
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if close:
            await close_watch_streams()
        await _end_of_loop(errors)

    asyncio.run(main())
    return closed, errors


def test_left_open_kopfs_stream_fails_as_the_loop_closes_it() -> None:
    _, errors = _stop_a_watcher_between_events(close=False)
    assert [str(e) for e in errors] == ["generator didn't stop after athrow()"]


def test_closed_before_the_loop_ends_the_stream_and_its_context_close_cleanly() -> None:
    closed, errors = _stop_a_watcher_between_events(close=True)
    assert errors == []
    assert closed == ["streaming_block"]
