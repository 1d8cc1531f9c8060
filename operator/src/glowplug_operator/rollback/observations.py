"""What a Pod (or the Deployment) says about a start, as frozen observations.

Pure: a raw object as the API returns it (a plain dict) plus `now` in, an observation out. The
rollback decision (`glowplug_operator.rollback.decide`) reads only these observations.

The labels, annotations and container names read here are the builders' own, from `contract`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from glowplug_operator.contract import (
    FLAGS_ANNOTATION,
    FLAGS_HASH_LABEL,
    INIT_CONTAINER,
    TRIAL_ANNOTATION,
    WORKER_CONTAINER,
    flag_set_hash,
)
from glowplug_operator.rollback.reports import Report, parse_report
from glowplug_operator.timestamps import parse_time

# Waiting reasons that mean the container cannot even be created: not a flag problem.
IMAGE_PULL_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
)
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})


@dataclass(frozen=True)
class ContainerObservation:
    name: str
    restarts: int
    running: bool
    started_at: datetime | None  # of the current run, if running
    waiting_reason: str | None
    waiting_message: str | None  # what the kubelet says with the waiting reason
    terminated_reason: str | None  # current state, else last state
    exit_code: int | None  # current state, else last state
    terminated_now: bool  # the current state is terminated (not only the last state)
    report: Report | None  # the most recent failure report of this container
    # The current terminated state's run and report (any exit code), for the cold start.
    terminated_started_at: datetime | None = None
    finished_at: datetime | None = None
    final_report: Report | None = None
    # The failure message of the last terminated run (the last state first, else the current
    # one) when it exited non-zero: the report's error message, else the raw message.
    last_failure_message: str | None = None

    @property
    def succeeded_now(self) -> bool:
        """The current state is a run that ended with exit code 0."""
        return self.terminated_now and self.exit_code == 0

    @property
    def has_started(self) -> bool:
        """It runs or has run (a restart count means an earlier run)."""
        return self.running or self.restarts > 0

    @property
    def failed_now(self) -> bool:
        """The current state is a failed run (terminated non-zero, or crash-looping)."""
        if self.waiting_reason == "CrashLoopBackOff":
            return True
        return self.terminated_now and (self.exit_code or 0) != 0

    def terminations(self, *, counts_success: bool) -> int:
        """How many runs of this container have ended, as far as the status shows.

        restartCount counts the runs that ended and were restarted; a run that ended and is not
        restarted yet shows as a terminated state or as CrashLoopBackOff.
        """
        ended_now = self.waiting_reason == "CrashLoopBackOff" or (
            self.terminated_now and (counts_success or (self.exit_code or 0) != 0)
        )
        return self.restarts + (1 if ended_now else 0)


@dataclass(frozen=True)
class PodObservation:
    name: str
    uid: str
    flags: tuple[str, ...]
    flags_hash: str
    trial: str | None  # the glowplug.dev/trial annotation (a forced restart of a trial)
    created: datetime | None
    scheduled: datetime | None
    # The scheduler's word while it cannot place the pod (PodScheduled=False: Unschedulable,
    # a SchedulerError such as a claim's missing StorageClass, SchedulingGated).
    unschedulable: str | None
    ready: bool
    ready_since: datetime | None
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    deleting: bool
    observed_at: datetime
    worker: ContainerObservation | None
    init: ContainerObservation | None
    # metadata.deletionTimestamp: when a pod being deleted is to be gone (its grace's end).
    gone_by: datetime | None = None
    # Since when the scheduler has failed on the pod (PodScheduled=False, SchedulerError: a bind
    # that failed while etcd restarted, a claim's missing StorageClass); it retries.
    scheduler_error_since: datetime | None = None

    @property
    def worker_restarts(self) -> int:
        return self.worker.restarts if self.worker else 0

    @property
    def init_restarts(self) -> int:
        return self.init.restarts if self.init else 0

    @property
    def waiting_reason(self) -> str | None:
        """The init container's waiting reason while it blocks the pod, else the worker's."""
        if self.init and self.init.waiting_reason and not self._init_done:
            return self.init.waiting_reason
        return self.worker.waiting_reason if self.worker else None

    @property
    def waiting_message(self) -> str | None:
        """The message that goes with `waiting_reason`."""
        if self.init and self.init.waiting_reason and not self._init_done:
            return self.init.waiting_message
        return self.worker.waiting_message if self.worker else None

    @property
    def _init_done(self) -> bool:
        return bool(self.init and self.init.terminated_now and self.init.exit_code == 0)

    @property
    def failed_starts(self) -> int:
        """Failed starts this pod's status shows: init failures plus ended worker runs.

        A pod being deleted is being stopped on purpose: its current termination is not a failure.
        """
        init = self.init.terminations(counts_success=False) if self.init else 0
        worker = self.worker.terminations(counts_success=True) if self.worker else 0
        if self.deleting:
            init = self.init_restarts
            worker = self.worker_restarts
        return init + worker

    @property
    def attempt_started(self) -> datetime | None:
        """When the current start began: when the worker container started running. Before
        that (a slow download in the init container, a volume that does not attach, the image
        pulling, ContainerCreating) the pod's time is no flag's: no time-out is counted."""
        if self.worker is None or not self.worker.running:
            return None
        return self.worker.started_at

    @property
    def failure(self) -> ContainerObservation | None:
        """The container whose failure is the most recent one, for evidence."""
        for container in (self.worker, self.init):
            if container and (container.report or container.failed_now):
                return container
        return None

    @property
    def report(self) -> Report | None:
        failure = self.failure
        return failure.report if failure else None

    @property
    def oom_killed(self) -> bool:
        failure = self.failure
        return bool(failure and failure.terminated_reason == "OOMKilled")

    @property
    def blocked_reason(self) -> str | None:
        """A waiting reason that means no container can start: image pull or config errors."""
        reason = self.waiting_reason
        if reason in IMAGE_PULL_REASONS or reason in CONFIG_REASONS:
            return reason
        return None


def startup_deadline(pod: PodObservation, budget_seconds: int) -> datetime | None:
    """When the current attempt of `pod` runs out of its startup budget (the moment the rollback
    decision counts it as a failed start); None when no deadline applies (Ready, deleting,
    blocked, or not started). For the reconciler's next look: a deadline already past has been
    counted, so look again only for deadlines in the future."""
    started = pod.attempt_started
    if pod.ready or pod.deleting or pod.blocked_reason is not None or started is None:
        return None
    return started + timedelta(seconds=budget_seconds)


@dataclass(frozen=True)
class DeploymentProgress:
    stuck: bool  # Progressing=False with reason ProgressDeadlineExceeded
    reason: str | None
    message: str | None
    last_update: datetime | None
    # ReplicaFailure=True (reason FailedCreate): the ReplicaSet cannot create pods, and the API
    # server's refusal (a ResourceQuota, an admission policy), as the Deployment repeats it, and
    # since when the ReplicaSet has been refused.
    replica_failure: str | None = None
    replica_failure_since: datetime | None = None


def observe_pod(pod: Mapping[str, Any], now: datetime) -> PodObservation:
    meta = _dict(pod.get("metadata"))
    status = _dict(pod.get("status"))
    annotations = _dict(meta.get("annotations"))
    labels = _dict(meta.get("labels"))
    raw_flags = annotations.get(FLAGS_ANNOTATION)
    flags = (
        tuple(f.strip() for f in raw_flags.split(",") if f.strip())
        if isinstance(raw_flags, str)
        else ()
    )
    label_hash = labels.get(FLAGS_HASH_LABEL)
    flags_hash = label_hash if isinstance(label_hash, str) and label_hash else flag_set_hash(flags)
    conditions = {c.get("type"): c for c in _list(status.get("conditions")) if isinstance(c, dict)}
    scheduled = conditions.get("PodScheduled", {})
    unschedulable = None
    if scheduled.get("status") == "False":  # Unschedulable, SchedulerError, SchedulingGated
        why = str(scheduled.get("message") or "no node fits the pod")
        reason = scheduled.get("reason")
        unschedulable = why if reason in (None, "Unschedulable") else f"{reason}: {why}"
    scheduler_error = scheduled.get("status") == "False" and reason == "SchedulerError"
    ready = conditions.get("Ready", {})
    is_ready = ready.get("status") == "True"
    trial = annotations.get(TRIAL_ANNOTATION)
    return PodObservation(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        flags=flags,
        flags_hash=flags_hash,
        trial=trial if isinstance(trial, str) else None,
        created=parse_time(meta.get("creationTimestamp")),
        scheduled=(
            parse_time(scheduled.get("lastTransitionTime"))
            if scheduled.get("status") == "True"
            else None
        ),
        unschedulable=unschedulable,
        ready=is_ready,
        ready_since=parse_time(ready.get("lastTransitionTime")) if is_ready else None,
        phase=str(status.get("phase") or "Unknown"),
        deleting=meta.get("deletionTimestamp") is not None,
        gone_by=parse_time(meta.get("deletionTimestamp")),
        observed_at=now,
        worker=_container(status.get("containerStatuses"), WORKER_CONTAINER),
        init=_container(status.get("initContainerStatuses"), INIT_CONTAINER),
        scheduler_error_since=(
            parse_time(scheduled.get("lastTransitionTime")) if scheduler_error else None
        ),
    )


def observe_deployment_progress(deployment: Mapping[str, Any]) -> DeploymentProgress | None:
    """The Deployment's Progressing and ReplicaFailure conditions; None when it has neither."""
    status = _dict(deployment.get("status"))
    found = {c.get("type"): c for c in _list(status.get("conditions")) if isinstance(c, dict)}
    progressing, failure = found.get("Progressing"), found.get("ReplicaFailure")
    if progressing is None and failure is None:
        return None
    condition = _dict(progressing)
    reason = condition.get("reason")
    message = condition.get("message")
    refused, refused_since = None, None
    if failure is not None and failure.get("status") == "True":
        refused = str(failure.get("message") or failure.get("reason") or "FailedCreate")
        refused_since = parse_time(failure.get("lastTransitionTime"))
    return DeploymentProgress(
        stuck=condition.get("status") == "False" and reason == "ProgressDeadlineExceeded",
        reason=reason if isinstance(reason, str) else None,
        message=message if isinstance(message, str) else None,
        last_update=parse_time(condition.get("lastUpdateTime")),
        replica_failure=refused,
        replica_failure_since=refused_since,
    )


