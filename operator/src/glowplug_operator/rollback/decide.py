"""The per-flag rollback decision: observations and stored state in, a decision out.

Pure and idempotent: no API calls, no clock (`now` is an argument), no globals. Deciding twice on
the same input gives the same decision, and deciding on the state a decision returned, with the
same pods, changes nothing and emits no event. The algorithm, every threshold and what the user
sees are documented in docs/rollback.md.

The builders render `Decision.effective_flags`, `Decision.flags_hash` and the trial token
`Decision.restart_nonce` onto the pod template (`contract.FLAGS_ANNOTATION`, `FLAGS_HASH_LABEL`,
`TRIAL_ANNOTATION`); the reconciler writes `flag_states` / `rollout` to status.optimizations /
status.rollout in ONE patch (they must stay consistent with each other).

`decide` is a pipeline of steps, each from one immutable `transitions.Work` to the next: the
order of the changes is the order of the calls in `decide`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from glowplug_operator.contract import flag_set_hash
from glowplug_operator.rollback.bisection import Verdict, judge_trial, new_bisection, next_step
from glowplug_operator.rollback.classify import not_a_flag_problem, same_failure
from glowplug_operator.rollback.observations import DeploymentProgress, PodObservation
from glowplug_operator.rollback.outputs import (
    NOT_A_FLAG_PROBLEM,
    Condition,
    Degraded,
    Event,
    Policy,
    Rollback,
    blame_message,
    condition_of,
    names,
    trial_note,
)
from glowplug_operator.rollback.reports import phase_of_flag
from glowplug_operator.rollback.start_counting import absorb
from glowplug_operator.rollback.state import (
    Bisection,
    FlagState,
    Rollout,
    SetRecord,
    StartResult,
    truncate,
)
from glowplug_operator.rollback.transitions import (
    Work,
    count_per_flag,
    degraded_event,
    effective_flags,
    end_bisection,
    follow_spec,
    honour_retry,
    promote,
    roll_back,
    start_trial,
)
from glowplug_operator.timestamps import iso, parse_time

CHURN_BUDGET_CHANGES = 8  # template changes allowed ...
CHURN_WINDOW = timedelta(minutes=30)  # ... within this window
INTERMITTENT_FAILURES = 2  # failed starts of a set that reached Ready ...
INTERMITTENT_WINDOW = timedelta(minutes=60)  # ... within this window (and the last 10 starts)


@dataclass(frozen=True)
class Decision:
    effective_flags: tuple[str, ...]
    flags_hash: str
    restart_nonce: str | None
    flag_states: tuple[FlagState, ...]
    rollout: Rollout
    condition: Condition
    degraded: Degraded | None
    events: tuple[Event, ...]
    rollbacks: tuple[Rollback, ...]
    template_changed: bool

    def status_patch(self) -> dict[str, Any]:
        """The status fields this decision owns, to be written in ONE patch (the condition and
        Degraded go into status.conditions, merged by `status.py`)."""
        return {
            "optimizations": [s.to_status() for s in self.flag_states],
            "rolledBack": sum(1 for s in self.flag_states if s.state == "RolledBack"),
            "effectiveOptimizations": list(self.effective_flags),
            "rollout": self.rollout.to_status(),
        }


def flag_states_from_status(raw: Any) -> tuple[FlagState, ...]:
    """status.optimizations as stored; entries that do not parse are dropped."""
    if not isinstance(raw, list):
        return ()
    parsed = (FlagState.from_status(item) for item in raw if isinstance(item, Mapping))
    return tuple(s for s in parsed if s is not None)


def decide(
    *,
    spec_flags: Sequence[str],
    policy: Policy,
    flag_states: Sequence[FlagState],
    rollout: Rollout,
    pods: Sequence[PodObservation],
    progress: DeploymentProgress | None,
    budget_seconds: int,
    retry_token: str | None,
    now: datetime,
    fingerprints: Mapping[str, str] | None = None,
) -> Decision:
    """Decide which flags the pod template runs now, and what status says about them.

    `spec_flags`: the flag names in spec order. `fingerprints` (optional): flag name -> hash of
    its definition (`contract.flag_fingerprint`); a changed fingerprint brings a rolled-back
    flag back to Trial. `retry_token`: the glowplug.dev/retry-optimizations annotation.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    order = list(dict.fromkeys(spec_flags))
    prints = {name: (fingerprints or {}).get(name, "") for name in order}
    # 1. The spec and a retry request move flag states; what ran before is `before`.
    work = follow_spec(Work(rollout=rollout), order, prints, flag_states, now)
    work = honour_retry(work, order, retry_token, now)
    before = effective_flags(work, order)
    # 2. Count the starts the pods show, once each.
    absorbed, failed_sets, ready_sets = absorb(
        work.rollout, pods, budget_seconds=budget_seconds, now=now
    )
    work = count_per_flag(replace(work, rollout=absorbed), failed_sets, ready_sets)
    digest = flag_set_hash(before, prints)
    current = [p for p in pods if p.flags_hash == digest and not p.deleting]
    record = absorbed.record(digest)
    trial = [o for o in (record.recent if record else ()) if o.seq > absorbed.trial_seq]
    if ready_sets and work.rollout.not_flag_problem:
        # The failures seen meanwhile were not the flags' fault: start counting afresh.
        work = work.with_rollout(not_flag_problem=False, trial_seq=absorbed.seq)
        trial = []
    # 3. Judge the starts: blocked, report only, or roll back / bisect.
    kept = work
    blocked = _blocked(current, progress)
    if blocked is not None:
        work = replace(work, degraded=blocked)
    elif policy == "Off":
        work = _report_only(work, before, trial, now)
    else:
        work = _automatic(work, order, before, trial, record, now)
    # 4. The churn budget: too many template changes lately keep the flags as they were.
    work, effective, nonce, changed = _within_churn_budget(work, kept, order, before, trial, now)
    # 5. Record the rendered template; promote Trial flags of a set that reached Ready.
    digest_now = flag_set_hash(effective, prints)
    work = _keep_recent_of(work, digest_now)
    work = promote(work, effective, pods, digest_now, now)
    if work.degraded is None and work.rollout.not_flag_problem and policy == "Automatic":
        work = replace(work, degraded=NOT_A_FLAG_PROBLEM)
    work = degraded_event(work)
    final = tuple(work.states[name] for name in order)
    return Decision(
        effective_flags=tuple(effective),
        flags_hash=digest_now,
        restart_nonce=nonce,
        flag_states=final,
        rollout=work.rollout,
        condition=condition_of(
            degraded=work.degraded,
            bisection=work.rollout.bisection,
            note=work.note,
            states=final,
            policy=policy,
        ),
        degraded=work.degraded,
        events=work.events,
        rollbacks=work.rollbacks,
        template_changed=changed,
    )


