"""Running kopf's tasks and stopping them once on SIGINT or SIGTERM, without a traceback.

kopf's own signal handlers set a future, and a second signal sets it again: asyncio prints
`Exception in callback Future.set_result(<Signals.SIGTERM: 15>) ... InvalidStateError` at every
shutdown where the signal arrives twice, which is what happens whenever a wrapper forwards it
and the process group gets it too (`uv run` on Ctrl-C or `kill -- -PGID`, `make run`). Here the
signals set a stop flag instead, an asyncio.Event that any number of signals may set.

A kopf watcher cancelled between two events leaves its watch stream open (see
`close_watch_streams`); those are closed before the event loop ends.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import kopf

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The name of kopf's watch-stream generator (kopf/_cogs/clients/watching.py, kopf 1.45.2).
WATCH_STREAM = "infinite_watch"


async def operate(stop: asyncio.Event | None = None, **kwargs: Any) -> None:
    """`kopf.operator(**kwargs)`, with signal handling that tolerates repeats; `stop`, when
    given, stops it too (a lost leader Lease)."""
    stop = stop or asyncio.Event()
    existing = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    tasks = await kopf.spawn_tasks(stop_flag=stop, **kwargs)
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:  # replaces the handlers spawn_tasks just added
        loop.add_signal_handler(sig, _stop, stop, sig)
    try:
        await kopf.run_tasks(tasks, ignored=existing)
    finally:
        await close_watch_streams()


async def close_watch_streams() -> None:
    """Close the watch streams kopf left open, while the event loop still runs.

    A kopf watcher cancelled between two events (an operator stopped while events flow) does not
    close its `infinite_watch` generator. asyncio closes every generator still open when the loop
    ends, all at once: the stream and the `streaming_block` context it is suspended in are then
    closed concurrently, in no set order; when the context goes first, kopf's stream fails with
    `RuntimeError: generator didn't stop after athrow()`, logged as `ERROR asyncio: an error
    occurred during closing of asynchronous generator` and a traceback (seen when the scale
    benchmark stopped the operator just after 1000 ModelServers converged). Closed here, each
    stream closes its own context first. asyncio keeps the open generators in a private set;
    where it has none, nothing is done."""
    for generator in list(getattr(asyncio.get_running_loop(), "_asyncgens", ())):
        code = getattr(generator, "ag_code", None)
        if code is not None and code.co_name == WATCH_STREAM:
            try:
                await generator.aclose()
            except Exception:  # the process is stopping: say so, do not fail the stop
                log.warning("closing a watch stream failed", exc_info=True)


def _stop(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        log.info("%s received: stopping", sig.name)
    stop.set()
