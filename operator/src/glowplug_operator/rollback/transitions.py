"""How the flag states move: following the spec, retries, trials, rollbacks, promotion.

Each step of `rollback.decide` is a function from one `Work` (the decision so far, immutable) to
the next, so the order of the changes is the order of the calls in `decide`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from glowplug_operator.rollback.observations import PodObservation
from glowplug_operator.rollback.outputs import Degraded, Event, Rollback, trial_note
from glowplug_operator.rollback.state import Bisection, FlagState, Rollout, truncate
from glowplug_operator.timestamps import iso


@dataclass(frozen=True)
class Work:
    """The decision so far: flag states by name, the kept rollout, what to tell the user."""

    rollout: Rollout
    states: Mapping[str, FlagState] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    rollbacks: tuple[Rollback, ...] = ()
    degraded: Degraded | None = None
    note: str = ""  # what is going on, for the condition message

    def with_states(self, changed: Mapping[str, FlagState]) -> Work:
        return replace(self, states={**self.states, **changed}) if changed else self

    def with_rollout(self, **changes: Any) -> Work:
        return replace(self, rollout=replace(self.rollout, **changes))

    def with_events(self, *events: Event) -> Work:
        return replace(self, events=(*self.events, *events))


def effective_flags(work: Work, order: Sequence[str]) -> list[str]:
    return [name for name in order if work.states[name].on]


def follow_spec(
    work: Work,
    order: Sequence[str],
    prints: Mapping[str, str],
    flag_states: Sequence[FlagState],
    now: datetime,
) -> Work:
    """New spec flags enter as Trial; removed ones disappear; a changed definition retries."""
    old = {s.name: s for s in flag_states}
    known = work.rollout.fingerprints
    states: dict[str, FlagState] = {}
    reset: list[str] = []
    added: list[str] = []
    for name in order:
        state = old.get(name)
        if state is None:
            added.append(name)
            states[name] = FlagState(name, "Trial", "Added", "new in the spec", 0, 0, iso(now))
        elif name in known and known[name] != prints[name]:
            states[name] = FlagState(
                name, "Trial", "SpecChanged", "its definition changed in the spec", 0, 0, iso(now)
            )
            reset.append(name)
        else:
            states[name] = state
    work = replace(work, states=states)
    gone = set(old) - set(order)
    bisection = work.rollout.bisection
    if bisection and (added or (set(reset) | gone) & set(bisection.origin)):
        work = end_bisection(work, now)
    work = forget(work, reset + added)
    return work.with_rollout(fingerprints=dict(prints))


def forget(work: Work, flags: Sequence[str]) -> Work:
    """Drop the history of flag sets that contain any of `flags` (a fresh trial for them)."""
    if not flags:
        return work
    drop = set(flags)
    sets = tuple(s for s in work.rollout.sets if not drop & set(s.flags))
    return work.with_rollout(sets=sets, not_flag_problem=False)


def honour_retry(work: Work, order: Sequence[str], token: str | None, now: datetime) -> Work:
    """glowplug.dev/retry-optimizations: "all" or names; each distinct value is honoured once."""
    token = (token or "").strip()
    if not token or token == work.rollout.retry_honoured:
        return work
    names = set(order) if token == "all" else {n.strip() for n in token.split(",")}
    retried = [
        n for n in order if n in names and work.states[n].state in ("RolledBack", "Disabled")
    ]
    if work.rollout.bisection and retried:
        work = end_bisection(work, now)
    work = work.with_states(
        {
            name: replace(
                work.states[name].moved("Trial", "RetryRequested", "a retry was requested", now),
                failures=0,
                successes=0,
            )
            for name in retried
        }
    )
    work = work.with_events(
        *(Event("Normal", "RetryingOptimization", f"retrying flag {name}") for name in retried)
    )
    work = forget(work, retried)
    return work.with_rollout(retry_honoured=token, changes=())


def count_per_flag(
    work: Work,
    failed_sets: Sequence[Sequence[str]],
    ready_sets: Sequence[Sequence[str]],
) -> Work:
    """Each flag's failures and successes, from the starts just counted."""
    states = dict(work.states)
    for flags in failed_sets:
        for name in flags:
            if name in states:
                states[name] = replace(states[name], failures=states[name].failures + 1)
    for flags in ready_sets:
        for name in flags:
            if name in states:
                states[name] = replace(states[name], successes=states[name].successes + 1)
    return replace(work, states=states)


def apply_trial(work: Work, bisection: Bisection, now: datetime) -> Work:
    """Make the flags of `origin` run exactly the trial set.

    Flags off for the trial are Disabled/Bisecting (not RolledBack); suspects on are
    Trial/Bisecting; the base keeps its state.
    """
    message = trial_note(bisection)
    trial = bisection.trial
    changed: dict[str, FlagState] = {}
    for name in bisection.origin:
        s = work.states.get(name)
        if s is None or s.state == "RolledBack":
            continue
        if name not in trial:
            changed[name] = s.moved("Disabled", "Bisecting", message, now)
        elif name in bisection.suspects or s.state == "Disabled":
            changed[name] = s.moved("Trial", "Bisecting", message, now)
    return work.with_states(changed)


def start_trial(work: Work, bisection: Bisection, now: datetime) -> Work:
    """`bisection` becomes the ongoing one and its flags run its trial set."""
    return apply_trial(work.with_rollout(bisection=bisection), bisection, now)


def end_bisection(work: Work, now: datetime) -> Work:
    """Flags switched off only for a trial come back as Trial."""
    back = {
        name: s.moved("Trial", "BisectionEnded", "back on after bisection", now)
        for name, s in work.states.items()
        if s.state == "Disabled" or s.reason == "Bisecting"
    }
    return work.with_states(back).with_rollout(bisection=None)


def roll_back(work: Work, name: str, reason: str, message: str, now: datetime) -> Work:
    if work.rollout.bisection is not None:
        work = end_bisection(work, now)
    work = work.with_states({name: work.states[name].moved("RolledBack", reason, message, now)})
    work = replace(work, rollbacks=(*work.rollbacks, Rollback(name, reason)))
    return work.with_events(
        Event("Warning", "OptimizationRolledBack", truncate(f"rolled back flag {name}: {message}"))
    )


def promote(
    work: Work,
    effective: Sequence[str],
    pods: Sequence[PodObservation],
    digest: str,
    now: datetime,
) -> Work:
    """Pods of the effective set are Ready: its Trial flags become Active (not mid-bisection)."""
    if work.rollout.bisection is not None:
        return work
    if not any(p.ready and not p.deleting and p.flags_hash == digest for p in pods):
        return work
    promoted = [name for name in effective if work.states[name].state == "Trial"]
    if not promoted:
        return work
    work = work.with_states(
        {
            name: work.states[name].moved("Active", "StartupSucceeded", "pods became Ready", now)
            for name in promoted
        }
    )
    return work.with_events(
        Event(
            "Normal",
            "OptimizationsActive",
            truncate(f"pods became Ready with {', '.join(promoted)}: active"),
        )
    )


def degraded_event(work: Work) -> Work:
    """A Warning Event when the Degraded reason changes to a new one; the reason is kept."""
    reason = work.degraded.reason if work.degraded else None
    if reason == work.rollout.degraded:
        return work
    if work.degraded is not None:
        work = work.with_events(Event("Warning", work.degraded.reason, work.degraded.message))
    return work.with_rollout(degraded=reason)
