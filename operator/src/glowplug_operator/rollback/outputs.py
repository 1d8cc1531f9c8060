"""What the rollback decision tells the user: condition, Degraded reasons, events, messages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from glowplug_operator.rollback.state import Bisection, FlagState, StartResult, truncate

Policy = Literal["Automatic", "Off"]
ConditionStatus = Literal["True", "False", "Unknown"]
EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Condition:
    type: str
    status: ConditionStatus
    reason: str
    message: str


@dataclass(frozen=True)
class Degraded:
    reason: str
    message: str


NOT_A_FLAG_PROBLEM = Degraded(
    "StartupFailedWithoutFlags",
    "starts failed even with every suspect flag off: not a flag problem; the flags stay on "
    "and no flag is blamed until a pod becomes Ready, the spec changes or a retry is asked",
)


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Rollback:
    flag: str
    reason: str


def condition_of(
    *,
    degraded: Degraded | None,
    bisection: Bisection | None,
    note: str,
    states: Sequence[FlagState],
    policy: Policy,
) -> Condition:
    """The OptimizationsHealthy condition."""
    kind = "OptimizationsHealthy"
    if degraded is not None:
        return Condition(kind, "False", degraded.reason, degraded.message)
    if bisection is not None:
        return Condition(kind, "False", "Bisecting", trial_note(bisection))
    if note:
        return Condition(kind, "False", "StartsFailing", note)
    rolled = [s.name for s in states if s.state == "RolledBack"]
    if rolled:
        return Condition(
            kind,
            "False",
            "FlagsRolledBack",
            truncate(f"rolled back: {names(rolled)}; the other flags run"),
        )
    trial = [s.name for s in states if s.state == "Trial"]
    if trial:
        return Condition(
            kind, "Unknown", "Evaluating", f"waiting for Ready pods with {names(trial)}"
        )
    suffix = " (rollback Off)" if policy == "Off" else ""
    return Condition(kind, "True", "AllActive", f"{len(states)} flags active{suffix}")


def trial_note(bisection: Bisection) -> str:
    if bisection.confirming:
        return truncate(
            f"bisecting (step {bisection.step}, {bisection.mode}): confirming that "
            f"{names(bisection.suspects)} fails on top of {names(bisection.base)}"
        )
    return truncate(
        f"bisecting {names(bisection.suspects)} (step {bisection.step}, {bisection.mode}): "
        f"trying without {names(bisection.off)}"
    )


def blame_message(failure: StartResult) -> str:
    where = f"in phase {failure.phase}" if failure.phase else failure.kind
    return truncate(f"{where}: {failure.error}" if failure.error else where)


def names(flags: Sequence[str]) -> str:
    return ", ".join(flags) if flags else "none"
