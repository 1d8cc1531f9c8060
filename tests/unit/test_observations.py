"""observe_pod / observe_deployment_progress on raw API objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from glowplug_operator.contract import flag_fingerprint, flag_set_hash
from glowplug_operator.rollback.observations import (
    observe_deployment_progress,
    observe_pod,
    startup_deadline,
)
from glowplug_worker.report import ErrorInfo, TerminationReport

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T0 = "2026-11-25T11:50:00Z"

FAILED_IMPORT = TerminationReport(
    command="serve",
    outcome="failed",
    phase="import",
    optimizations=["background-import"],
    flag="background-import",
    error=ErrorInfo("ImportError", "partially initialized module 'transformers'"),
).to_json()
PREFETCH_OK = TerminationReport(command="prefetch", outcome="succeeded").to_json()


def pod(
    *,
    flags: str | None = "fast-load,hf-offline",
    worker: dict[str, Any] | None = None,
    init: dict[str, Any] | None = None,
    ready: bool = False,
    scheduled: bool = True,
    deleting: bool = False,
    phase: str = "Running",
    label: str | None = None,
) -> dict[str, Any]:
    annotations = {} if flags is None else {"glowplug.dev/optimizations": flags}
    labels = {} if label is None else {"glowplug.dev/optimizations-hash": label}
    conditions = [
        {
            "type": "PodScheduled",
            "status": "True" if scheduled else "False",
            "lastTransitionTime": T0,
        },
        {
            "type": "Ready",
            "status": "True" if ready else "False",
            "lastTransitionTime": "2026-11-25T11:55:00Z",
        },
    ]
    meta: dict[str, Any] = {
        "name": "llama-abc",
        "uid": "uid-1",
        "creationTimestamp": T0,
        "annotations": annotations,
        "labels": labels,
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-25T11:59:00Z"
    status: dict[str, Any] = {"phase": phase, "conditions": conditions}
    if worker is not None:
        status["containerStatuses"] = [{"name": "sidecar", "restartCount": 9}, worker]
    if init is not None:
        status["initContainerStatuses"] = [init]
    return {"metadata": meta, "status": status}


def running(restarts: int = 0, **last: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": "worker",
        "restartCount": restarts,
        "state": {"running": {"startedAt": "2026-11-25T11:58:00Z"}},
    }
    if last:
        out["lastState"] = {"terminated": last}
    return out


def crashlooping(restarts: int, **last: Any) -> dict[str, Any]:
    return {
        "name": "worker",
        "restartCount": restarts,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", **last}},
    }


def terminated(
    exit_code: int, reason: str, message: str | None = None, name: str = "worker", restarts: int = 0
) -> dict[str, Any]:
    term: dict[str, Any] = {"exitCode": exit_code, "reason": reason}
    if message is not None:
        term["message"] = message
    return {"name": name, "restartCount": restarts, "state": {"terminated": term}}


def waiting(reason: str, name: str = "worker") -> dict[str, Any]:
    return {"name": name, "restartCount": 0, "state": {"waiting": {"reason": reason}}}


CASES = [
    pytest.param(
        pod(worker=running(), ready=True),
        dict(ready=True, failed_starts=0, waiting_reason=None, report=None, oom=False),
        id="ready-first-start",
    ),
    pytest.param(
        pod(worker=crashlooping(2, message=FAILED_IMPORT)),
        dict(
            ready=False,
            failed_starts=3,
            waiting_reason="CrashLoopBackOff",
            report="background-import",
            oom=False,
        ),
        id="crashloop-with-report",
    ),
    pytest.param(
        pod(worker=terminated(1, "Error", FAILED_IMPORT)),
        dict(
            ready=False, failed_starts=1, waiting_reason=None, report="background-import", oom=False
        ),
        id="first-crash-terminated",
    ),
    pytest.param(
        pod(worker=running(1, exitCode=1, reason="Error", message=FAILED_IMPORT)),
        dict(
            ready=False, failed_starts=1, waiting_reason=None, report="background-import", oom=False
        ),
        id="restarted-after-a-crash",
    ),
    pytest.param(
        pod(worker=terminated(137, "OOMKilled")),
        dict(ready=False, failed_starts=1, waiting_reason=None, report=None, oom=True),
        id="oom-killed",
    ),
    pytest.param(
        pod(worker=waiting("ImagePullBackOff"), phase="Pending"),
        dict(
            ready=False, failed_starts=0, waiting_reason="ImagePullBackOff", report=None, oom=False
        ),
        id="image-pull",
    ),
    pytest.param(
        pod(
            worker=waiting("PodInitializing"),
            init={**crashlooping(1, message="plain text, not a report"), "name": "prefetch"},
            phase="Pending",
        ),
        dict(
            ready=False, failed_starts=2, waiting_reason="CrashLoopBackOff", report=None, oom=False
        ),
        id="init-crashloop-non-report-message",
    ),
    pytest.param(
        pod(worker=running(), init=terminated(0, "Completed", PREFETCH_OK, name="prefetch")),
        dict(ready=False, failed_starts=0, waiting_reason=None, report=None, oom=False),
        id="init-succeeded-report-is-not-a-failure",
    ),
    pytest.param(
        pod(worker=terminated(143, "Error", restarts=2), deleting=True),
        dict(ready=False, failed_starts=2, waiting_reason=None, report=None, oom=False),
        id="deleting-pod-its-stop-is-not-a-failure",
    ),
    pytest.param(
        pod(worker=None, scheduled=False, phase="Pending"),
        dict(ready=False, failed_starts=0, waiting_reason=None, report=None, oom=False),
        id="unscheduled-no-containers",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_observe_pod(raw: dict[str, Any], expected: dict[str, Any]) -> None:
    seen = observe_pod(raw, NOW)
    assert seen.ready == expected["ready"]
    assert seen.failed_starts == expected["failed_starts"]
    assert seen.waiting_reason == expected["waiting_reason"]
    assert (seen.report.flag if seen.report else None) == expected["report"]
    assert seen.oom_killed == expected["oom"]


def test_identity_flags_times_and_hash() -> None:
    seen = observe_pod(pod(worker=running(), ready=True), NOW)
    assert (seen.name, seen.uid) == ("llama-abc", "uid-1")
    assert seen.flags == ("fast-load", "hf-offline")
    assert seen.flags_hash == flag_set_hash(["hf-offline", "fast-load"])
    assert seen.scheduled == datetime(2026, 11, 25, 11, 50, tzinfo=UTC)
    assert seen.ready_since == datetime(2026, 11, 25, 11, 55, tzinfo=UTC)
    assert seen.attempt_started == datetime(2026, 11, 25, 11, 58, tzinfo=UTC)  # the worker's
    assert seen.phase == "Running" and not seen.deleting


def test_the_label_wins_over_a_hash_of_the_annotation() -> None:
    assert observe_pod(pod(label="abc123"), NOW).flags_hash == "abc123"


@pytest.mark.parametrize(
    ("annotation", "flags"),
    [("", ()), (None, ()), (" fast-load , ,hf-offline", ("fast-load", "hf-offline"))],
    ids=["empty-string-is-no-flags", "no-annotation", "spaces-and-empty-items"],
)
def test_flag_annotation_parsing(annotation: str | None, flags: tuple[str, ...]) -> None:
    assert observe_pod(pod(flags=annotation), NOW).flags == flags


def test_a_restarted_attempt_starts_when_the_container_started() -> None:
    seen = observe_pod(pod(worker=running(1, exitCode=1, reason="Error")), NOW)
    assert seen.attempt_started == datetime(2026, 11, 25, 11, 58, tzinfo=UTC)


def test_garbage_pod_does_not_raise() -> None:
    seen = observe_pod({"metadata": None, "status": {"containerStatuses": "x"}}, NOW)
    assert (seen.uid, seen.flags, seen.failed_starts, seen.ready) == ("", (), 0, False)


def test_hash_is_order_insensitive_and_sees_definition_changes() -> None:
    assert flag_set_hash(["a", "b"]) == flag_set_hash(["b", "a"])
    assert flag_set_hash(["a"]) != flag_set_hash(["a", "b"])
    before = flag_fingerprint({"name": "x", "env": {"A": "1"}})
    after = flag_fingerprint({"name": "x", "env": {"A": "2"}})
    assert flag_set_hash(["x"], {"x": before}) != flag_set_hash(["x"], {"x": after})
    assert len(flag_set_hash(["a"])) <= 63


@pytest.mark.parametrize(
    ("condition", "stuck"),
    [
        (
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet has timed out progressing.",
            },
            True,
        ),
        ({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}, False),
        ({"type": "Available", "status": "False"}, None),
    ],
    ids=["deadline-exceeded", "progressing", "no-progressing-condition"],
)
def test_deployment_progress(condition: dict[str, Any], stuck: bool | None) -> None:
    progress = observe_deployment_progress({"status": {"conditions": [condition]}})
    if stuck is None:
        assert progress is None
    else:
        assert progress is not None and progress.stuck == stuck


def test_a_replica_failure_is_the_api_servers_refusal_of_the_pods() -> None:
    refusal = {"type": "ReplicaFailure", "status": "True", "message": "RuntimeClass not found"}
    progressing = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
    for conditions in ([refusal], [progressing, refusal]):
        progress = observe_deployment_progress({"status": {"conditions": conditions}})
        assert progress is not None and progress.replica_failure == "RuntimeClass not found"
    progress = observe_deployment_progress({"status": {"conditions": [progressing]}})
    assert progress is not None and progress.replica_failure is None


def test_budget_clock_in_pods_is_relative_to_now() -> None:
    seen = observe_pod(pod(worker=running()), NOW + timedelta(hours=1))
    assert seen.observed_at == NOW + timedelta(hours=1)


@pytest.mark.parametrize(
    ("raw", "deadline"),
    [
        (pod(worker=running()), datetime(2026, 11, 25, 12, 13, tzinfo=UTC)),
        (pod(worker=waiting("PodInitializing"), init=running() | {"name": "prefetch"}), None),
        (pod(worker=waiting("ContainerCreating")), None),
        (pod(worker=None), None),
        (
            pod(worker=running(1, exitCode=1, reason="Error")),
            datetime(2026, 11, 25, 12, 13, tzinfo=UTC),
        ),
        (pod(worker=running(), ready=True), None),
        (pod(worker=waiting("ImagePullBackOff")), None),
        (pod(worker=running(), deleting=True), None),
    ],
    ids=[
        "first-attempt-from-the-worker-start",
        "downloading-in-the-init-container",
        "container-creating",
        "no-container-status-yet",
        "restart-from-container-start",
        "ready",
        "blocked",
        "deleting",
    ],
)
def test_startup_deadline(raw: dict[str, Any], deadline: datetime | None) -> None:
    assert startup_deadline(observe_pod(raw, NOW), 900) == deadline