def _within_churn_budget(
    work: Work,
    kept: Work,
    order: Sequence[str],
    before: Sequence[str],
    trial: Sequence[StartResult],
    now: datetime,
) -> tuple[Work, list[str], str | None, bool]:
    """The judged `work` when the churn window has room for its template change, else `kept`
    (the work before judging) marked RollbackBudgetExhausted. Returns the work with the
    rendered template recorded, the effective flags, the trial token and whether the template
    changes."""
    effective = effective_flags(work, order)
    nonce = _nonce(work, trial)
    previous = work.rollout.rendered if work.rollout.rendered is not None else tuple(before)
    changed = tuple(effective) != previous or nonce != work.rollout.nonce
    recent_changes = tuple(
        c
        for c in work.rollout.changes
        if (t := parse_time(c)) is not None and now - t < CHURN_WINDOW
    )
    own_change = tuple(effective) != tuple(before) or nonce != work.rollout.nonce
    if own_change and len(recent_changes) >= CHURN_BUDGET_CHANGES:
        work = replace(
            kept,
            note=work.note,
            degraded=Degraded(
                "RollbackBudgetExhausted",
                f"{len(recent_changes)} pod template changes in the last "
                f"{int(CHURN_WINDOW.total_seconds() // 60)} minutes; holding the flags as they "
                "are until the window has room",
            ),
        )
        effective, nonce = effective_flags(work, order), work.rollout.nonce
        changed = tuple(effective) != previous  # only what the user changed (spec, retry)
    if changed:
        recent_changes = (*recent_changes, iso(now))
    if tuple(effective) != previous:
        work = work.with_rollout(trial_seq=work.rollout.seq)
    work = work.with_rollout(changes=recent_changes, rendered=tuple(effective), nonce=nonce)
    return work, effective, nonce, changed


def _keep_recent_of(work: Work, digest: str) -> Work:
    """Only the set in force is judged on its recent starts: keep status.rollout small."""
    sets = tuple(
        s if s.hash == digest or not s.recent else replace(s, recent=()) for s in work.rollout.sets
    )
    return work.with_rollout(sets=sets)


