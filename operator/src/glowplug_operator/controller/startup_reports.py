"""The worker's own start phases (import, config, load, warmup), read once per pod from its
`/startup` when the pod turns Ready.

A read never blocks a reconcile: it runs as a task with a short timeout, keeps its result per pod
UID and asks for the ModelServer to be reconciled again, which then puts the phases into
`status.coldStart`. A pod that does not answer in time keeps the phases the pod's status shows.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from glowplug_operator.controller.store import Key

log = logging.getLogger(__name__)

# The worker's phases, in the order it runs them (worker/.../startup/phases.py).
WORKER_PHASES = ("import", "config", "load", "warmup")


class StartupReports:
    def __init__(
        self,
        requeue: Callable[[Key], None],
        observe: Callable[[Mapping[str, float]], None],
        timeout_seconds: float = 2.0,
        keep: int = 4096,
    ) -> None:
        self._requeue = requeue
        self._observe = observe  # each pod's phases, once (the cold-start histogram)
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._keep = keep
        self._phases: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def phases(self, uid: str) -> dict[str, float] | None:
        """The worker phases read for this pod: None before a read ended, {} if it failed."""
        return self._phases.get(uid)

    def request(self, key: Key, uid: str, url: str, download: float | None = None) -> None:
        """Read `url` once for this pod, in the background; `download` (the prefetcher's
        seconds) joins the phases the histogram observes."""
        if uid in self._phases or uid in self._tasks:
            return
        self._tasks[uid] = asyncio.get_running_loop().create_task(
            self._read(key, uid, url, download)
        )

    async def _read(self, key: Key, uid: str, url: str, download: float | None) -> None:
        phases: dict[str, float] = {}
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(url) as response,
            ):
                response.raise_for_status()
                phases = worker_phases(await response.json())
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.info("%s/%s: no start phases from %s: %s", key[0], key[1], url, error)
        finally:
            self._tasks.pop(uid, None)
        self._phases[uid] = phases
        while len(self._phases) > self._keep:
            self._phases.popitem(last=False)
        if phases:
            self._observe({**({"download": download} if download is not None else {}), **phases})
        self._requeue(key)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


def worker_phases(startup: Any) -> dict[str, float]:
    """The phases of a worker's `/startup` answer that the cold start shows."""
    phases = startup.get("phases") if isinstance(startup, dict) else None
    if not isinstance(phases, dict):
        raise ValueError("no phases in the /startup answer")
    return {
        name: round(float(phases[name]), 3)
        for name in WORKER_PHASES
        if isinstance(phases.get(name), int | float) and not isinstance(phases[name], bool)
    }
