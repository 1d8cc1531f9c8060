"""The reconcile loop: takes keys off the work queue and reconciles them, one at a time per loop;
a failed reconcile is retried with exponential backoff, a finished one when it asks to be."""

from __future__ import annotations

import asyncio
import logging

from glowplug_operator.controller.reconciler import Reconciler
from glowplug_operator.controller.store import Key
from glowplug_operator.controller.workqueue import WorkQueue

log = logging.getLogger("glowplug")
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0


def retry_delay(failures: int) -> float:
    """Seconds before retrying a key that failed `failures` times in a row: 1, 2, 4 ... 60."""
    return min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2.0 ** (failures - 1))


async def reconcile_loop(queue: WorkQueue[Key], reconciler: Reconciler) -> None:
    failures: dict[Key, int] = {}
    while True:
        key = await queue.get()
        try:
            with reconciler.metrics.reconcile_seconds.time():
                delay = await reconciler.reconcile(key)
            failures.pop(key, None)
        except asyncio.CancelledError:
            raise
        except Exception:  # a reconcile must never take the operator down: retry with backoff
            failures[key] = failures.get(key, 0) + 1
            delay = retry_delay(failures[key])
            reconciler.metrics.reconcile_errors.inc()
            log.exception("reconcile of %s/%s failed; retrying in %.1fs", *key, delay)
        finally:
            queue.done(key)
        if delay is not None:
            queue.add_after(key, delay)