def _blocked(
    current: Sequence[PodObservation], progress: DeploymentProgress | None
) -> Degraded | None:
    """Problems no flag can cause: no template change, no blame."""
    for pod in current:
        reason = pod.blocked_reason
        if reason in ("CreateContainerConfigError", "CreateContainerError"):
            return Degraded("ContainerConfigError", f"pod {pod.name}: {reason}")
        if reason is not None:
            return Degraded("ImagePullFailed", f"pod {pod.name}: {reason}")
    if progress and progress.refused and not current:
        return Degraded("PodsRefused", truncate(progress.refused))
    if progress and progress.stuck and not any(p.scheduled for p in current):
        return Degraded("RolloutStuck", truncate(progress.message or "progress deadline exceeded"))
    return None


def _report_only(
    work: Work, flags: Sequence[str], trial: Sequence[StartResult], now: datetime
) -> Work:
    """policy Off: end any bisection (its flags come back), blame in words only."""
    if work.rollout.bisection:
        return end_bisection(work, now)  # the flags come back: a new trial, nothing to judge yet
    failures = [o for o in trial if not o.ok and o.kind != "oom"]
    if not failures or trial[-1].ok:
        return work
    if (own := not_a_flag_problem(failures[-1])) is not None:
        return replace(work, degraded=own)  # the ModelServer's problem: no flag is failing
    suspects = _evidence(flags, failures[-1])
    if len(suspects) == 1:
        name = suspects[0]
        state = work.states[name]
        if state.reason != "WouldRollBack":
            blame = blame_message(failures[-1])
            work = work.with_states(
                {name: state.moved(state.state, "WouldRollBack", blame, now)}
            ).with_events(
                Event(
                    "Warning",
                    "OptimizationFailing",
                    f"flag {name} failed a start ({blame}); rollback is Off, the flag stays on",
                )
            )
    return replace(
        work, note=f"starts are failing; rollback is Off ({len(failures)} failed starts)"
    )


def _automatic(
    work: Work,
    order: Sequence[str],
    flags: Sequence[str],
    trial: Sequence[StartResult],
    record: SetRecord | None,
    now: datetime,
) -> Work:
    """policy Automatic: roll back the flag the evidence names, else bisect."""
    failures = [o for o in trial if not o.ok]
    if failures and (own := not_a_flag_problem(failures[-1])) is not None:
        # The ModelServer's own problem (credentials, not found, no space, configuration,
        # corrupt weights): no flag is blamed, the template stays, a search in progress waits.
        return replace(work, degraded=own)
    trial = [o for o in trial if o.ok or not_a_flag_problem(o) is None]  # never judged
    failures = [o for o in trial if not o.ok]
    flag_failures = [o for o in failures if o.kind != "oom"]
    latest = failures[-1] if failures else None
    if latest is not None and latest.kind == "oom":
        if latest.flag and latest.flag in flags:
            return roll_back(work, latest.flag, "StartupFailed", blame_message(latest), now)
        return replace(
            work,
            degraded=Degraded(
                "OutOfMemory",
                f"the worker was OOMKilled with flags {names(flags)}; no flag is to blame",
            ),
        )
    if latest is not None and (restored := _restore_if_persisting(work, flags, latest, now)):
        return restored
    if latest is not None:
        suspects = _evidence(flags, latest)
        # Phase evidence alone blames no flag once the failure has been seen without it.
        if len(suspects) == 1 and (latest.flag == suspects[0] or not work.rollout.not_flag_problem):
            reason = "StartupFailed" if latest.flag == suspects[0] else "FailedInPhase"
            return roll_back(work, suspects[0], reason, blame_message(latest), now)
    bisection = work.rollout.bisection
    if bisection is not None:
        return _continue_bisection(work, bisection, trial, now)
    if not flag_failures:
        return work
    if record is not None and record.reached_ready:
        window = [
            o
            for o in flag_failures
            if (t := parse_time(o.at)) is not None and now - t <= INTERMITTENT_WINDOW
        ]
        if len(window) < INTERMITTENT_FAILURES:
            return work
        mode: Literal["Failing", "Intermittent"] = "Intermittent"
    else:
        mode = "Failing"
    if work.rollout.not_flag_problem:
        return work
    if not flags:
        return replace(
            work,
            degraded=Degraded(
                "StartupFailedWithoutFlags",
                f"starts fail with flags {names(flags)} ({blame_message(flag_failures[-1])}); "
                "this is not a flag problem",
            ),
        )
    phase_suspects = _evidence(flags, flag_failures[-1])
    suspects = phase_suspects or _unproven(work, flags, mode)
    bisection = new_bisection(mode, tuple(flags), tuple(suspects), now)
    return start_trial(work, bisection, now).with_events(
        Event(
            "Warning",
            "BisectingOptimizations",
            f"starts fail without evidence ({blame_message(flag_failures[-1])}); bisecting "
            f"{names(bisection.suspects)}: trying without {names(bisection.off)}",
        )
    )


