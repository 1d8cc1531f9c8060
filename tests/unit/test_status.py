"""The ModelServer's status, as `kubectl get ms -o yaml` and `kubectl wait --for=condition=Ready`
see it, computed from pods as the API server returns them.

Reports in the pods' termination messages are written with the worker's own writer
(glowplug_worker.report), the other side of the contract in docs/termination-report.md. Decisions
come from rollback.decide, fed the way the reconciler feeds it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from glowplug_operator.builders import Owner, endpoint, label_selector
from glowplug_operator.contract import flag_set_hash
from glowplug_operator.rollback import (
    Condition,
    Decision,
    FlagState,
    Rollout,
    decide,
    observe_pod,
)
from glowplug_operator.spec import InvalidSpec, parse_spec
from glowplug_operator.status import (
    Observed,
    conditions,
    invalid_spec_status,
    modelserver_status,
    prune,
)
from glowplug_operator.timestamps import iso
from glowplug_worker.report import DownloadSummary, ErrorInfo, TerminationReport

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FLAGS = ("prefetch-weights", "fast-load")
HASH = flag_set_hash(FLAGS)
OWNER = Owner("llama", "ml", "uid-ms")
SPEC = parse_spec({"metadata": {"name": "llama"}, "spec": {"model": {"source": "hf://org/name"}}})
Status = dict[str, Any]


def at(seconds: float) -> str:
    return iso(T0 + timedelta(seconds=seconds))


# --- termination reports, written by the worker ------------------------------------------------


def prefetch_succeeded(*, reused: bool = False, download: float = 41.0) -> str:
    return TerminationReport(
        command="prefetch",
        outcome="succeeded",
        optimizations=list(FLAGS),
        phases={"download": download},
        download=DownloadSummary(
            bytes=2_200_000_000,
            files=3,
            seconds=download,
            throughput_bytes_per_second=2.2e9 / download,
            reused=reused,
        ),
    ).to_json()


DENIED = "hf://org/name@main: 401 Unauthorized: check the token in Secret hf-token"
PREFETCH_FAILED = TerminationReport(
    command="prefetch",
    outcome="failed",
    phase="download",
    optimizations=list(FLAGS),
    error=ErrorInfo("CredentialsError", DENIED),
).to_json()


WORKER_DOWNLOAD_FAILED = TerminationReport(
    command="serve",
    outcome="failed",
    phase="download",
    optimizations=["overlap-download"],
    error=ErrorInfo("CredentialsError", DENIED),
).to_json()
READ = {"pod-1": {"download": 0.4, "import": 2.1}}


# --- container statuses and pods, as the kubelet reports them ---------------------------------


def init_running() -> dict[str, Any]:
    return {
        "name": "prefetch",
        "ready": False,
        "restartCount": 0,
        "state": {"running": {"startedAt": at(3)}},
    }


def init_done(
    message: str | None = None, started: float = 3, finished: float = 45
) -> dict[str, Any]:
    terminated: dict[str, Any] = {
        "exitCode": 0,
        "reason": "Completed",
        "startedAt": at(started),
        "finishedAt": at(finished),
    }
    if message is not None:
        terminated["message"] = message
    return {
        "name": "prefetch",
        "ready": True,
        "restartCount": 0,
        "state": {"terminated": terminated},
    }


def init_crashlooping(message: str) -> dict[str, Any]:
    return {
        "name": "prefetch",
        "ready": False,
        "restartCount": 2,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
        "lastState": {
            "terminated": {
                "exitCode": 1,
                "reason": "Error",
                "message": message,
                "startedAt": at(30),
                "finishedAt": at(31),
            }
        },
    }


def worker_crashlooping(message: str) -> dict[str, Any]:
    return {**init_crashlooping(message), "name": "worker"}


def init_image_pull() -> dict[str, Any]:
    return {
        "name": "prefetch",
        "ready": False,
        "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
    }


def worker_waiting() -> dict[str, Any]:
    return {
        "name": "worker",
        "ready": False,
        "restartCount": 0,
        "state": {"waiting": {"reason": "PodInitializing"}},
    }


def worker_running(ready: bool, started: float = 46) -> dict[str, Any]:
    return {
        "name": "worker",
        "ready": ready,
        "started": ready,
        "restartCount": 0,
        "state": {"running": {"startedAt": at(started)}},
    }


def pod(
    init: dict[str, Any],
    worker: dict[str, Any],
    *,
    name: str = "llama-6f7d9c-x2k4p",
    uid: str = "pod-1",
    ready_at: float | None = None,
    created: float = 0,
    scheduled: float = 2,
    flags_hash: str = HASH,
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ml",
        "uid": uid,
        "creationTimestamp": at(created),
        "labels": {
            "glowplug.dev/modelserver": "llama",
            "glowplug.dev/optimizations-hash": flags_hash,
        },
        "annotations": {"glowplug.dev/optimizations": ",".join(FLAGS)},
    }
    if deleting:
        meta["deletionTimestamp"] = at(300)
    ready = ready_at is not None
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "status": {
            "phase": "Running" if worker["state"].get("running") else "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": at(scheduled)},
                {
                    "type": "Initialized",
                    "status": "True" if init["state"].get("terminated") else "False",
                    "lastTransitionTime": at(45),
                },
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": at(ready_at if ready else scheduled),
                },
            ],
            "initContainerStatuses": [init],
            "containerStatuses": [worker],
        },
    }


def starting_pod() -> dict[str, Any]:
    return pod(init_running(), worker_waiting())


def ready_pod(**kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("ready_at", 60)
    return pod(init_done(prefetch_succeeded()), worker_running(True), **kwargs)


# --- the reconciler's steps: decide, then compute the status ----------------------------------


def decision(previous: Mapping[str, Any], now: datetime, pods: Sequence[Any] = ()) -> Decision:
    """As Reconciler._decide: flag states and rollout from the stored status."""
    states = [s for s in map(FlagState.from_status, previous.get("optimizations") or []) if s]
    return decide(
        spec_flags=FLAGS,
        policy="Automatic",
        flag_states=states,
        rollout=Rollout.from_status(previous.get("rollout")),
        pods=[observe_pod(p, now) for p in pods],
        progress=None,
        budget_seconds=600,
        retry_token=None,
        now=now,
    )


def status(
    pods: Sequence[dict[str, Any]],
    *,
    previous: Mapping[str, Any] | None = None,
    now: datetime = T0 + timedelta(minutes=2),
    replicas: int = 1,
    deployment: Mapping[str, Any] | None = None,
    decided: Decision | None = None,
    worker_phases: Mapping[str, Mapping[str, float]] | None = None,
) -> Status:
    previous = previous or {}
    chosen = decided or decision(previous, now)
    observed = Observed(
        generation=4,
        desired_replicas=replicas,
        deployment=deployment,
        observations=[observe_pod(p, now) for p in pods],
        flags_hash=chosen.flags_hash,
        selector=label_selector(OWNER),
        endpoint=endpoint(OWNER, SPEC),
        worker_phases=worker_phases or {},
    )
    return modelserver_status(previous, observed, chosen, now)


def condition(status_: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status_["conditions"] if c["type"] == kind)


def summary(status_: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status_["conditions"]}


def stored(status_: Status) -> Status:
    """What the API server gives back after the operator wrote `status_` (a JSON trip)."""
    return json.loads(json.dumps(status_))


class TestConditions:
    NOW = T0 + timedelta(hours=1)
    BEFORE = [
        {
            "type": "Ready",
            "status": "False",
            "observedGeneration": 3,
            "lastTransitionTime": at(0),
            "reason": "Starting",
            "message": "0/1 replicas ready",
        }
    ]

    @pytest.mark.parametrize(
        ("wanted", "since"),
        [
            (Condition("Ready", "False", "Starting", "0/1 replicas ready"), at(0)),
            (Condition("Ready", "False", "ImagePullFailed", "pod x: ErrImagePull"), at(0)),
            (Condition("Ready", "True", "Serving", "1/1 replicas serve the model"), iso(NOW)),
            (Condition("Ready", "Unknown", "Evaluating", ""), iso(NOW)),
        ],
        ids=["unchanged", "new-reason-same-status", "status-changed", "to-unknown"],
    )
    def test_transition_time_moves_only_with_the_status(
        self, wanted: Condition, since: str
    ) -> None:
        (out,) = conditions(self.BEFORE, [wanted], 4, self.NOW)
        assert out == {
            "type": wanted.type,
            "status": wanted.status,
            "observedGeneration": 4,
            "lastTransitionTime": since,
            "reason": wanted.reason,
            "message": wanted.message,
        }

    def test_a_new_condition_starts_now_and_a_dropped_one_goes(self) -> None:
        out = conditions(
            self.BEFORE, [Condition("Degraded", "False", "AsExpected", "")], 4, self.NOW
        )
        assert [(c["type"], c["lastTransitionTime"]) for c in out] == [("Degraded", iso(self.NOW))]

    def test_garbage_in_the_stored_conditions_is_ignored(self) -> None:
        previous: list[Any] = ["Ready", None, {"status": "True"}]
        (out,) = conditions(previous, [Condition("Ready", "True", "Serving", "")], 1, self.NOW)
        assert out["lastTransitionTime"] == iso(self.NOW)


class TestModelServerStatus:
    @pytest.mark.parametrize(
        ("pods", "replicas", "expected", "ready_replicas"),
        [
            (
                [],
                1,
                {
                    "Ready": ("False", "Starting"),
                    "Progressing": ("True", "RollingOut"),
                    "Reconciling": ("True", "RollingOut"),
                    "Stalled": ("False", "Progressing"),
                    "WeightsReady": ("Unknown", "NoPods"),
                    "OptimizationsHealthy": ("Unknown", "Evaluating"),
                    "Degraded": ("False", "AsExpected"),
                },
                0,
            ),
            (
                [starting_pod()],
                1,
                {
                    "Ready": ("False", "Starting"),
                    "Progressing": ("True", "RollingOut"),
                    "Reconciling": ("True", "RollingOut"),
                    "Stalled": ("False", "Progressing"),
                    "WeightsReady": ("False", "Downloading"),
                    "OptimizationsHealthy": ("Unknown", "Evaluating"),
                    "Degraded": ("False", "AsExpected"),
                },
                0,
            ),
            (
                [pod(init_crashlooping(PREFETCH_FAILED), worker_waiting())],
                1,
                {
                    "Ready": ("False", "Starting"),
                    "Progressing": ("True", "RollingOut"),
                    "Reconciling": ("True", "RollingOut"),
                    "Stalled": ("False", "Progressing"),
                    "WeightsReady": ("False", "DownloadFailed"),
                    "OptimizationsHealthy": ("Unknown", "Evaluating"),
                    "Degraded": ("False", "AsExpected"),
                },
                0,
            ),
            (
                [pod(init_done(prefetch_succeeded()), worker_running(False))],
                1,
                {
                    "Ready": ("False", "Starting"),
                    "Progressing": ("True", "RollingOut"),
                    "Reconciling": ("True", "RollingOut"),
                    "Stalled": ("False", "Progressing"),
                    "WeightsReady": ("True", "Downloaded"),
                    "OptimizationsHealthy": ("Unknown", "Evaluating"),
                    "Degraded": ("False", "AsExpected"),
                },
                0,
            ),
            (
                [ready_pod()],
                1,
                {
                    "Ready": ("True", "Serving"),
                    "Progressing": ("False", "Converged"),
                    "Reconciling": ("False", "Converged"),
                    "Stalled": ("False", "Serving"),
                    "WeightsReady": ("True", "Downloaded"),
                    "OptimizationsHealthy": ("Unknown", "Evaluating"),
                    "Degraded": ("False", "AsExpected"),
                },
                1,
            ),
            (
                [ready_pod(), ready_pod(uid="pod-2", name="llama-6f7d9c-q8r2m", ready_at=70)],
                2,
                {
                    "Ready": ("True", "Serving"),
                    "Progressing": ("False", "Converged"),
                    "Reconciling": ("False", "Converged"),
                    "Stalled": ("False", "Serving"),
                    "WeightsReady": ("True", "Downloaded"),
                    "OptimizationsHealthy": ("Unknown", "Evaluating"),
                    "Degraded": ("False", "AsExpected"),
                },
                2,
            ),
            (
                [ready_pod(), ready_pod(uid="pod-2", name="llama-6f7d9c-q8r2m", deleting=True)],
                2,
                {
                    "Ready": ("False", "Starting"),
                    "Progressing": ("True", "RollingOut"),
                    "Reconciling": ("True", "RollingOut"),
                    "Stalled": ("False", "Progressing"),
                    "WeightsReady": ("True", "Downloaded"),
                    "OptimizationsHealthy": ("Unknown", "Evaluating"),
                    "Degraded": ("False", "AsExpected"),
                },
                1,
            ),
            (
                [],
                0,
                {
                    "Ready": ("True", "ScaledToZero"),
                    "Progressing": ("False", "Converged"),
                    "Reconciling": ("False", "Converged"),
                    "Stalled": ("False", "ScaledToZero"),
                    "WeightsReady": ("Unknown", "NoPods"),
                    "OptimizationsHealthy": ("Unknown", "Evaluating"),
                    "Degraded": ("False", "AsExpected"),
                },
                0,
            ),
        ],
        ids=[
            "no-pods-yet",
            "prefetch-running",
            "prefetch-failed",
            "worker-starting",
            "ready",
            "two-ready",
            "one-of-two-terminating",
            "scaled-to-zero",
        ],
    )
    def test_conditions_follow_the_pods(
        self,
        pods: list[dict[str, Any]],
        replicas: int,
        expected: dict[str, tuple[str, str]],
        ready_replicas: int,
    ) -> None:
        out = status(pods, replicas=replicas)
        assert summary(out) == expected
        assert out["observedGeneration"] == 4
        assert all(c["observedGeneration"] == 4 for c in out["conditions"])
        assert out["readyReplicas"] == ready_replicas
        assert out["replicaSummary"] == f"{ready_replicas}/{replicas}"

    def test_a_failed_prefetch_shows_the_reports_error(self) -> None:
        out = status([pod(init_crashlooping(PREFETCH_FAILED), worker_waiting())])
        assert condition(out, "WeightsReady")["message"] == DENIED

    def test_a_failed_prefetch_without_a_report_shows_its_log_tail(self) -> None:
        log_tail = "Traceback (most recent call last):\n  ...\nMemoryError"
        out = status([pod(init_crashlooping(log_tail), worker_waiting())])
        assert condition(out, "WeightsReady")["message"] == log_tail

    @pytest.mark.parametrize(("reused", "reason"), [(True, "Reused"), (False, "Downloaded")])
    def test_weights_say_whether_they_came_from_the_cache(self, reused: bool, reason: str) -> None:
        out = status([pod(init_done(prefetch_succeeded(reused=reused)), worker_running(False))])
        assert summary(out)["WeightsReady"] == ("True", reason)

    def test_an_image_pull_failure_is_degraded_not_progressing(self) -> None:
        now = T0 + timedelta(minutes=2)
        pods = [pod(init_image_pull(), worker_waiting())]
        out = status(pods, now=now, decided=decision({}, now, pods))
        assert summary(out)["Ready"] == ("False", "ImagePullFailed")
        assert summary(out)["Progressing"] == ("False", "ImagePullFailed")
        assert summary(out)["Stalled"] == ("True", "ImagePullFailed")
        assert summary(out)["Reconciling"] == ("False", "ImagePullFailed")
        assert summary(out)["Degraded"] == ("True", "ImagePullFailed")
        assert "ImagePullBackOff" in condition(out, "Degraded")["message"]
        weights = condition(out, "WeightsReady")
        assert (weights["status"], weights["reason"]) == ("Unknown", "NotStarted")
        assert "waits: ImagePullBackOff" in weights["message"]

    def test_with_overlap_download_the_worker_reports_the_weights(self) -> None:
        """No prefetch init container: WeightsReady follows the worker's download."""

        def worker_pod(worker: dict[str, Any], ready_at: float | None = None) -> dict[str, Any]:
            raw = pod(init_running(), worker, ready_at=ready_at)
            del raw["status"]["initContainerStatuses"]
            raw["metadata"]["annotations"]["glowplug.dev/optimizations"] = "overlap-download"
            return raw

        starting = condition(status([worker_pod(worker_running(False, 3))]), "WeightsReady")
        assert (starting["status"], starting["reason"]) == ("False", "Downloading")
        assert "the worker downloads the weights" in starting["message"]
        ready = status([worker_pod(worker_running(True, 3), ready_at=9)], worker_phases=READ)
        assert summary(ready)["WeightsReady"] == ("True", "Downloaded")
        # The worker's download, read from its /startup, is a phase of the cold start.
        assert ready["coldStart"]["phases"] == {
            "schedule": 2.0, "imagePull": 1.0, "start": 6.0, "download": 0.4, "import": 2.1,
        }  # fmt: skip
        failed = worker_crashlooping(WORKER_DOWNLOAD_FAILED)
        weights = condition(status([worker_pod(failed)]), "WeightsReady")
        assert (weights["status"], weights["reason"]) == ("False", "DownloadFailed")
        assert weights["message"] == DENIED
        unscheduled = worker_pod(worker_waiting())
        unscheduled["status"]["conditions"][0] = {
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/2 nodes are available", "lastTransitionTime": at(1),
        }  # fmt: skip
        weights = condition(status([unscheduled]), "WeightsReady")
        assert (weights["status"], weights["reason"]) == ("Unknown", "NotStarted")
        assert weights["message"].startswith("no worker runs yet; pod llama-6f7d9c-x2k4p is not")

    def test_an_unscheduled_pod_is_no_download(self) -> None:
        """The new user's case: the pods sit Pending; WeightsReady says why, not 'running'."""
        now = T0 + timedelta(minutes=2)
        raw = starting_pod()
        raw["status"]["conditions"][0] = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
            "lastTransitionTime": at(1),
        }
        del raw["status"]["initContainerStatuses"], raw["status"]["containerStatuses"]
        out = status([raw], now=now, decided=decision({}, now, [raw]))
        weights = condition(out, "WeightsReady")
        assert (weights["status"], weights["reason"]) == ("Unknown", "NotStarted")
        assert "is not scheduled: 0/2 nodes are available: pod has unbound" in weights["message"]
        assert summary(out)["Ready"] == ("False", "Unschedulable")
        assert "unbound immediate" in condition(out, "Ready")["message"]

    def test_reports_where_to_reach_the_model_and_how_to_select_its_pods(self) -> None:
        out = status([ready_pod()])
        assert out["endpoint"] == "http://llama.ml.svc:8000"
        assert (
            out["selector"]
            == "app.kubernetes.io/managed-by=glowplug,glowplug.dev/modelserver=llama"
        )

    @pytest.mark.parametrize(
        ("deployment", "pods", "replicas"),
        [
            ({"status": {"replicas": 2}}, [ready_pod()], 2),
            (None, [ready_pod(), ready_pod(uid="pod-2", deleting=True)], 1),
            ({"status": {}}, [ready_pod(), starting_pod()], 2),
        ],
        ids=["from-the-deployment", "pods-not-terminating", "deployment-without-status"],
    )
    def test_replicas(
        self, deployment: Mapping[str, Any] | None, pods: list[dict[str, Any]], replicas: int
    ) -> None:
        assert status(pods, deployment=deployment)["replicas"] == replicas

    def test_flags_are_listed(self) -> None:
        out = status([])
        assert [o["name"] for o in out["optimizations"]] == list(FLAGS)
        assert out["effectiveOptimizations"] == list(FLAGS)
        assert out["rolledBack"] == 0

    # -- cold start

    def test_cold_start_from_the_pod_timestamps_and_the_prefetch_report(self) -> None:
        out = status([ready_pod(created=0, scheduled=2, ready_at=60)])
        assert out["coldStart"] == {
            "lastSeconds": 58.0,  # scheduled -> Ready
            "phases": {"schedule": 2.0, "imagePull": 2.0, "download": 41.0, "start": 14.0},
        }

    def test_image_pull_is_the_gaps_before_each_container_starts(self) -> None:
        # Scheduled at 2, the init container starts at 12 (its image pulled), ends at 45; the
        # worker's own image takes until 51.
        slow = pod(
            init_done(prefetch_succeeded(), started=12), worker_running(True, 51), ready_at=60
        )
        phases = status([slow])["coldStart"]["phases"]
        assert (phases["imagePull"], phases["start"]) == (16.0, 9.0)

    def test_without_a_report_the_download_is_the_init_containers_run(self) -> None:
        ready = pod(init_done(None, started=3, finished=45), worker_running(True), ready_at=60)
        phases = status([ready])["coldStart"]["phases"]
        assert phases == {"schedule": 2.0, "imagePull": 2.0, "download": 42.0, "start": 14.0}

    def test_the_workers_own_phases_join_once_read_for_the_pod_that_turned_ready_last(
        self,
    ) -> None:
        early = ready_pod(uid="pod-1", scheduled=2, ready_at=60)
        late = ready_pod(uid="pod-2", name="llama-6f7d9c-q8r2m", scheduled=50, ready_at=80)
        read = {
            "pod-1": {"import": 9.0, "load": 3.0},
            "pod-2": {"import": 4.5, "config": 0.1, "load": 1.25, "warmup": 0.5},
        }
        phases = status([early, late], replicas=2, worker_phases=read)["coldStart"]["phases"]
        assert phases == {
            "schedule": 50.0, "imagePull": 1.0, "download": 41.0, "start": 34.0,
            "import": 4.5, "config": 0.1, "load": 1.25, "warmup": 0.5,
        }  # fmt: skip

    def test_cold_start_is_the_most_recent_start(self) -> None:
        early = ready_pod(uid="pod-1", scheduled=2, ready_at=60)
        late = ready_pod(uid="pod-2", name="llama-6f7d9c-q8r2m", scheduled=50, ready_at=80)
        out = status([late, early], replicas=2)
        assert out["coldStart"]["lastSeconds"] == 30.0

    def test_cold_start_is_kept_while_no_pod_is_ready(self) -> None:
        first = status([ready_pod()])
        out = status([starting_pod()], previous=stored(first), now=T0 + timedelta(minutes=9))
        assert out["coldStart"] == first["coldStart"]
        assert summary(out)["Ready"] == ("False", "Starting")

    def test_ready_says_the_previous_pods_serve_while_new_flags_roll_out(self) -> None:
        old = ready_pod(uid="pod-1", flags_hash="0ld0ld0ld0ld0ld0")
        new = pod(init_running(), worker_waiting(), uid="pod-2", name="llama-7a8b9c-n3w4p")
        ready = condition(status([old, new]), "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "Updating")
        assert "1 pod(s) of the previous ones serve" in ready["message"]
        # Once the previous pod is on its way out, nothing serves: Starting.
        gone = ready_pod(uid="pod-1", flags_hash="0ld0ld0ld0ld0ld0", deleting=True)
        assert summary(status([gone, new]))["Ready"] == ("False", "Starting")

    def test_no_cold_start_before_a_pod_is_ready(self) -> None:
        assert "coldStart" not in status([starting_pod()])

    # -- writing only on change

    @pytest.mark.parametrize(
        "pods",
        [
            [],
            [starting_pod()],
            [ready_pod()],
            [pod(init_crashlooping(PREFETCH_FAILED), worker_waiting())],
        ],
        ids=["no-pods", "starting", "ready", "prefetch-failed"],
    )
    def test_an_unchanged_world_gives_the_stored_status(self, pods: list[dict[str, Any]]) -> None:
        """The reconciler writes the status only when it differs from the stored one."""
        t1, t2 = T0 + timedelta(minutes=2), T0 + timedelta(minutes=7)
        first = stored(status(pods, now=t1))
        again = status(pods, previous=first, now=t2)
        assert again == first

    def test_conditions_move_when_the_pod_becomes_ready(self) -> None:
        t1, t2 = T0 + timedelta(seconds=30), T0 + timedelta(seconds=61)
        first = stored(status([starting_pod()], now=t1))
        later = status([ready_pod(ready_at=60)], previous=first, now=t2)
        moved = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
        assert moved == {
            "Ready": iso(t2),
            "Progressing": iso(t2),
            "Reconciling": iso(t2),
            "Stalled": iso(t1),  # False while starting and while serving
            "WeightsReady": iso(t2),
            "OptimizationsHealthy": iso(t1),
            "Degraded": iso(t1),
        }

    def test_nothing_null_is_written(self) -> None:
        def nulls(value: Any) -> bool:
            if isinstance(value, dict):
                return any(v is None or nulls(v) for v in value.values())
            if isinstance(value, list):
                return any(nulls(v) for v in value)
            return False

        assert not nulls(status([starting_pod()]))

    def test_a_fixed_spec_clears_the_invalid_spec_conditions(self) -> None:
        invalid = stored(
            invalid_spec_status(_body({"model": {}}), "spec.model.source", "needed", T0)
        )
        out = status([], previous=invalid)
        assert summary(out)["Stalled"] == ("False", "Progressing")
        assert summary(out)["Reconciling"] == ("True", "RollingOut")
        assert summary(out)["Ready"] == ("False", "Starting")


def _body(spec: Mapping[str, Any], status_: Mapping[str, Any] | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": "llama", "namespace": "ml", "generation": 7},
        "spec": dict(spec),
    }
    if status_ is not None:
        raw["status"] = dict(status_)
    return raw


def invalid(raw: Mapping[str, Any], now: datetime) -> Status:
    """As Reconciler._invalid: the field and message of the InvalidSpec parse_spec raises."""
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(raw)
    return invalid_spec_status(raw, caught.value.field, caught.value.message, now)


class TestInvalidSpecStatus:
    BAD = {"model": {"source": "hf://org/name"}, "cache": {"kind": "PersistentVolumeClaim"}}

    def test_names_the_field_and_stops_the_rollout(self) -> None:
        out = invalid(_body(self.BAD), T0)
        assert summary(out) == {
            "Ready": ("False", "InvalidSpec"),
            "Progressing": ("False", "InvalidSpec"),
            "Reconciling": ("False", "InvalidSpec"),
            "Stalled": ("True", "InvalidSpec"),
        }
        assert condition(out, "Ready")["message"].startswith("spec.cache.size: ")
        assert condition(out, "Stalled")["message"] == condition(out, "Ready")["message"]
        assert out["observedGeneration"] == 7
        assert all(c["observedGeneration"] == 7 for c in out["conditions"])

    def test_keeps_what_was_known_before(self) -> None:
        serving = stored(status([ready_pod()]))
        out = invalid(_body(self.BAD, serving), T0 + timedelta(hours=1))
        assert out["endpoint"] == serving["endpoint"]
        assert out["coldStart"] == serving["coldStart"]
        assert condition(out, "Ready")["lastTransitionTime"] == iso(T0 + timedelta(hours=1))

    def test_unchanged_while_the_spec_stays_invalid(self) -> None:
        first = stored(invalid(_body(self.BAD), T0))
        again = invalid(_body(self.BAD, first), T0 + timedelta(minutes=5))
        assert again == first


class TestPrune:
    @pytest.mark.parametrize(
        ("value", "pruned"),
        [
            ({"a": None, "b": 1}, {"b": 1}),
            ({"a": {"b": None, "c": {"d": None}}}, {"a": {"c": {}}}),
            ({"a": [{"b": None, "c": 2}]}, {"a": [{"c": 2}]}),
            ({"zero": 0, "empty": "", "no": False, "none": [], "obj": {}}, None),
        ],
        ids=["top", "nested", "in-lists", "falsy-kept"],
    )
    def test_drops_nulls_like_the_api_server(self, value: Any, pruned: Any) -> None:
        assert prune(value) == (value if pruned is None else pruned)


CRD = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "crds" / "modelserver.yaml").read_text()
)
(VERSION,) = CRD["spec"]["versions"]
VALIDATOR = jsonschema.Draft7Validator(
    VERSION["schema"]["openAPIV3Schema"]["properties"]["status"],
    format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER,
)


