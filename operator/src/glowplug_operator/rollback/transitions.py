"""How the flag states move: following the spec, retries, trials, rollbacks, promotion.

Helpers of `rollback.decide`, working on a `Draft` (the decision being built).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from glowplug_operator.rollback.observations import PodObservation
from glowplug_operator.rollback.outputs import Degraded, Event, Rollback, trial_note
from glowplug_operator.rollback.state import Bisection, FlagState, Rollout, truncate
from glowplug_operator.timestamps import iso


@dataclass
class Draft:
    """The decision being built (private, mutable while deciding)."""

    states: dict[str, FlagState]
    rollout: Rollout
    events: list[Event]
    rollbacks: list[Rollback]
    degraded: Degraded | None = None
    note: str = ""  # what is going on, for the condition message


def effective_flags(work: Draft, order: Sequence[str]) -> list[str]:
    return [name for name in order if work.states[name].on]


def follow_spec(
    work: Draft,
    order: Sequence[str],
    prints: Mapping[str, str],
    flag_states: Sequence[FlagState],
    now: datetime,
) -> None:
    """New spec flags enter as Trial; removed ones disappear; a changed definition retries."""
    old = {s.name: s for s in flag_states}
    known = work.rollout.fingerprints
    reset: list[str] = []
    added: list[str] = []
    for name in order:
        state = old.get(name)
        if state is None:
            added.append(name)
            work.states[name] = FlagState(name, "Trial", "Added", "new in the spec", 0, 0, iso(now))
        elif name in known and known[name] != prints[name]:
            work.states[name] = FlagState(
                name, "Trial", "SpecChanged", "its definition changed in the spec", 0, 0, iso(now)
            )
            reset.append(name)
        else:
            work.states[name] = state
    gone = set(old) - set(order)
    bisection = work.rollout.bisection
    if bisection and (added or (set(reset) | gone) & set(bisection.origin)):
        end_bisection(work, now)
    forget(work, reset + added)
    work.rollout = replace(work.rollout, fingerprints=dict(prints))


def forget(work: Draft, flags: Sequence[str]) -> None:
    """Drop the history of flag sets that contain any of `flags` (a fresh trial for them)."""
    if flags:
        drop = set(flags)
        sets = tuple(s for s in work.rollout.sets if not drop & set(s.flags))
        work.rollout = replace(work.rollout, sets=sets, not_flag_problem=False)


def honour_retry(work: Draft, order: Sequence[str], token: str | None, now: datetime) -> None:
    """glowplug.dev/retry-optimizations: "all" or names; each distinct value is honoured once."""
    token = (token or "").strip()
    if not token or token == work.rollout.retry_honoured:
        return
    names = set(order) if token == "all" else {n.strip() for n in token.split(",")}
    retried = [
        n for n in order if n in names and work.states[n].state in ("RolledBack", "Disabled")
    ]
    if work.rollout.bisection and retried:
        end_bisection(work, now)
    for name in retried:
        work.states[name] = replace(
            work.states[name].moved("Trial", "RetryRequested", "a retry was requested", now),
            failures=0,
            successes=0,
        )
        work.events.append(Event("Normal", "RetryingOptimization", f"retrying flag {name}"))
    forget(work, retried)
    work.rollout = replace(work.rollout, retry_honoured=token, changes=())


def count_per_flag(
    work: Draft,
    failed_sets: Sequence[Sequence[str]],
    ready_sets: Sequence[Sequence[str]],
) -> None:
    for flags in failed_sets:
        for name in flags:
            if name in work.states:
                s = work.states[name]
                work.states[name] = replace(s, failures=s.failures + 1)
    for flags in ready_sets:
        for name in flags:
            if name in work.states:
                s = work.states[name]
                work.states[name] = replace(s, successes=s.successes + 1)


def apply_trial(work: Draft, bisection: Bisection, now: datetime) -> None:
    """Make the flags of `origin` run exactly the trial set.

    Flags off for the trial are Disabled/Bisecting (not RolledBack); suspects on are
    Trial/Bisecting; the base keeps its state.
    """
    message = trial_note(bisection)
    trial = bisection.trial
    for name in bisection.origin:
        s = work.states.get(name)
        if s is None or s.state == "RolledBack":
            continue
        if name not in trial:
            work.states[name] = s.moved("Disabled", "Bisecting", message, now)
        elif name in bisection.suspects or s.state == "Disabled":
            work.states[name] = s.moved("Trial", "Bisecting", message, now)


def end_bisection(work: Draft, now: datetime) -> None:
    """Flags switched off only for a trial come back as Trial."""
    for name, s in list(work.states.items()):
        if s.state == "Disabled" or s.reason == "Bisecting":
            work.states[name] = s.moved("Trial", "BisectionEnded", "back on after bisection", now)
    work.rollout = replace(work.rollout, bisection=None)


def roll_back(work: Draft, name: str, reason: str, message: str, now: datetime) -> None:
    if work.rollout.bisection is not None:
        end_bisection(work, now)
    work.states[name] = work.states[name].moved("RolledBack", reason, message, now)
    work.rollbacks.append(Rollback(name, reason))
    work.events.append(
        Event("Warning", "OptimizationRolledBack", truncate(f"rolled back flag {name}: {message}"))
    )


def promote(
    work: Draft,
    effective: Sequence[str],
    pods: Sequence[PodObservation],
    digest: str,
    now: datetime,
) -> None:
    """Pods of the effective set are Ready: its Trial flags become Active (not mid-bisection)."""
    if work.rollout.bisection is not None:
        return
    if not any(p.ready and not p.deleting and p.flags_hash == digest for p in pods):
        return
    promoted = [name for name in effective if work.states[name].state == "Trial"]
    for name in promoted:
        s = work.states[name]
        work.states[name] = s.moved("Active", "StartupSucceeded", "pods became Ready", now)
    if promoted:
        work.events.append(
            Event(
                "Normal",
                "OptimizationsActive",
                truncate(f"pods became Ready with {', '.join(promoted)}: active"),
            )
        )


def degraded_event(work: Draft) -> None:
    reason = work.degraded.reason if work.degraded else None
    if reason != work.rollout.degraded:
        if work.degraded is not None:
            work.events.append(Event("Warning", work.degraded.reason, work.degraded.message))
        work.rollout = replace(work.rollout, degraded=reason)
