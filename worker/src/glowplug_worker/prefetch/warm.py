"""Page-cache warm-up (`prefetch-page-cache`): read published files once so that the worker's
load finds their bytes in memory. Reads in parallel; bytes are discarded."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

from glowplug_worker.prefetch.errors import IntegrityError

BLOCK = 8 * 1024 * 1024


def _read_all(path: str, digest: bool) -> tuple[int, str | None]:
    h = hashlib.sha256() if digest else None
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        while True:
            n = os.readv(fd, [view])
            if not n:
                break
            total += n
            if h is not None:
                h.update(view[:n])
    finally:
        os.close(fd)
    return total, h.hexdigest() if h is not None else None


def warm(paths: list[str], threads: int = 4) -> int:
    """Read every file through the page cache; returns the bytes read."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return sum(n for n, _ in pool.map(lambda p: _read_all(p, False), paths))


def verify(files: dict[str, tuple[str, str]], threads: int = 4) -> None:
    """files: relative name -> (path, expected sha256). Raises IntegrityError on a mismatch."""
    names = list(files)

    def check(name: str) -> None:
        path, want = files[name]
        _, got = _read_all(path, True)
        if got != want:
            raise IntegrityError(f"{name}: sha256 {got} does not match the recorded {want}")

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(check, names))
