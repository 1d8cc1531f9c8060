"""Per-flag rollback, end to end (issue 6): kwok Stages decide how pods behave depending on the
startup flags the operator rendered into them; the real operator must find the flag to blame.

Each test records the pod starts and the seconds from the first failure to Ready; the session
prints them as a table and writes bench/results/rollback_scenarios.md (see conftest.py).
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from tests.cluster import behaviours as b
from tests.cluster.kube import Kubectl, wait_until
from tests.cluster.manifests import modelserver, optimizations
from tests.cluster.operator import OperatorProcess

FLAGS = ["prefetch-weights", "background-import", "fast-load", "slim-imports"]
REPORT = {
    "schema": "glowplug.dev/termination-report/v1",
    "command": "serve",
    "outcome": "failed",
    "phase": "load",
    "optimizations": FLAGS,
    "flag": None,
    "error": {
        "type": "RuntimeError",
        "message": "CUDA error: misaligned address (pinned ring buffer)",
    },
    "phases": {"import": 5.9, "config": 0.2},
    "download": None,
}


def _modelserver(name: str, flags: list[str], **startup: Any) -> dict[str, Any]:
    return modelserver(name, startup={"optimizations": optimizations(*flags), **startup})


def _status(k: Kubectl, name: str) -> dict[str, Any]:
    return k.get("ms", name).get("status") or {}


def _states(k: Kubectl, name: str) -> dict[str, str]:
    return {o["name"]: o["state"] for o in _status(k, name).get("optimizations", [])}


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def _is_ready(k: Kubectl, name: str) -> bool:
    return _condition(_status(k, name), "Ready").get("status") == "True"


def _first_failure(k: Kubectl, name: str, timeout: float = 60) -> float:
    def failed() -> bool:
        pods = k.get("pods", selector=f"glowplug.dev/modelserver={name}")["items"]
        return any(
            s.get("restartCount", 0) > 0
            or (s.get("state") or {}).get("waiting", {}).get("reason") == "CrashLoopBackOff"
            for p in pods
            for s in (p.get("status") or {}).get("containerStatuses", [])
        )

    wait_until("a failed start", failed, timeout=timeout, interval=0.1)
    return time.monotonic()


def _events(k: Kubectl, name: str) -> list[str]:
    items = k.get("events")["items"]
    mine = [
        e
        for e in items
        if e["involvedObject"]["name"] == name and e["involvedObject"]["kind"] == "ModelServer"
    ]
    return [
        f"{e['type']} {e['reason']}: {e['message']}"
        for e in sorted(mine, key=lambda e: e["metadata"]["creationTimestamp"])
    ]


def _assert_spec_untouched(k: Kubectl, name: str, applied: dict[str, Any]) -> None:
    """GitOps: the operator never writes spec; generation stays 1."""
    live = k.get("ms", name)
    assert live["metadata"]["generation"] == 1
    assert [o["name"] for o in live["spec"]["startup"]["optimizations"]] == [
        o["name"] for o in applied["spec"]["startup"]["optimizations"]
    ]


def test_a_flag_named_by_the_report_is_rolled_back_after_one_failed_start(
    kubectl: Kubectl, sim_namespace: str, stages, sim_operator: OperatorProcess, rollback_results
) -> None:
    k = kubectl.in_namespace(sim_namespace)
    stages.add(
        b.crash_loop("bad", [b.flag_on("fast-load")], message=json.dumps(REPORT), delay_ms=300)
    )
    stages.add(b.ready("ok", [b.flag_off("fast-load")], delay_ms=300))
    ms = _modelserver("evidence", FLAGS)
    k.apply(ms)

    t0 = _first_failure(k, "evidence")
    wait_until("Ready without fast-load", lambda: _is_ready(k, "evidence"), timeout=60)
    elapsed = time.monotonic() - t0

    states = _states(k, "evidence")
    assert states == {
        "prefetch-weights": "Active",
        "background-import": "Active",
        "fast-load": "RolledBack",
        "slim-imports": "Active",
    }
    entry = next(o for o in _status(k, "evidence")["optimizations"] if o["name"] == "fast-load")
    assert entry["reason"] == "FailedInPhase"
    assert "misaligned address" in entry["message"]
    assert _status(k, "evidence")["effectiveOptimizations"] == [
        "prefetch-weights",
        "background-import",
        "slim-imports",
    ]
    # One failed start of the full set, then the set without fast-load.
    assert _status(k, "evidence")["rollout"]["sets"][0]["failures"] >= 1
    events = _events(k, "evidence")
    assert any("OptimizationRolledBack" in e and "fast-load" in e for e in events), events
    assert "OptimizationRolledBack" in k.run("describe", "ms", "evidence")
    mine = {"namespace": sim_namespace, "modelserver": "evidence"}
    samples = sim_operator.samples()
    assert (
        samples[
            (
                "glowplug_optimization_rollbacks_total",
                {**mine, "flag": "fast-load", "reason": "FailedInPhase"},
            )
        ]
        == 1
    )
    assert (
        samples[
            ("glowplug_optimization_state", {**mine, "flag": "fast-load", "state": "RolledBack"})
        ]
        == 1
    )
    assert (
        samples[
            ("glowplug_optimization_state", {**mine, "flag": "slim-imports", "state": "Active"})
        ]
        == 1
    )
    _assert_spec_untouched(k, "evidence", ms)
    rollback_results.add("1 evidence (report names phase)", k, "evidence", elapsed, events)


def test_a_flag_without_evidence_is_found_by_bisection(
    kubectl: Kubectl, sim_namespace: str, stages, sim_operator: OperatorProcess, rollback_results
) -> None:
    """The startup probe never passes with slim-imports: the kubelet kills the container
    (exit 137, no report), again and again."""
    k = kubectl.in_namespace(sim_namespace)
    stages.add(b.crash_loop("hang", [b.flag_on("slim-imports")], exit_code=137, delay_ms=500))
    stages.add(b.ready("ok", [b.flag_off("slim-imports")], delay_ms=300))
    ms = _modelserver("bisect", FLAGS)
    k.apply(ms)

    t0 = _first_failure(k, "bisect")
    wait_until(
        "Ready after the bisection",
        lambda: _is_ready(k, "bisect") and _states(k, "bisect").get("slim-imports") == "RolledBack",
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    states = _states(k, "bisect")
    assert states == {
        "prefetch-weights": "Active",
        "background-import": "Active",
        "fast-load": "Active",
        "slim-imports": "RolledBack",
    }
    status = _status(k, "bisect")
    trial_sets = [s for s in status["rollout"]["sets"] if s.get("starts")]
    # The full set failed once; then at most log2(4) + 1 = 3 trials, plus the final set.
    assert len(trial_sets) <= 1 + 3 + 1, trial_sets
    events = _events(k, "bisect")
    assert any("BisectingOptimizations" in e for e in events), events
    _assert_spec_untouched(k, "bisect", ms)
    rollback_results.add("2 bisection (probe kills, no report)", k, "bisect", elapsed, events)


def test_a_start_broken_without_flags_is_degraded_and_no_flag_is_blamed(
    kubectl: Kubectl, sim_namespace: str, stages, sim_operator: OperatorProcess, rollback_results
) -> None:
    k = kubectl.in_namespace(sim_namespace)
    stages.add(b.crash_loop("all", [], exit_code=1, delay_ms=300))
    ms = _modelserver("broken", ["prefetch-weights", "fast-load"])
    k.apply(ms)

    _first_failure(k, "broken")

    def degraded() -> bool:
        return (
            _condition(_status(k, "broken"), "Degraded").get("reason")
            == "StartupFailedWithoutFlags"
        )

    wait_until("Degraded StartupFailedWithoutFlags", degraded, timeout=90)
    status = _status(k, "broken")
    assert _condition(status, "Ready")["status"] == "False"
    assert "RolledBack" not in _states(k, "broken").values()
    assert status["rolledBack"] == 0
    # Template changes stay within the churn budget, and stop: no new ReplicaSets from here on.
    replica_sets = len(k.get("replicasets")["items"])
    assert replica_sets <= 8 + 1
    time.sleep(6)
    assert len(k.get("replicasets")["items"]) == replica_sets
    events = _events(k, "broken")
    _assert_spec_untouched(k, "broken", ms)
    rollback_results.add("3 broken without flags", k, "broken", None, events)


def test_an_intermittent_flag_is_blamed_after_the_threshold_not_before(
    kubectl: Kubectl, sim_namespace: str, stages, sim_operator: OperatorProcess, rollback_results
) -> None:
    """With background-import on, each pod's first start fails (a race), the next succeeds."""
    k = kubectl.in_namespace(sim_namespace)
    ms = _modelserver("racy", ["background-import", "fast-load"])
    first_start, later_start = b.first_start(), b.after_a_failure()
    stages.add(b.ready("ok", [b.flag_off("background-import")], delay_ms=300))
    stages.add(
        b.ready("ok-after-first", [b.flag_on("background-import"), later_start], delay_ms=300)
    )
    # Until the race shows up, every pod is fine: both flags become Active.
    stages.add(b.ready("ok-first", [b.flag_on("background-import"), first_start], delay_ms=300))
    k.apply(ms)
    wait_until(
        "both flags Active", lambda: set(_states(k, "racy").values()) == {"Active"}, timeout=60
    )
    stages.cleanup_one("ok-first")
    stages.add(b.crash_loop("race", [b.flag_on("background-import"), first_start], delay_ms=300))

    def replace_pod() -> None:  # e.g. a node drain: a new pod, a new start
        k.run("delete", "pods", "-l", "glowplug.dev/modelserver=racy", "--wait=false")

    replace_pod()
    t0 = _first_failure(k, "racy")
    wait_until("Ready again after one failed start", lambda: _is_ready(k, "racy"), timeout=60)
    time.sleep(3)
    assert _states(k, "racy") == {"background-import": "Active", "fast-load": "Active"}, (
        "one failure must not be blamed"
    )

    replace_pod()
    wait_until(
        "background-import blamed",
        lambda: (
            _states(k, "racy").get("background-import") == "RolledBack" and _is_ready(k, "racy")
        ),
        timeout=180,
    )
    elapsed = time.monotonic() - t0
    assert _states(k, "racy")["fast-load"] == "Active"
    entry = next(o for o in _status(k, "racy")["optimizations"] if o["name"] == "background-import")
    assert entry["reason"] in ("IntermittentFailures", "Bisected")
    events = _events(k, "racy")
    _assert_spec_untouched(k, "racy", ms)
    rollback_results.add("4 intermittent (fails 1st start of each pod)", k, "racy", elapsed, events)


