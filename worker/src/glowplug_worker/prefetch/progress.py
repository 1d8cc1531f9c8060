"""Plain-text progress: one log line per interval (bytes, rate, ETA), no progress bars."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def log(message: str, stream: TextIO | None = None) -> None:
    """One timestamped line on stderr (the pod log)."""
    out = stream or sys.stderr
    out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} prefetch: {message}\n")
    out.flush()


class Progress:
    """Thread-safe byte counter with a reporter thread that logs every `interval` seconds."""

    def __init__(self, total: int, files: int, interval: float) -> None:
        self.total = total
        self.files = files
        self.interval = interval
        self.done = 0  # bytes present in staging (resumed + fetched)
        self.fetched = 0  # bytes moved over the network in this run
        self.files_done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.monotonic()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            self.fetched += n

    def add_resumed(self, n: int) -> None:
        with self._lock:
            self.done += n

    def file_finished(self) -> None:
        with self._lock:
            self.files_done += 1

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.fetched / elapsed
        pct = f" ({100.0 * self.done / self.total:.1f}%)" if self.total else ""
        left = self.total - self.done
        eta = f", ETA {left / rate:.0f}s" if rate > 0 and left > 0 else ""
        return (
            f"{human_bytes(self.done)} / {human_bytes(self.total)}{pct}, "
            f"{human_bytes(rate)}/s{eta}, {self.files_done}/{self.files} files"
        )

    def start(self) -> None:
        if self.interval <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="prefetch-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            log(self.line())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
