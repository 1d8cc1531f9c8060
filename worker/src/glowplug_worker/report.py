"""The termination report: the contract between the worker's two commands and the operator.

Each command writes one JSON object to the container's termination-message path when it exits,
on success and on failure. Kubernetes keeps at most 4096 bytes of it in the pod status, where the
operator reads it (`glowplug_operator.reports` parses the same schema). The schema is documented
in docs/termination-report.md; change both sides together.

    {
      "schema": "glowplug.dev/termination-report/v1",
      "command": "prefetch" | "serve",
      "outcome": "succeeded" | "failed",
      "phase": "download" | "import" | "config" | "load" | "warmup" | "serve",  # failed phase
      "optimizations": ["fast-load", ...],     # the flags active in this process
      "flag": "fast-load" | null,              # a flag the worker itself found to blame
      "error": {"type": "OSError", "message": "..."} | null,
      "phases": {"download": 41.0, "import": 6.1, ...},   # seconds per finished phase
      "download": {"bytes": 0, "files": 0, "seconds": 0.0,
                   "throughput_bytes_per_second": 0.0, "reused": true} | null
    }
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SCHEMA = "glowplug.dev/termination-report/v1"
DEFAULT_PATH = "/dev/termination-log"
# Kubernetes truncates a termination message at 4096 bytes; stay well inside it.
MAX_BYTES = 4096
MAX_MESSAGE_CHARS = 1024

Command = Literal["prefetch", "serve"]
Outcome = Literal["succeeded", "failed"]
PHASES = ("download", "import", "config", "load", "warmup", "serve")


@dataclass
class ErrorInfo:
    type: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        return cls(type=type(exc).__name__, message=truncate(str(exc), MAX_MESSAGE_CHARS))


@dataclass
class DownloadSummary:
    bytes: int
    files: int
    seconds: float
    throughput_bytes_per_second: float
    reused: bool


@dataclass
class TerminationReport:
    command: Command
    outcome: Outcome
    phase: str | None = None
    optimizations: list[str] = field(default_factory=list)
    flag: str | None = None
    error: ErrorInfo | None = None
    phases: dict[str, float] = field(default_factory=dict)
    download: DownloadSummary | None = None

    def to_json(self) -> str:
        body: dict[str, Any] = {"schema": SCHEMA, **asdict(self)}
        body["phases"] = {k: round(v, 3) for k, v in self.phases.items()}
        text = json.dumps(body, separators=(",", ":"))
        while len(text.encode()) > MAX_BYTES and body["error"] and body["error"]["message"]:
            message = body["error"]["message"]
            body["error"]["message"] = truncate(message, len(message) // 2)
            text = json.dumps(body, separators=(",", ":"))
        return text


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def termination_path() -> str:
    """Where to write: GLOWPLUG_TERMINATION_PATH, else Kubernetes' default path."""
    return os.environ.get("GLOWPLUG_TERMINATION_PATH", DEFAULT_PATH)


def write(report: TerminationReport, path: str | None = None) -> None:
    """Write the report; a path that cannot be written (e.g. outside a pod) is not an error."""
    target = path or termination_path()
    try:
        with open(target, "w", encoding="utf-8") as fh:
            fh.write(report.to_json())
    except OSError:
        pass
