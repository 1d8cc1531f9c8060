"""Why the pods do not start, when no flag can be the cause: the scheduler finds no node, the
cache's claim is not bound, the image cannot be pulled, the API server refuses the pods (a
ResourceQuota), the container cannot be configured, the rollout is past its deadline.

Pure: observations in, a `Degraded` (reason and a message naming the cause) or None out. The
decision (`decide.py`) holds the flags as they are while a blocker stands: no flag is blamed, no
start is counted (the startup budget runs only from the worker container's start,
`observations.startup_deadline`), a bisection waits. Read from the status of the pods, the claim
and the Deployment, which the operator watches anyway; no Events are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from glowplug_operator.rollback.claims import ClaimObservation
from glowplug_operator.rollback.observations import (
    CONFIG_REASONS,
    DeploymentProgress,
    PodObservation,
)
from glowplug_operator.rollback.outputs import Degraded, names
from glowplug_operator.rollback.state import truncate

# A claim waiting for its provisioner (or for a pod to be scheduled, WaitForFirstConsumer) is
# normal for this long; past it, the wait is reported.
CLAIM_GRACE = timedelta(seconds=60)
# A pod that replaces one being stopped (maxUnavailable > 0) waits for the GPU that pod holds:
# it is not reported until the stopped pod is past its grace (deletionTimestamp) and gone for
# this long (the scheduler retries an unschedulable pod within 10 s of a pod's deletion).
ROOM_WAIT = timedelta(seconds=30)
# The ReplicaSet controller retries a refused pod creation within seconds, and the scheduler a
# pod it failed on (SchedulerError): a refusal or failure that stands this long is the cluster's
# answer (a ResourceQuota, an admission policy, a missing StorageClass); a shorter one is a
# passing fault (an API server before its authorizer has synced, a bind while etcd restarts).
REFUSAL_GRACE = timedelta(seconds=10)
MESSAGE_CHARS = 1024  # a condition's message; the scheduler's own can be long
ROLLOUT_HINT = (
    "a trial with spec.rollout.maxSurge 1 needs room for one more pod; on a full cluster set "
    "spec.rollout to {maxSurge: 0, maxUnavailable: 1} to replace pods in place"
)


def claim_message(claim: ClaimObservation) -> str:
    """What holds an unbound claim, in words, with its storage class."""
    head = f"claim {claim.name} is {claim.phase}"
    cls = claim.storage_class
    match claim.class_state:
        case "missing":
            return f"{head}: storage class {cls} does not exist"
        case "unnamed":
            return (
                f"{head}: it names no storage class and the cluster has no default one, so no "
                "provisioner creates its volume; set spec.cache.storageClassName or create a "
                "PersistentVolume for it"
            )
        case "manual":
            return (
                f"{head}: storage class {cls} has no provisioner (kubernetes.io/no-provisioner); "
                "it binds only to a PersistentVolume created for it"
            )
        case "first-consumer":
            return f"{head}: waiting for first consumer (storage class {cls}, WaitForFirstConsumer)"
        case "provisioner":
            return f"{head}: waiting for provisioner {claim.provisioner} (storage class {cls})"
        case _:
            return f"{head} (storage class {cls or 'unset'})"


def making_room(leaving: Sequence[PodObservation], left_at: datetime | None, now: datetime) -> bool:
    """Pods of the ModelServer are being stopped within their grace, or one was gone less than
    `ROOM_WAIT` ago: what they hold is about to be free for the pods that wait for it."""
    if left_at is not None and now - left_at < ROOM_WAIT:
        return True
    return any(p.gone_by is not None and now < p.gone_by + ROOM_WAIT for p in leaving)


def _claim_blocks(
    claim: ClaimObservation | None, unschedulable: bool, now: datetime
) -> ClaimObservation | None:
    if claim is None or claim.bound:
        return None
    if claim.class_state in ("missing", "unnamed", "manual") or unschedulable:
        return claim
    if claim.created is not None and now - claim.created > CLAIM_GRACE:
        return claim
    return None


def refusal_reported_at(progress: DeploymentProgress | None) -> datetime | None:
    """When a refusal of the pods that still stands gets reported (`REFUSAL_GRACE`)."""
    if progress is None or not progress.replica_failure or progress.replica_failure_since is None:
        return None
    return progress.replica_failure_since + REFUSAL_GRACE


def _refused_for_long(progress: DeploymentProgress, now: datetime) -> bool:
    reported_at = refusal_reported_at(progress)
    return reported_at is None or now >= reported_at


def _failed_for_long(pod: PodObservation, now: datetime) -> bool:
    since = pod.scheduler_error_since
    return since is None or now - since >= REFUSAL_GRACE


def blocker(
    current: Sequence[PodObservation],
    others: Sequence[PodObservation],
    progress: DeploymentProgress | None,
    claim: ClaimObservation | None,
    *,
    trial_flags: Sequence[str] | None,
    now: datetime,
    leaving: Sequence[PodObservation] = (),
    left_at: datetime | None = None,
) -> Degraded | None:
    """The first problem that keeps the pods of the flag set in force (`current`) from starting.

    `others`: the pods of earlier flag sets still running (a rolling update waits for room).
    `trial_flags`: the flag set when it runs as a trial (a new flag or a bisection step), else
    None; a trial that cannot be scheduled says so, and which spec.rollout would fit.
    `leaving`: the ModelServer's pods being deleted; `left_at`: when one of its pods was last
    gone. While they make room (`making_room`), an unschedulable pod is not reported.
    """
    for pod in current:
        reason = pod.blocked_reason
        if reason is None:
            continue
        detail = f"pod {pod.name}: {reason}" + (
            f": {pod.waiting_message}" if pod.waiting_message else ""
        )
        if reason in CONFIG_REASONS:
            return Degraded("ContainerConfigError", truncate(detail, MESSAGE_CHARS))
        return Degraded("ImagePullFailed", truncate(detail, MESSAGE_CHARS))
    waiting_for_room = making_room(leaving, left_at, now)
    stuck = [
        p
        for p in current
        if p.unschedulable and not p.scheduled and not waiting_for_room and _failed_for_long(p, now)
    ]
    if (held := _claim_blocks(claim, bool(stuck), now)) is not None:
        message = claim_message(held)
        if stuck:
            message += f"; pod {stuck[0].name}: {stuck[0].unschedulable}"
        return Degraded("ClaimPending", truncate(message, MESSAGE_CHARS))
    if stuck:
        pod = stuck[0]
        scheduler = f"pod {pod.name} cannot be scheduled: {pod.unschedulable}"
        if trial_flags is not None and others:
            return Degraded(
                "TrialUnschedulable",
                truncate(
                    f"the trial of flags {names(trial_flags)} cannot be scheduled ({scheduler}); "
                    f"no flag is blamed and the trial waits. {ROLLOUT_HINT}",
                    MESSAGE_CHARS,
                ),
            )
        return Degraded("Unschedulable", truncate(scheduler, MESSAGE_CHARS))
    if progress and progress.replica_failure and _refused_for_long(progress, now):
        return Degraded(
            "FailedCreate",
            truncate(f"pods cannot be created: {progress.replica_failure}", MESSAGE_CHARS),
        )
    if progress and progress.stuck and not any(p.scheduled for p in current):
        return Degraded("RolloutStuck", truncate(progress.message or "progress deadline exceeded"))
    return None