def structural_prune(value: Any, schema: Mapping[str, Any]) -> Any:
    """What the API server keeps of `value` under a structural schema: unknown fields go."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return value
        if isinstance(schema.get("additionalProperties"), dict):
            return {
                k: structural_prune(v, schema["additionalProperties"]) for k, v in value.items()
            }
        props = schema.get("properties", {})
        return {k: structural_prune(v, props[k]) for k, v in value.items() if k in props}
    if isinstance(value, list):
        return [structural_prune(v, schema.get("items", {})) for v in value]
    return value


def printer_column(status_: Mapping[str, Any], path: str) -> Any:
    """Evaluate the simple JSONPaths of additionalPrinterColumns: .a.b and [?(@.k=="v")].f"""
    value: Any = {"status": status_}
    for step in re.findall(r'\.(\w+)|\[\?\(@\.(\w+)=="([^"]*)"\)\]', path):
        name, key, wanted = step
        if name:
            value = value.get(name) if isinstance(value, dict) else None
        else:
            value = next((v for v in value or [] if v.get(key) == wanted), None)
    return value


SCENARIOS = {
    "no-pods": [],
    "starting": [starting_pod()],
    "ready": [ready_pod()],
    "prefetch-failed": [pod(init_crashlooping(PREFETCH_FAILED), worker_waiting())],
    "image-pull": [pod(init_image_pull(), worker_waiting())],
}


class TestStatusAgainstTheCrd:
    SCHEMA = VERSION["schema"]["openAPIV3Schema"]["properties"]["status"]

    @pytest.mark.parametrize("pods", SCENARIOS.values(), ids=SCENARIOS.keys())
    def test_the_api_server_stores_it_unchanged(self, pods: list[dict[str, Any]]) -> None:
        """Valid under the CRD (types, enums, required fields, date-times), and nothing pruned:
        a field the CRD does not know is dropped on write, and the operator would then see a
        different status on every reconcile and write it again, forever."""
        now = T0 + timedelta(minutes=2)
        out = stored(status(pods, now=now, decided=decision({}, now, pods)))
        VALIDATOR.validate(out)
        assert structural_prune(out, self.SCHEMA) == out

    def test_invalid_spec_status_is_not_pruned(self) -> None:
        bad = {"model": {"source": "ftp://x"}}
        out = stored(invalid(_body(bad, stored(status([ready_pod()]))), T0))
        VALIDATOR.validate(out)
        assert structural_prune(out, self.SCHEMA) == out

    def test_kubectl_get_columns(self) -> None:
        out = stored(status([ready_pod()]))
        columns = {
            c["name"]: printer_column(out, c["jsonPath"])
            for c in VERSION["additionalPrinterColumns"]
            if c["jsonPath"].startswith(".status")
        }
        assert columns == {"Ready": "True", "Replicas": "1/1", "Cold start": 58.0, "Rolled back": 0}

    def test_scale_subresource_reads_replicas_and_selector(self) -> None:
        scale = VERSION["subresources"]["scale"]
        out = stored(status([ready_pod()], deployment={"status": {"replicas": 1}}))
        assert printer_column(out, scale["statusReplicasPath"]) == 1
        assert printer_column(out, scale["labelSelectorPath"]) == label_selector(OWNER)