def test_an_operator_killed_mid_bisection_continues_from_status(
    kubectl: Kubectl, sim_namespace: str, stages, sim_operator: OperatorProcess, rollback_results
) -> None:
    k = kubectl.in_namespace(sim_namespace)
    stages.add(b.crash_loop("hang", [b.flag_on("background-import")], exit_code=137, delay_ms=1500))
    stages.add(b.ready("ok", [b.flag_off("background-import")], delay_ms=1500))
    ms = _modelserver("restarted", FLAGS)
    k.apply(ms)
    t0 = _first_failure(k, "restarted")
    wait_until(
        "a bisection in progress",
        lambda: (
            _condition(_status(k, "restarted"), "OptimizationsHealthy").get("reason") == "Bisecting"
        ),
        timeout=60,
        interval=0.1,
    )
    sim_operator.kill(signal.SIGKILL)
    time.sleep(2)
    sim_operator.start()
    wait_until(
        "the same result as without the restart",
        lambda: (
            _is_ready(k, "restarted")
            and _states(k, "restarted").get("background-import") == "RolledBack"
        ),
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    assert _states(k, "restarted") == {
        "prefetch-weights": "Active",
        "background-import": "RolledBack",
        "fast-load": "Active",
        "slim-imports": "Active",
    }
    events = _events(k, "restarted")
    _assert_spec_untouched(k, "restarted", ms)
    rollback_results.add("5 operator SIGKILLed mid-bisection", k, "restarted", elapsed, events)


def test_the_retry_annotation_brings_a_rolled_back_flag_back(
    kubectl: Kubectl, sim_namespace: str, stages, sim_operator: OperatorProcess
) -> None:
    k = kubectl.in_namespace(sim_namespace)
    stages.add(
        b.crash_loop("bad", [b.flag_on("fast-load")], message=json.dumps(REPORT), delay_ms=300)
    )
    stages.add(b.ready("ok", [b.flag_off("fast-load")], delay_ms=300))
    ms = _modelserver("retried", ["prefetch-weights", "fast-load"])
    k.apply(ms)
    wait_until(
        "fast-load rolled back",
        lambda: _states(k, "retried").get("fast-load") == "RolledBack" and _is_ready(k, "retried"),
        timeout=60,
    )

    # The cause is fixed (a new driver, say): pods with fast-load start fine now.
    stages.cleanup_one("bad")
    stages.add(b.ready("fixed", [b.flag_on("fast-load")], delay_ms=300))
    k.run("annotate", "ms/retried", "glowplug.dev/retry-optimizations=fast-load", "--overwrite")
    wait_until(
        "fast-load in Trial",
        lambda: _states(k, "retried").get("fast-load") in ("Trial", "Active"),
        timeout=30,
        interval=0.1,
    )
    wait_until(
        "fast-load Active again",
        lambda: _states(k, "retried").get("fast-load") == "Active",
        timeout=60,
    )
    deployment = k.get("deployment", "retried")
    assert (
        deployment["spec"]["template"]["metadata"]["annotations"]["glowplug.dev/optimizations"]
        == "prefetch-weights,fast-load"
    )
    assert any("RetryingOptimization" in e for e in _events(k, "retried"))
    live = k.get("ms", "retried")
    assert live["metadata"]["generation"] == 1


@pytest.mark.parametrize("policy", ["Off"])
def test_rollback_off_only_reports(
    kubectl: Kubectl, sim_namespace: str, stages, sim_operator: OperatorProcess, policy: str
) -> None:
    k = kubectl.in_namespace(sim_namespace)
    stages.add(
        b.crash_loop("bad", [b.flag_on("fast-load")], message=json.dumps(REPORT), delay_ms=300)
    )
    stages.add(b.ready("ok", [b.flag_off("fast-load")], delay_ms=300))
    k.apply(_modelserver("reporting", ["prefetch-weights", "fast-load"], rollback=policy))
    wait_until(
        "fast-load reported as failing",
        lambda: any(
            o["name"] == "fast-load" and o["reason"] == "WouldRollBack"
            for o in _status(k, "reporting").get("optimizations", [])
        ),
        timeout=60,
    )
    assert _states(k, "reporting")["fast-load"] != "RolledBack"
    annotations = k.get("deployment", "reporting")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["glowplug.dev/optimizations"] == "prefetch-weights,fast-load"
    assert len(k.get("replicasets")["items"]) == 1
