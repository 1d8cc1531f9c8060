"""Evidence from a container's last log lines, for engines that write no glowplug report.

A stock engine (vLLM, SGLang, transformers serve, any image) that fails leaves its last log lines
in the termination message (`terminationMessagePolicy: FallbackToLogsOnError`). This module reads
them the way an on-call engineer would: a command line that names an option the server refuses,
a known failure signature of one of the engine's flags (engines.py), an environment variable that
only one flag sets. When exactly one active flag is named, the failure blames it, as the worker's
own report would; otherwise the line is only quoted and bisection decides.

Pure: observations and flag definitions in, observations out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from glowplug_operator.engines import ENGINES
from glowplug_operator.rollback.observations import PodObservation
from glowplug_operator.rollback.reports import ErrorInfo, Report

# Options a command line parser refused: argparse (vLLM, SGLang) and click/typer (transformers).
_REFUSED_OPTIONS = (
    re.compile(r"unrecognized arguments?: (?P<options>.+)"),
    re.compile(r"No such option:? '?(?P<options>-[-\w]+)"),
    re.compile(r"argument (?P<options>--?[-\w]+)(?:/[-\w]+)?: (?:invalid|expected)"),
)
# The failure of vLLM PR #40331: an import on a background thread raced the main thread's.
IMPORT_RACE = re.compile(r"cannot import name '\w+' from partially initialized module")
IMPORT_RACE_FLAGS = ("background-import",)
_DECORATION = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|[│╭╮╰╯─━┃┏┓┗┛]")
_ENV_NAME = re.compile(r"\b[A-Z][A-Z0-9_]{2,}\b")


@dataclass(frozen=True)
class FlagDefinition:
    """What an active flag puts on the worker container (commands.engine_flag_definition)."""

    name: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None


def log_lines(message: str | None) -> list[str]:
    """The message's lines without terminal colours and box drawing, empty ones dropped."""
    if not message:
        return []
    lines = (_DECORATION.sub("", line).strip() for line in message.splitlines())
    return [line for line in lines if line]


def last_log_line(message: str | None) -> str | None:
    lines = log_lines(message)
    return lines[-1] if lines else None


def blame(
    message: str | None, engine: str, flags: Sequence[FlagDefinition]
) -> tuple[str, str] | None:
    """(flag, the log line that names it) when the lines point at exactly one active flag."""
    lines = log_lines(message)
    for line in reversed(lines):
        found = _named_by(line, engine, flags)
        if len(found) == 1:
            return found[0], line
    return None


def _named_by(line: str, engine: str, flags: Sequence[FlagDefinition]) -> list[str]:
    for pattern in _REFUSED_OPTIONS:
        if match := pattern.search(line):
            refused = set(match.group("options").replace("'", " ").split())
            return [f.name for f in flags if refused & {a.split("=", 1)[0] for a in f.args}]
    known = ENGINES[engine].flags if engine in ENGINES else {}
    signed = [
        f.name
        for f in flags
        if f.name in known and any(re.search(s, line) for s in known[f.name].signatures)
    ]
    if signed:
        return signed
    if IMPORT_RACE.search(line):
        return [f.name for f in flags if f.name in IMPORT_RACE_FLAGS]
    named = set(_ENV_NAME.findall(line))
    return [f.name for f in flags if f.env and named & set(f.env)]


def attribute(pod: PodObservation, engine: str, flags: Sequence[FlagDefinition]) -> PodObservation:
    """The pod with a report made from its worker's last log lines when the worker failed
    without writing one and the lines name exactly one of `flags`; else the pod as it is."""
    worker = pod.worker
    if worker is None or worker.report is not None or not worker.last_failure_message:
        return pod
    found = blame(worker.last_failure_message, engine, flags)
    if found is None:
        return pod
    flag, line = found
    report = Report(
        command="serve",
        outcome="failed",
        flag=flag,
        error=ErrorInfo(type="EngineLog", message=line),
    )
    return replace(pod, worker=replace(worker, report=report))
