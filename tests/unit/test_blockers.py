"""Why pods do not start, when no flag can be the cause (rollback/blockers.py), and what the
decision does meanwhile: tables of raw pods, claims and Deployments as the API shows them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from glowplug_operator.contract import flag_set_hash
from glowplug_operator.rollback import (
    Decision,
    FlagState,
    PodObservation,
    Rollout,
    decide,
    observe_claim,
    observe_deployment_progress,
    observe_pod,
)
from glowplug_operator.rollback.blockers import CLAIM_GRACE, REFUSAL_GRACE, blocker

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
FLAGS = ("fast-load", "prefetch-weights")
HASH = flag_set_hash(FLAGS)
BUDGET = 300
NO_NODE = (
    "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. "
    "preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
)
NO_GPU = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
UNBOUND = "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims."
QUOTA = (
    'pods "llama-7d9f-x2k4p" is forbidden: exceeded quota: gpus, requested: '
    "requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=0"
)


def at(seconds: float) -> str:
    return (NOW + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


@dataclass
class Pod:
    """A pod of a flag set, in one of the states a new user meets."""

    name: str = "llama-7d9f-x2k4p"
    flags: tuple[str, ...] = FLAGS
    created: float = -3600  # an hour ago: twelve startup budgets
    unschedulable: str | None = None
    scheduler_reason: str = "Unschedulable"  # or SchedulerError
    waiting: tuple[str, str] | None = None  # (reason, message) of the worker or init container
    init_waiting: bool = False
    running_since: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def raw(self) -> dict[str, Any]:
        conditions: list[dict[str, Any]] = []
        status: dict[str, Any] = {"phase": "Pending", "conditions": conditions}
        if self.unschedulable:
            conditions.append(
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": self.scheduler_reason,
                    "message": self.unschedulable,
                    "lastTransitionTime": at(self.created),
                }
            )
        else:
            conditions.append(
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": at(self.created)}
            )
            worker: dict[str, Any] = {"name": "worker", "restartCount": 0}
            init: dict[str, Any] = {"name": "prefetch", "restartCount": 0}
            if self.waiting and self.init_waiting:
                init["state"] = {"waiting": {"reason": self.waiting[0], "message": self.waiting[1]}}
                worker["state"] = {"waiting": {"reason": "PodInitializing"}}
            else:
                init["state"] = {"terminated": {"exitCode": 0, "reason": "Completed"}}
                if self.waiting:
                    reason, message = self.waiting
                    worker["state"] = {"waiting": {"reason": reason, "message": message}}
                elif self.running_since is not None:
                    status["phase"] = "Running"
                    worker["state"] = {"running": {"startedAt": at(self.running_since)}}
            status["containerStatuses"] = [worker]
            status["initContainerStatuses"] = [init]
        return {
            "metadata": {
                "name": self.name,
                "uid": f"uid-{self.name}",
                "creationTimestamp": at(self.created),
                "annotations": {"glowplug.dev/optimizations": ",".join(self.flags)},
                "labels": {"glowplug.dev/optimizations-hash": flag_set_hash(self.flags)},
            },
            "status": status,
        }


def claim(
    storage_class: str | None = "fast", phase: str = "Pending", age: float = 5, **annotations: str
) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"]}
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {
        "metadata": {
            "name": "llama-cache",
            "creationTimestamp": at(-age),
            "annotations": annotations,
        },
        "spec": spec,
        "status": {"phase": phase},
    }


def storage_class(
    name: str, provisioner: str, mode: str = "Immediate", default: bool = False
) -> dict[str, Any]:
    annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
    return {
        "metadata": {"name": name, "annotations": annotations},
        "provisioner": provisioner,
        "volumeBindingMode": mode,
    }


CLASSES = {
    "fast": storage_class("fast", "csi.example.com"),
    "local": storage_class("local", "kubernetes.io/no-provisioner", "WaitForFirstConsumer"),
    "late": storage_class("late", "csi.example.com", "WaitForFirstConsumer"),
}


def deployment(*conditions: dict[str, Any]) -> dict[str, Any]:
    return {"status": {"conditions": list(conditions)}}


def replica_failure(since: float, message: str = QUOTA) -> dict[str, Any]:
    return {
        "type": "ReplicaFailure",
        "status": "True",
        "reason": "FailedCreate",
        "message": message,
        "lastTransitionTime": at(since),
    }


FAILED_BIND = 'running Bind plugin "DefaultBinder": etcdserver: request timed out'
REPLICA_FAILURE = replica_failure(-REFUSAL_GRACE.total_seconds())
# Seen in CI: the controller-manager reached a restarted API server before its RBAC had synced.
PASSING_REFUSAL = replica_failure(
    -2,
    'pods is forbidden: User "system:serviceaccount:kube-system:replicaset-controller" '
    'cannot create resource "pods"',
)
PROGRESSING = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}


@dataclass(frozen=True)
class Case:
    pods: tuple[Pod, ...] = ()
    claim: dict[str, Any] | None = None
    classes: dict[str, dict[str, Any]] | None = field(default_factory=lambda: CLASSES)
    deployment: dict[str, Any] | None = None
    trial: bool = False
    old_pods: tuple[Pod, ...] = ()
    leaving_in: float | None = None  # a pod being deleted, gone in this many seconds
    left_ago: float | None = None  # a pod of the ModelServer was gone this long ago
    reason: str | None = None
    says: tuple[str, ...] = ()


CASES = {
    "no-node-matches-the-node-selector": Case(
        pods=(Pod(unschedulable=NO_NODE),),
        reason="Unschedulable",
        says=("pod llama-7d9f-x2k4p cannot be scheduled", "didn't match Pod's node affinity"),
    ),
    "no-free-gpu": Case(
        pods=(Pod(unschedulable=NO_GPU),), reason="Unschedulable", says=("nvidia.com/gpu",)
    ),
    "claim-names-a-class-that-does-not-exist": Case(
        pods=(Pod(unschedulable=UNBOUND),),
        claim=claim("nope"),
        reason="ClaimPending",
        says=("claim llama-cache is Pending: storage class nope does not exist", UNBOUND),
    ),
    "claim-without-class-in-a-cluster-without-a-default": Case(
        pods=(Pod(unschedulable=UNBOUND),),
        claim=claim(None),
        reason="ClaimPending",
        says=("names no storage class and the cluster has no default one",),
    ),
    "claim-of-a-class-without-provisioner": Case(
        claim=claim("local"),
        reason="ClaimPending",
        says=("storage class local has no provisioner (kubernetes.io/no-provisioner)",),
    ),
    "claim-waiting-for-its-first-consumer-is-normal": Case(claim=claim("late"), reason=None),
    "claim-waiting-for-its-provisioner-is-normal-for-a-while": Case(
        claim=claim("fast"), reason=None
    ),
    "claim-waiting-for-its-provisioner-too-long": Case(
        claim=claim("fast", age=CLAIM_GRACE.total_seconds() + 1),
        reason="ClaimPending",
        says=("waiting for provisioner csi.example.com (storage class fast)",),
    ),
    "claim-selected-node-waits-for-the-provisioner": Case(
        pods=(Pod(unschedulable=UNBOUND),),
        claim=claim("late", **{"volume.kubernetes.io/selected-node": "kwok-gpu-0"}),
        reason="ClaimPending",
        says=("waiting for provisioner csi.example.com (storage class late)",),
    ),
    "claim-classes-not-readable": Case(
        pods=(Pod(unschedulable=UNBOUND),),
        claim=claim("fast"),
        classes=None,
        reason="ClaimPending",
        says=("claim llama-cache is Pending (storage class fast)",),
    ),
    "bound-claim-is-no-problem": Case(claim=claim("fast", phase="Bound"), reason=None),
    "image-cannot-be-pulled": Case(
        pods=(Pod(waiting=("ErrImagePull", 'pull access denied for "ghcr.io/x/worker"')),),
        reason="ImagePullFailed",
        says=("pod llama-7d9f-x2k4p: ErrImagePull: pull access denied",),
    ),
    "init-image-backs-off": Case(
        pods=(Pod(waiting=("ImagePullBackOff", "Back-off pulling image"), init_waiting=True),),
        reason="ImagePullFailed",
        says=("ImagePullBackOff: Back-off pulling image",),
    ),
    "quota-refuses-the-pods": Case(
        deployment=deployment(PROGRESSING, REPLICA_FAILURE),
        reason="FailedCreate",
        says=("pods cannot be created", "exceeded quota: gpus"),
    ),
    "a-refusal-the-replicaset-retries-is-not-reported-yet": Case(
        deployment=deployment(PROGRESSING, PASSING_REFUSAL), reason=None
    ),
    "trial-on-a-full-cluster": Case(
        pods=(Pod(name="llama-new", unschedulable=NO_GPU),),
        old_pods=(Pod(name="llama-old", flags=("prefetch-weights",), running_since=-3000),),
        trial=True,
        reason="TrialUnschedulable",
        says=("the trial of flags fast-load, prefetch-weights cannot be scheduled", "maxSurge"),
    ),
    # Seen in CI: the scheduler failed to bind while etcd restarted, and bound on its retry.
    "a-bind-the-scheduler-retries-is-not-reported-yet": Case(
        pods=(Pod(created=-2, unschedulable=FAILED_BIND, scheduler_reason="SchedulerError"),),
        reason=None,
    ),
    "a-scheduler-error-that-stands-is-reported": Case(
        pods=(Pod(created=-10, unschedulable=FAILED_BIND, scheduler_reason="SchedulerError"),),
        reason="Unschedulable",
        says=("SchedulerError: running Bind plugin",),
    ),
    "first-rollout-unschedulable-is-no-trial": Case(
        pods=(Pod(unschedulable=NO_GPU),), trial=True, reason="Unschedulable"
    ),
    "a-running-pod-is-not-blocked": Case(pods=(Pod(running_since=-10),), reason=None),
    "replacing-a-pod-in-place-waits-while-it-stops": Case(
        pods=(Pod(unschedulable=NO_GPU),), leaving_in=40, reason=None
    ),
    "a-pod-stuck-deleting-past-its-grace-makes-no-room": Case(
        pods=(Pod(unschedulable=NO_GPU),), leaving_in=-60, reason="Unschedulable"
    ),
    "a-pod-just-gone-made-room-for-the-scheduler-to-find": Case(
        pods=(Pod(unschedulable=NO_GPU),), left_ago=5, reason=None
    ),
    "a-pod-gone-long-ago-made-no-room": Case(
        pods=(Pod(unschedulable=NO_GPU),), left_ago=120, reason="Unschedulable"
    ),
}


def leaving(seconds: float) -> PodObservation:
    raw = Pod(name="llama-old", flags=("prefetch-weights",), running_since=-3000).raw()
    raw["metadata"]["deletionTimestamp"] = at(seconds)
    return observe_pod(raw, NOW)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_blocker(case: Case) -> None:
    current = [observe_pod(p.raw(), NOW) for p in case.pods]
    others = [observe_pod(p.raw(), NOW) for p in case.old_pods]
    progress = observe_deployment_progress(case.deployment) if case.deployment else None
    seen = observe_claim(case.claim, case.classes) if case.claim else None
    found = blocker(
        current,
        others,
        progress,
        seen,
        trial_flags=FLAGS if case.trial else None,
        now=NOW,
        leaving=[leaving(case.leaving_in)] if case.leaving_in is not None else [],
        left_at=NOW - timedelta(seconds=case.left_ago) if case.left_ago is not None else None,
    )
    assert (found.reason if found else None) == case.reason
    for words in case.says:
        assert found is not None and words in found.message


def test_a_default_class_means_the_claim_gets_it() -> None:
    classes = {**CLASSES, "std": storage_class("std", "csi.example.com", default=True)}
    assert observe_claim(claim(None), classes).class_state == "unknown"
    assert observe_claim(claim(None), CLASSES).class_state == "unnamed"


def test_replica_failure_is_read_without_a_progressing_condition() -> None:
    progress = observe_deployment_progress(deployment(REPLICA_FAILURE))
    assert progress is not None and progress.replica_failure == QUOTA and not progress.stuck
    assert observe_deployment_progress(deployment(PROGRESSING)) is not None
    assert observe_deployment_progress({"status": {}}) is None


def run(
    pods: list[Pod],
    *,
    states: tuple[FlagState, ...] = (),
    rollout: Rollout | None = None,
    claim_body: dict[str, Any] | None = None,
    dep: dict[str, Any] | None = None,
) -> Decision:
    return decide(
        spec_flags=FLAGS,
        policy="Automatic",
        flag_states=states,
        rollout=rollout or Rollout(),
        pods=[observe_pod(p.raw(), NOW) for p in pods],
        progress=observe_deployment_progress(dep) if dep else None,
        budget_seconds=BUDGET,
        retry_token=None,
        now=NOW,
        claim=observe_claim(claim_body, CLASSES) if claim_body else None,
    )


@pytest.mark.parametrize(
    ("pod", "unbound", "reason"),
    [
        (Pod(unschedulable=NO_NODE), False, "Unschedulable"),
        (Pod(waiting=("ImagePullBackOff", "Back-off pulling image")), False, "ImagePullFailed"),
        (Pod(waiting=("ErrImagePull", "not found"), init_waiting=True), False, "ImagePullFailed"),
        (Pod(unschedulable=UNBOUND), True, "ClaimPending"),
    ],
    ids=["unschedulable", "worker-image", "init-image", "unbound-claim"],
)
def test_an_hour_blocked_is_no_timed_out_start_and_blames_no_flag(
    pod: Pod, unbound: bool, reason: str
) -> None:
    """The startup budget runs only from the worker container's start: twelve budgets spent
    unscheduled or pulling count no start, blame no flag, start no search."""
    decision = run([pod], claim_body=claim("nope") if unbound else None)
    assert decision.degraded is not None and decision.degraded.reason == reason
    assert decision.effective_flags == FLAGS and not decision.template_changed
    assert decision.rollout.bisection is None and decision.rollbacks == ()
    assert all(s.failures == 0 for s in decision.flag_states)
    assert decision.condition.reason == decision.degraded.reason


def test_the_blocker_is_an_event_once_and_clears() -> None:
    first = run([Pod(unschedulable=NO_NODE)])
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "Unschedulable")]
    assert NO_NODE in first.events[0].message
    again = run([Pod(unschedulable=NO_NODE)], states=first.flag_states, rollout=first.rollout)
    assert again.events == ()
    scheduled = run([Pod(running_since=-5)], states=first.flag_states, rollout=first.rollout)
    assert scheduled.degraded is None and scheduled.events == ()


def test_a_bisection_trial_that_cannot_be_scheduled_waits_and_blames_nobody() -> None:
    """A search step on a full cluster: the trial's pod finds no GPU while the old pod runs.
    The search stays at its step, no flag is blamed, and the status says why."""
    crash = {
        "exitCode": 1,
        "reason": "Error",
        "startedAt": at(-30),
        "finishedAt": at(-20),
    }
    old = Pod(name="llama-old", created=-600)
    raw_old = old.raw()
    raw_old["status"]["containerStatuses"][0].update(
        {"restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
    )
    raw_old["status"]["containerStatuses"][0]["lastState"] = {"terminated": crash}
    failing = decide(
        spec_flags=FLAGS,
        policy="Automatic",
        flag_states=(),
        rollout=Rollout(),
        pods=[observe_pod(raw_old, NOW)],
        progress=None,
        budget_seconds=BUDGET,
        retry_token=None,
        now=NOW,
    )
    search = failing.rollout.bisection
    assert search is not None, "a silent crash loop starts a search"
    trial_flags = failing.effective_flags
    trial = Pod(name="llama-trial", flags=trial_flags, created=-1, unschedulable=NO_GPU)
    later = NOW + timedelta(hours=1)
    waiting = decide(
        spec_flags=FLAGS,
        policy="Automatic",
        flag_states=failing.flag_states,
        rollout=failing.rollout,
        pods=[observe_pod(raw_old, later), observe_pod(trial.raw(), later)],
        progress=None,
        budget_seconds=BUDGET,
        retry_token=None,
        now=later,
    )
    assert waiting.degraded is not None and waiting.degraded.reason == "TrialUnschedulable"
    assert "cannot be scheduled" in waiting.degraded.message
    assert waiting.rollout.bisection == search
    assert waiting.effective_flags == trial_flags and waiting.rollbacks == ()
    assert not any(s.state == "RolledBack" for s in waiting.flag_states)
    assert [e.reason for e in waiting.events] == ["TrialUnschedulable"]
