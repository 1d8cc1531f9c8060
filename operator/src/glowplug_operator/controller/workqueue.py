"""A work queue of ModelServer keys, as in client-go: a key is queued at most once, processed by
one worker at a time, and can be scheduled again after a delay (time-based checks, retries).

Two lanes. A key seen for the first time (a new ModelServer, the startup list) waits in FIFO
order. A key processed before (a follow-up: its pod turned Ready, a timer, a spec edit) is taken
ahead of those: a burst of new ModelServers does not hold back the status of the ones already
rolling out. While such a burst waits, a follow-up is delayed by `coalesce_seconds`, so that the
events of a pod's start fold into one reconcile instead of one status write per intermediate
state; with no new key waiting it is queued at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
COALESCE_SECONDS = 1.0


class WorkQueue(Generic[K]):
    def __init__(self, coalesce_seconds: float = COALESCE_SECONDS) -> None:
        self._coalesce = coalesce_seconds
        self._new: deque[K] = deque()
        self._known: deque[K] = deque()
        self._ready = asyncio.Semaphore(0)  # one release per key in a lane
        self._queued: set[K] = set()
        self._seen: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}

    def add(self, key: K) -> None:
        if key in self._processing:
            self._dirty.add(key)  # run once more when the current run ends
        elif key in self._queued:
            return
        elif key in self._seen and self._new and self._coalesce > 0:
            self.add_after(key, self._coalesce)  # a burst waits: fold this key's next events in
        else:
            self._enqueue(key)

    def add_after(self, key: K, delay: float) -> None:
        """Queue `key` in `delay` seconds; an earlier pending schedule wins."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._enqueue(key)

    def _enqueue(self, key: K) -> None:
        self._queued.add(key)
        (self._known if key in self._seen else self._new).append(key)
        self._ready.release()

    async def get(self) -> K:
        await self._ready.acquire()
        key = (self._known or self._new).popleft()
        self._queued.discard(key)
        self._seen.add(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def forget(self, key: K) -> None:
        """The key's object is gone: no pending schedule, and a new one of that name is new."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._seen.discard(key)

    def __len__(self) -> int:
        return len(self._queued)
