"""What the startup has done so far: shared by the startup code (writer) and the HTTP handlers
(readers). Plain attributes guarded by a lock; no torch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glowplug_worker.serve.http.server import Http


class FlagFailure(Exception):
    """A failure that the worker can pin on one of its own flags (written as the report's
    `flag`)."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(message)
        self.flag = flag


class Interrupted(Exception):
    """SIGTERM arrived during startup; `http` is the server to stop, if it is to be stopped."""

    def __init__(self, http: Http | None) -> None:
        super().__init__("startup interrupted by a signal")
        self.http = http


class StartupError(Exception):
    """A startup phase failed; `__cause__` is the original exception."""

    def __init__(self, phase: str, cause: BaseException, flag: str | None = None) -> None:
        super().__init__(f"startup phase {phase!r} failed: {type(cause).__name__}: {cause}")
        self.phase = phase
        self.cause = cause
        self.flag = flag


@dataclass
class StartupState:
    optimizations: list[str]
    ignored_optimizations: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    phases: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    current: str | None = None
    ready: bool = False
    draining: bool = False
    failed: dict[str, Any] | None = None
    time_to_ready: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def phase(self, name: str, begin: float | None = None) -> Iterator[None]:
        """Time one phase (from `begin`, a `perf_counter` value, when given); an exception inside
        becomes a `StartupError` naming the phase."""
        with self._lock:
            self.current = name
        begin = time.perf_counter() if begin is None else begin
        try:
            yield
        except (StartupError, Interrupted):
            raise
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise self.failure(name, exc) from exc
        with self._lock:
            self.phases[name] = time.perf_counter() - begin
            self.current = None

    def failure(self, name: str, exc: BaseException) -> StartupError:
        """Record `exc` as phase `name`'s failure; the error to raise."""
        flag = exc.flag if isinstance(exc, FlagFailure) else None
        with self._lock:
            self.failed = {
                "phase": name,
                "type": type(exc).__name__,
                "message": str(exc)[:1024],
                "flag": flag,
            }
        return StartupError(name, exc, flag)

    def record(self, name: str, seconds: float) -> None:
        """A phase that ran beside another (overlap-download's download, inside import)."""
        with self._lock:
            self.phases[name] = seconds

    def mark_ready(self) -> None:
        with self._lock:
            self.time_to_ready = time.perf_counter() - self.started
            self.ready = True

    @property
    def serving(self) -> bool:
        """True when `/ready` should answer 200."""
        return self.ready and not self.draining

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "ready": self.serving,
                "draining": self.draining,
                "current_phase": self.current,
                "phases": {k: round(v, 4) for k, v in self.phases.items()},
                "time_to_ready_seconds": None
                if self.time_to_ready is None
                else round(self.time_to_ready, 4),
                "seconds_since_start": round(time.perf_counter() - self.started, 4),
                "optimizations": list(self.optimizations),
                "ignored_optimizations": list(self.ignored_optimizations),
                "details": dict(self.details),
                "failed": self.failed,
            }
