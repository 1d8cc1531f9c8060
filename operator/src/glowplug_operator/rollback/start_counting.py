"""Counting starts: pod observations into the `Rollout` bookkeeping.

A start is one container start of a pod of a flag set. It failed when the init container ended
non-zero, the worker container ended, or the attempt is not Ready within the budget; it succeeded
when the pod is Ready. What was counted is remembered per pod uid, so `absorb` is idempotent:
absorbing the same pods again changes nothing, and a restart is never counted twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from glowplug_operator.rollback.observations import PodObservation, startup_deadline
from glowplug_operator.rollback.signatures import last_log_line
from glowplug_operator.rollback.state import (
    KEPT_POD_RECORDS,
    KEPT_SET_RECORDS,
    OUTCOME_ERROR_CHARS,
    RECENT_OUTCOMES,
    PodRecord,
    Rollout,
    SetRecord,
    StartKind,
    StartResult,
    truncate,
)
from glowplug_operator.timestamps import iso


def absorb(
    rollout: Rollout,
    pods: Sequence[PodObservation],
    *,
    budget_seconds: int,
    now: datetime,
) -> tuple[Rollout, tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]:
    """Count what is new in `pods` into `rollout`.

    Returns the new bookkeeping and, for the per-flag counters, the flag sets of each newly
    counted flag-caused failure and of each newly counted success.
    """
    seq = rollout.seq
    sets = {s.hash: s for s in rollout.sets}
    records = {p.uid: p for p in rollout.pods}
    failed_sets: list[tuple[str, ...]] = []
    ready_sets: list[tuple[str, ...]] = []
    ordered = sorted(pods, key=lambda p: (p.created or now, p.name, p.uid))
    for pod in ordered:
        if not pod.uid:
            continue
        record = records.get(pod.uid) or PodRecord(uid=pod.uid, hash=pod.flags_hash)
        ended = max(0, pod.failed_starts - record.failed)  # runs that ended: evidence
        timed_out = _timed_out(pod, record, budget_seconds, now)
        failed = pod.failed_starts + (1 if timed_out else 0)
        overdue = max(0, failed - record.failed) - ended  # the current attempt, past the budget
        outcomes: list[StartResult] = []
        for _ in range(ended):
            seq += 1
            outcomes.append(_failure(pod, seq, now))
        for _ in range(overdue):
            seq += 1
            outcomes.append(
                StartResult(
                    seq=seq,
                    at=iso(now),
                    kind="timeout",
                    error=f"not Ready within {budget_seconds}s",
                )
            )
        ready_attempt = record.ready_attempt
        if pod.ready and not pod.deleting and pod.failed_starts > ready_attempt:
            seq += 1
            ready_attempt = pod.failed_starts
            outcomes.append(StartResult(seq=seq, at=iso(now), kind="ready"))
        if not outcomes and pod.uid in records:
            continue
        records[pod.uid] = replace(
            record, failed=max(failed, record.failed), ready_attempt=ready_attempt, last_seq=seq
        )
        if outcomes:
            current = sets.get(pod.flags_hash) or SetRecord(hash=pod.flags_hash, flags=pod.flags)
            sets[pod.flags_hash] = _count(current, outcomes)
            for outcome in outcomes:
                if outcome.ok:
                    ready_sets.append(current.flags)
                elif outcome.kind != "oom":
                    failed_sets.append(current.flags)
    observed = {p.uid for p in pods}
    kept_pods = sorted(records.values(), key=lambda r: (r.uid not in observed, -r.last_seq))
    gone = [r for r in kept_pods if r.uid not in observed][:KEPT_POD_RECORDS]
    pod_records = tuple(
        sorted([r for r in kept_pods if r.uid in observed] + gone, key=lambda r: r.uid)
    )
    set_records = tuple(
        sorted(
            sorted(sets.values(), key=lambda s: -s.last_seq)[:KEPT_SET_RECORDS],
            key=lambda s: s.hash,
        )
    )
    new = replace(rollout, seq=seq, sets=set_records, pods=pod_records)
    return new, tuple(failed_sets), tuple(ready_sets)


def _timed_out(pod: PodObservation, record: PodRecord, budget_seconds: int, now: datetime) -> bool:
    """The current attempt has never been Ready and is past the budget (the startup probe
    would have killed it). An attempt that was Ready and then lost readiness is not a start."""
    deadline = startup_deadline(pod, budget_seconds)
    return deadline is not None and record.ready_attempt < pod.failed_starts and now > deadline


def _failure(pod: PodObservation, seq: int, now: datetime) -> StartResult:
    """A run that ended, with the evidence the pod shows: report, termination reason."""
    report = pod.report
    failure = pod.failure
    kind: StartKind = "oom" if pod.oom_killed else "failed"
    error = ""
    if report and report.error:
        error = f"{report.error.type}: {report.error.message}"
    elif failure and failure.terminated_reason:
        error = f"{failure.terminated_reason} (exit code {failure.exit_code})"
        # No report (a stock engine, a crash): its last log line is the evidence to quote.
        if line := last_log_line(failure.last_failure_message):
            error += f": {line}"
    return StartResult(
        seq=seq,
        at=iso(now),
        kind=kind,
        flag=report.flag if report else None,
        phase=report.phase if report else None,
        error=truncate(error, OUTCOME_ERROR_CHARS),
    )


def _count(record: SetRecord, outcomes: Sequence[StartResult]) -> SetRecord:
    failures = sum(1 for o in outcomes if not o.ok)
    successes = len(outcomes) - failures
    return replace(
        record,
        starts=record.starts + len(outcomes),
        failures=record.failures + failures,
        successes=record.successes + successes,
        reached_ready=record.reached_ready or successes > 0,
        last_seq=outcomes[-1].seq,
        recent=(record.recent + tuple(outcomes))[-RECENT_OUTCOMES:],
    )
