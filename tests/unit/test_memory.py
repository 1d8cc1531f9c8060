"""The operator gives memory that malloc holds free back to the system."""

from __future__ import annotations

import asyncio
import ctypes
from pathlib import Path

import pytest
from glowplug_operator.memory import release_freed_memory, release_memory_loop


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "malloc_trim")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="malloc_trim is glibc's")
def test_memory_freed_between_live_objects_goes_back_to_the_system() -> None:
    """Like the store: decoded events freed, one in 64 kept; the freed pages stay in the heap,
    between the kept ones, until they are released."""
    blocks = [bytes(4000) for _ in range(25_000)]  # about 100 MB, from malloc
    kept = blocks[::64]
    del blocks
    before = _rss_mb()
    assert release_freed_memory()
    assert before - _rss_mb() > 50, f"RSS {before:.0f} MB -> {_rss_mb():.0f} MB"
    del kept  # alive until here, like the store


def test_the_loop_releases_again_and_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(
        "glowplug_operator.memory.release_freed_memory", lambda: calls.append(True) or True
    )

    async def run() -> None:
        task = asyncio.create_task(release_memory_loop(period=0.01))
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(run(), timeout=10))
    assert len(calls) >= 3
