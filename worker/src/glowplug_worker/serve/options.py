"""What `glowplug-worker serve` was asked to do, parsed and validated by `cli.py`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from glowplug_worker.serve.startup.flags import Flags

if TYPE_CHECKING:
    from glowplug_worker.prefetch.options import Options as PrefetchOptions


@dataclass(frozen=True)
class Options:
    model: Path
    task: str
    host: str
    port: int
    dtype: str
    device: str
    flags: Flags
    served_model_name: str
    max_concurrency: int
    max_queue: int
    request_timeout: float
    drain_seconds: float
    max_model_len: int | None
    started: float  # perf_counter at process start: the import phase begins there
    # `--download`: the prefetch this process runs itself before it reads the model directory.
    download: PrefetchOptions | None = None