def _container(statuses: Any, name: str) -> ContainerObservation | None:
    for raw in _list(statuses):
        if isinstance(raw, dict) and raw.get("name") == name:
            return _observe_container(raw)
    return None


def _observe_container(raw: Mapping[str, Any]) -> ContainerObservation:
    state = _dict(raw.get("state"))
    last = _dict(raw.get("lastState"))
    running = _dict(state.get("running"))
    waiting = _dict(state.get("waiting"))
    terminated_now = _dict(state.get("terminated"))
    terminated_last = _dict(last.get("terminated"))
    terminated = terminated_now or terminated_last
    exit_code = terminated.get("exitCode")
    report = None
    for candidate in (terminated_now, terminated_last):
        parsed = parse_report(candidate.get("message")) if candidate else None
        if parsed is not None and parsed.failed:
            report = parsed
            break
    restarts = raw.get("restartCount")
    reason = waiting.get("reason")
    waiting_message = waiting.get("message")
    term_reason = terminated.get("reason")
    final_report = parse_report(terminated_now.get("message")) if terminated_now else None
    last_run = terminated_last or terminated_now
    last_failure_message = None
    if last_run and last_run.get("exitCode"):
        last_report = parse_report(last_run.get("message"))
        last_failure_message = (
            last_report.error.message
            if last_report and last_report.error
            else str(last_run.get("message") or "")
        )
    return ContainerObservation(
        name=str(raw.get("name", "")),
        restarts=restarts if isinstance(restarts, int) and restarts >= 0 else 0,
        running=bool(state.get("running") is not None),
        started_at=parse_time(running.get("startedAt")),
        waiting_reason=reason if isinstance(reason, str) else None,
        waiting_message=waiting_message if isinstance(waiting_message, str) else None,
        terminated_reason=term_reason if isinstance(term_reason, str) else None,
        exit_code=exit_code if isinstance(exit_code, int) else None,
        terminated_now=bool(terminated_now),
        report=report,
        terminated_started_at=parse_time(terminated_now.get("startedAt")),
        finished_at=parse_time(terminated_now.get("finishedAt")),
        final_report=final_report,
        last_failure_message=last_failure_message,
    )


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
