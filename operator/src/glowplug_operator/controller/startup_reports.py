"""The worker's own start phases (import, config, load, warmup, and download with
overlap-download), read once per pod from its `/startup` when the pod turns Ready; for a stock
engine that logs its phases (vLLM, SGLang), read once from the last part of its container log
(engines.phases_from_log).

A read never blocks a reconcile: it runs as a task with a short timeout, keeps its result per pod
UID and asks for the ModelServer to be reconciled again, which then puts the phases into
`status.coldStart`. A pod that does not answer in time keeps the phases the pod's status shows.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import aiohttp

from glowplug_operator.controller.store import Key
from glowplug_operator.engines import phases_from_log

log = logging.getLogger(__name__)

# The worker's phases, in the order it runs them (worker/.../startup/phases.py); `download` only
# with overlap-download, beside `import`.
WORKER_PHASES = ("download", "import", "config", "load", "warmup")


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
        self._start(key, uid, url, partial(self._read_startup, url), download)

    def request_log(
        self,
        key: Key,
        uid: str,
        engine: str,
        read_log: Callable[[], Awaitable[str]],
        download: float | None = None,
    ) -> None:
        """Read the engine's log once for this pod and keep the phases it logged."""

        async def phases() -> dict[str, float]:
            return phases_from_log(engine, await read_log())

        self._start(key, uid, f"the {engine} log", phases, download)

    def _start(
        self,
        key: Key,
        uid: str,
        source: str,
        read: Callable[[], Awaitable[dict[str, float]]],
        download: float | None,
    ) -> None:
        if uid in self._phases or uid in self._tasks:
            return
        self._tasks[uid] = asyncio.get_running_loop().create_task(
            self._read(key, uid, source, read, download)
        )

    async def _read_startup(self, url: str) -> dict[str, float]:
        async with (
            aiohttp.ClientSession(timeout=self._timeout) as session,
            session.get(url) as response,
        ):
            response.raise_for_status()
            return worker_phases(await response.json())

    async def _read(
        self,
        key: Key,
        uid: str,
        source: str,
        read: Callable[[], Awaitable[dict[str, float]]],
        download: float | None,
    ) -> None:
        phases: dict[str, float] = {}
        try:
            phases = await asyncio.wait_for(read(), self._timeout.total)
        except Exception as error:  # a phase read is informative: never fail a reconcile
            log.info("%s/%s: no start phases from %s: %s", key[0], key[1], source, error)
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
