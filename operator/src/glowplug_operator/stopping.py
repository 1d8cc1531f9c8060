"""Running kopf's tasks and stopping them once on SIGINT or SIGTERM, without a traceback.

kopf's own signal handlers set a future, and a second signal sets it again: asyncio prints
`Exception in callback Future.set_result(<Signals.SIGTERM: 15>) ... InvalidStateError` at every
shutdown where the signal arrives twice, which is what happens whenever a wrapper forwards it
and the process group gets it too (`uv run` on Ctrl-C or `kill -- -PGID`, `make run`). Here the
signals set a stop flag instead, an asyncio.Event that any number of signals may set.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import kopf

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def operate(stop: asyncio.Event | None = None, **kwargs: Any) -> None:
    """`kopf.operator(**kwargs)`, with signal handling that tolerates repeats; `stop`, when
    given, stops it too (a lost leader Lease)."""
    stop = stop or asyncio.Event()
    existing = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    tasks = await kopf.spawn_tasks(stop_flag=stop, **kwargs)
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:  # replaces the handlers spawn_tasks just added
        loop.add_signal_handler(sig, _stop, stop, sig)
    await kopf.run_tasks(tasks, ignored=existing)


def _stop(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        log.info("%s received: stopping", sig.name)
    stop.set()
