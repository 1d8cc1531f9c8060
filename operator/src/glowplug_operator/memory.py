"""The operator's memory: glibc's malloc and CPython's garbage collector, tuned for a store of
thousands of decoded objects (bench/operator_scale.py measures the peak RSS at 1000
ModelServers). The malloc calls do nothing where the C library is not glibc."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc

M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2
GC_YOUNG_ALLOCATIONS = 20_000
GC_OLDER_RATIO = 20
RELEASE_SECONDS = 5.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _glibc(function: str, *args: int) -> bool:
    """Call one of glibc's malloc functions: its result as a bool, False where there is none."""
    libc = _libc()
    call = getattr(libc, function, None) if libc is not None else None
    return call is not None and bool(call(*args))


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas. Each thread that contends for malloc gets its own arena (up
    to 8 per core), and what one arena frees the others do not reuse; the API client's thread
    pool reads every response body. With the cap, the peak RSS at 1000 ModelServers went from
    227 to 213 MB (one quiet run each). False where the C library is not glibc."""
    return _glibc("mallopt", M_ARENA_MAX, arenas)


def tune_garbage_collection() -> None:
    """The store keeps thousands of decoded objects: trees of dicts and lists without cycles,
    which reference counting frees. CPython's default thresholds (700, 10, 10) still scan them:
    a full collection each time the heap grows by a quarter, and a young one every 700
    allocations while a watch event is decoded. That was 27% of the operator's CPU at 300
    ModelServers. Young collections now come every 20000 allocations, older ones more rarely,
    and the objects alive after the imports are left out of every scan."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_ALLOCATIONS, GC_OLDER_RATIO, GC_OLDER_RATIO)


def release_freed_memory() -> bool:
    """Give the pages that malloc holds free back to the system (`malloc_trim(0)`). Every
    watch event is decoded and then mostly freed, while the store keeps a slim copy of it:
    the freed memory is spread between long-lived objects, inside the heap, where glibc does
    not return it by itself. True when some was given back; False when none was, or where the
    C library is not glibc."""
    return _glibc("malloc_trim", 0)


async def release_memory_loop(period: float = RELEASE_SECONDS) -> None:
    """`release_freed_memory` every `period` seconds (about 15 ms for 200 MB). At 1000
    ModelServers (bench/operator_scale.py) the peak RSS went from 209-210 MB to 177-184 MB."""
    while True:
        await asyncio.sleep(period)
        release_freed_memory()
