"""Exponential backoff with jitter, bounded by attempts and by the overall deadline."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from glowplug_worker.prefetch.errors import DeadlineError, TransientError
from glowplug_worker.prefetch.progress import log

T = TypeVar("T")


def backoff_delay(failures: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Delay before retry number `failures` (1-based): base * 2^(n-1), capped, 50-100% jitter."""
    delay: float = min(cap_s, base_s * 2.0 ** (failures - 1))
    return delay * (0.5 + random.random() / 2)


def sleep_before_retry(
    failures: int, deadline: float, what: str, exc: Exception, abort: threading.Event | None = None
) -> bool:
    """Sleep the backoff delay; raise DeadlineError if it would pass the deadline.
    Returns True if `abort` was set while sleeping."""
    delay = backoff_delay(failures)
    if time.monotonic() + delay > deadline:
        raise DeadlineError(f"{what}: the overall deadline passed while retrying ({exc})") from exc
    log(f"retrying {what} in {delay:.1f}s: {exc}")
    if abort is not None:
        return abort.wait(delay)
    time.sleep(delay)
    return False


def with_retries(fn: Callable[[], T], what: str, deadline: float, max_attempts: int) -> T:
    """Call fn, retrying TransientError; other errors propagate at once."""
    failures = 0
    while True:
        try:
            return fn()
        except TransientError as exc:
            failures += 1
            if failures >= max_attempts:
                raise TransientError(f"{exc} (gave up after {failures} attempts)") from exc
            sleep_before_retry(failures, deadline, what, exc)
