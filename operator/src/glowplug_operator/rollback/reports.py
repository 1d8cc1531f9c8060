"""Reading the worker's termination report (the operator side of the contract).

The worker writes one JSON object to its termination-message path when it exits
(`glowplug_worker.report`, documented in docs/termination-report.md); Kubernetes copies at most
4096 bytes of it into `pod.status.containerStatuses[].state.terminated.message`. This module turns
such a message back into a frozen `Report`, or into `None` for anything that is not a v1 report:
garbage, truncated JSON, another schema, a plain-text message from some other image. It never
raises.

It also holds the worker's documented mapping from built-in flags to the phase they act in, the
"evidence" a failure report gives for blaming a flag.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

SCHEMA = "glowplug.dev/termination-report/v1"

Command = Literal["prefetch", "serve"]
StartResult = Literal["succeeded", "failed"]

PHASES: tuple[str, ...] = ("download", "import", "config", "load", "warmup", "serve")

# The worker's mapping from built-in flags to the phase they act in. Custom flags (env/args
# toggles of other images) have no phase: only a report's `flag` field, bisection or repeated
# failures can blame them.
FLAG_PHASES: Mapping[str, str] = MappingProxyType(
    {
        "prefetch-page-cache": "download",
        "prefetch-weights": "import",
        "background-import": "import",
        "slim-imports": "import",
        "hf-offline": "config",
        "fast-load": "load",
        "native-model": "load",
        # The overlap runs in the import phase; its download's own failures are phase download.
        "overlap-download": "import",
    }
)


def phase_of_flag(name: str) -> str | None:
    """The phase a built-in flag acts in; None for a custom flag."""
    return FLAG_PHASES.get(name)


@dataclass(frozen=True)
class ErrorInfo:
    type: str
    message: str


@dataclass(frozen=True)
class DownloadSummary:
    bytes: int
    files: int
    seconds: float
    throughput_bytes_per_second: float
    reused: bool


@dataclass(frozen=True)
class Report:
    command: Command
    outcome: StartResult
    phase: str | None = None
    optimizations: tuple[str, ...] = ()
    flag: str | None = None
    error: ErrorInfo | None = None
    phases: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    download: DownloadSummary | None = None

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"


def parse_report(message: str | None) -> Report | None:
    """The report in a termination message, or None if the message holds no v1 report."""
    if not message or not isinstance(message, str):
        return None
    text = message.strip()
    if not text.startswith("{"):
        return None
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict) or body.get("schema") != SCHEMA:
        return None
    return _report_from(body)


def _report_from(body: dict[str, Any]) -> Report | None:
    command = body.get("command")
    outcome = body.get("outcome")
    if command not in ("prefetch", "serve") or outcome not in ("succeeded", "failed"):
        return None
    optimizations = body.get("optimizations")
    flags = (
        tuple(o for o in optimizations if isinstance(o, str))
        if isinstance(optimizations, list)
        else ()
    )
    return Report(
        command=command,
        outcome=outcome,
        phase=_str_or_none(body.get("phase")),
        optimizations=flags,
        flag=_str_or_none(body.get("flag")),
        error=_error(body.get("error")),
        phases=MappingProxyType(_phases(body.get("phases"))),
        download=_download(body.get("download")),
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _error(value: Any) -> ErrorInfo | None:
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    message = value.get("message")
    return ErrorInfo(
        type=kind if isinstance(kind, str) else "",
        message=message if isinstance(message, str) else "",
    )


def _phases(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    out: dict[str, float] = {}
    for name, seconds in value.items():
        number = _number(seconds)
        if isinstance(name, str) and number is not None:
            out[name] = number
    return out


def _download(value: Any) -> DownloadSummary | None:
    if not isinstance(value, dict):
        return None
    size = _number(value.get("bytes"))
    files = _number(value.get("files"))
    seconds = _number(value.get("seconds"))
    throughput = _number(value.get("throughput_bytes_per_second"))
    reused = value.get("reused")
    if size is None or files is None or seconds is None or throughput is None:
        return None
    return DownloadSummary(
        bytes=int(size),
        files=int(files),
        seconds=seconds,
        throughput_bytes_per_second=throughput,
        reused=reused if isinstance(reused, bool) else False,
    )
