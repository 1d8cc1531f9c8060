"""`prefetch-weights`: read the weight files' bytes into the page cache in background threads
while the imports run, so that the load phase reads from memory instead of disk.

Bytes only: the threads `pread` into a reused buffer and never import or execute anything. A
failure here is logged and otherwise harmless (the load phase reads the files itself).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("glowplug.serve")

BLOCK = 8 << 20
CHUNK = 256 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weight_files(model_dir: Path) -> list[Path]:
    """The model directory's weight files, in name order (the order loaders read them)."""
    if not model_dir.is_dir():
        return []
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


@dataclass
class Prefetcher:
    files: list[Path]
    threads: int = 4
    bytes_read: int = 0
    seconds: float | None = None
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Prefetcher:
        jobs: list[tuple[Path, int, int]] = []
        for path in self.files:
            size = path.stat().st_size
            jobs.extend((path, off, min(CHUNK, size - off)) for off in range(0, size, CHUNK))
        # Interleave jobs across threads so the first file finishes first.
        begin = time.perf_counter()
        remaining = [len(jobs)]

        def run(mine: list[tuple[Path, int, int]]) -> None:
            buf = bytearray(BLOCK)
            view = memoryview(buf)
            for path, off, length in mine:
                if self._stop.is_set():
                    return
                try:
                    self._read(path, off, length, view)
                except OSError as exc:
                    self.errors.append(f"{path.name}: {exc}")
                    log.warning("prefetch-weights: could not read %s: %s", path, exc)
            with self._lock:
                remaining[0] -= len(mine)
                if remaining[0] == 0:
                    self.seconds = time.perf_counter() - begin

        n = max(1, min(self.threads, len(jobs)))
        for i in range(n):
            t = threading.Thread(target=run, args=(jobs[i::n],), name=f"prefetch-{i}", daemon=True)
            self._workers.append(t)
            t.start()
        return self

    def _read(self, path: Path, offset: int, length: int, view: memoryview) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            done = 0
            while done < length and not self._stop.is_set():
                n = os.preadv(fd, [view[: min(BLOCK, length - done)]], offset + done)
                if n <= 0:
                    break
                done += n
            with self._lock:
                self.bytes_read += done
        finally:
            os.close(fd)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop reading (the load phase takes over) and wait briefly for the threads."""
        self._stop.set()
        for t in self._workers:
            t.join(timeout)

    def summary(self) -> dict[str, object]:
        return {
            "files": len(self.files),
            "bytes": self.bytes_read,
            "finished_seconds": None if self.seconds is None else round(self.seconds, 3),
            "errors": self.errors[:5],
        }


def start_prefetch(model_dir: Path, threads: int = 4) -> Prefetcher:
    return Prefetcher(weight_files(model_dir), threads=threads).start()