def _restore_if_persisting(
    work: Work, flags: Sequence[str], latest: StartResult, now: datetime
) -> Work | None:
    """A flag rolled back on phase evidence alone (FailedInPhase) whose failure came back, the
    same phase and error, with the flag off: the flag was not the cause. It comes back (as
    Trial), and the failure is marked as not a flag problem until a pod becomes Ready."""
    restore = [
        name
        for name, state in work.states.items()
        if name not in flags
        and state.state == "RolledBack"
        and state.reason == "FailedInPhase"
        and same_failure(state.message, latest)
    ]
    if not restore:
        return None
    message = f"the same failure came back with the flag off ({blame_message(latest)})"
    work = work.with_states(
        {
            name: work.states[name].moved("Trial", "FailurePersisted", message, now)
            for name in restore
        }
    ).with_rollout(not_flag_problem=True)
    work = work.with_events(
        *(
            Event("Normal", "OptimizationRestored", truncate(f"restored flag {name}: {message}"))
            for name in restore
        )
    )
    return replace(work, degraded=NOT_A_FLAG_PROBLEM)


def _continue_bisection(
    work: Work, bisection: Bisection, trial: Sequence[StartResult], now: datetime
) -> Work:
    verdict = judge_trial(bisection, trial)
    if verdict is Verdict.PENDING:
        return replace(work, note=trial_note(bisection))
    step = next_step(bisection, verdict, now)
    if step.blame is not None:
        last_failure = next((o for o in reversed(trial) if not o.ok), None)
        return roll_back(
            end_bisection(work, now),
            step.blame,
            "Bisected" if bisection.mode == "Failing" else "IntermittentFailures",
            f"starts fail with it on and succeed without it (bisection, {bisection.step} trials)"
            + (f"; last error {last_failure.error}" if last_failure and last_failure.error else ""),
            now,
        )
    if step.inconclusive:
        return end_bisection(work, now).with_events(
            Event(
                "Warning",
                "BisectionInconclusive",
                f"{names(bisection.suspects)} passed again on top of the other flags; the earlier "
                "failures were not reproduced and no flag is blamed",
            )
        )
    if step.bisection is None:
        work = end_bisection(work, now).with_rollout(not_flag_problem=True)
        return replace(work, degraded=NOT_A_FLAG_PROBLEM)
    note = trial_note(step.bisection)
    work = replace(start_trial(work, step.bisection, now), note=note)
    return work.with_events(Event("Normal", "BisectionStep", note))


def _evidence(flags: Sequence[str], failure: StartResult) -> list[str]:
    """Flags a failure report points at: its own `flag`, else the flags of its failed phase."""
    if failure.flag and failure.flag in flags:
        return [failure.flag]
    if failure.phase:
        return [f for f in flags if phase_of_flag(f) == failure.phase]
    return []


def _unproven(work: Work, flags: Sequence[str], mode: str) -> list[str]:
    """Flags not yet seen in a flag set that reached Ready (all of them if every one was)."""
    if mode == "Intermittent":
        return list(flags)
    proven = {f for s in work.rollout.sets if s.reached_ready for f in s.flags}
    unproven = [f for f in flags if f not in proven]
    return unproven or list(flags)


def _nonce(work: Work, trial: Sequence[StartResult]) -> str | None:
    """The trial token: an intermittent trial needs several starts, a new token after each
    Ready start."""
    bisection = work.rollout.bisection
    if bisection is None or bisection.mode != "Intermittent":
        return None
    if work.rollout.rendered is not None and set(work.rollout.rendered) != bisection.trial:
        return f"{bisection.step}-0"  # a new trial starts with fresh pods anyway
    successes = sum(1 for o in trial if o.ok)
    return f"{bisection.step}-{successes}"
