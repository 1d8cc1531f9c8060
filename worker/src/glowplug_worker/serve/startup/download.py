"""`overlap-download`: the worker fetches the model itself, in a thread that starts with the
process, while the import phase imports torch. The pod then needs no prefetch init container: the
kubelet starts the worker at once instead of after the init container has exited.

The thread runs the prefetcher's own code (`prefetch.run.prefetch`): the same cache reuse,
resumable staging, verification and atomic publish as `glowplug-worker prefetch`. Nothing that
reads the model directory runs before `wait` returns.
"""

from __future__ import annotations

import os
import shlex
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glowplug_worker.prefetch.options import Options as PrefetchOptions
    from glowplug_worker.prefetch.run import Outcome


def parse_download(value: str, env: Mapping[str, str]) -> PrefetchOptions:
    """`serve --download`: one shell-quoted string of `glowplug-worker prefetch` arguments.
    Raises the prefetcher's `UsageError` (or `ValueError` for bad quoting)."""
    from glowplug_worker.prefetch.cli import parse_options
    from glowplug_worker.prefetch.options import parse_optimizations

    flags = parse_optimizations(env.get("GLOWPLUG_OPTIMIZATIONS"))
    options, metrics_file = parse_options(shlex.split(value), env, flags)
    if metrics_file is not None:
        raise ValueError("--metrics-file has no use inside serve")
    return options


@dataclass
class Download:
    """One prefetch in a daemon thread; `wait` returns its outcome or raises its error."""

    options: PrefetchOptions
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    outcome: Outcome | None = None
    error: BaseException | None = None
    _done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Download:
        threading.Thread(target=self._run, name="download", daemon=True).start()
        return self

    def _run(self) -> None:
        from glowplug_worker.prefetch.run import prefetch

        try:
            self.outcome = prefetch(self.options, self.env)
        except BaseException as exc:  # handed to the main thread by `wait`
            self.error = exc
        finally:
            self._done.set()

    def wait(self, interrupted: Callable[[], bool], poll_seconds: float = 0.2) -> Outcome | None:
        """Block until the download ends; None when `interrupted()` turned true first (SIGTERM:
        the staging area stays, and the next start resumes it)."""
        while not self._done.wait(poll_seconds):
            if interrupted():
                return None
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome
