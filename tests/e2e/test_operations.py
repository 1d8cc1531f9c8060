"""A rollback as platform teams see it (issue 13): GitOps health (kstatus, the library Flux uses,
and the Argo CD health Lua of examples/argocd/) on every status the operator writes, `kubectl
glowplug`, the operator's log lines, and a clean shutdown.

With GLOWPLUG_RECORD_STATUSES=1 the statuses seen and their verdicts are written to
tests/data/statuses/, where tests/unit/test_gitops_health.py checks them without a cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import behaviours as b
from tests.cluster.health import ObjectWatch, argocd_health, kstatus
from tests.cluster.kube import ROOT, Kubectl, wait_until
from tests.cluster.manifests import modelserver, optimizations
from tests.cluster.operator import OperatorProcess

FLAGS = ["prefetch-weights", "fast-load", "slim-imports"]
REPORT = {
    "schema": "glowplug.dev/termination-report/v1",
    "command": "serve",
    "outcome": "failed",
    "phase": "load",
    "optimizations": FLAGS,
    "flag": None,
    "error": {"type": "RuntimeError", "message": "CUDA error: misaligned address"},
    "phases": {"import": 5.9, "config": 0.2},
    "download": None,
}
RECORDED = ROOT / "tests" / "data" / "statuses"


def _modelserver(name: str, flags: list[str], **spec: Any) -> dict[str, Any]:
    return modelserver(name, startup={"optimizations": optimizations(*flags)}, **spec)


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def _states(obj: dict[str, Any]) -> dict[str, str]:
    return {o["name"]: o["state"] for o in (obj.get("status") or {}).get("optimizations", [])}


def _judge(objects: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Per object with a status: (kstatus verdict, Argo CD health, Argo CD message)."""
    verdicts = kstatus(objects)
    out = []
    for obj, judged in zip(objects, verdicts, strict=True):
        assert judged.get("error") is None, judged
        argo = argocd_health(obj)
        out.append((judged["status"], argo["status"], argo["message"]))
    return out


def _record(name: str, objects: list[dict[str, Any]], judged: list[tuple[str, str, str]]) -> None:
    if os.environ.get("GLOWPLUG_RECORD_STATUSES") != "1":
        return
    steps = [
        {
            "object": {
                "apiVersion": o["apiVersion"],
                "kind": o["kind"],
                "metadata": {
                    "name": o["metadata"]["name"],
                    "generation": o["metadata"]["generation"],
                },
                # status.rollout.pods (per-pod counting records) is left out: size only.
                "status": {
                    **o["status"],
                    "rollout": {
                        k: v for k, v in (o["status"].get("rollout") or {}).items() if k != "pods"
                    },
                },
            },
            "kstatus": k,
            "argocd": a,
        }
        for o, (k, a, _) in zip(objects, judged, strict=True)
    ]
    RECORDED.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join(json.dumps(step, separators=(",", ":")) for step in steps)
    (RECORDED / f"{name}.json").write_text('{"steps": [\n' + lines + "\n]}\n")  # a step a line


def plugin(k: Kubectl, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl glowplug ARGS` as a user types it: kubectl finds kubectl-glowplug on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        [k.binary, "glowplug", f"--kubeconfig={k.kubeconfig}", f"--namespace={k.namespace}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": path, "KUBECONFIG": k.kubeconfig},
    )


def _events(k: Kubectl, name: str) -> list[str]:
    items = k.get("events")["items"]
    return [e["reason"] for e in items if e["involvedObject"]["name"] == name]


def test_a_rollback_through_gitops_health_kubectl_glowplug_and_the_log(
    kubectl: Kubectl,
    sim_namespace: str,
    stages,
    sim_operator: OperatorProcess,
    room_for: Callable[[int], None],
) -> None:
    room_for(2)  # as in the bisection below: no verdict on another test's GPUs
    k = kubectl.in_namespace(sim_namespace)
    stages.add(
        b.crash_loop("bad", [b.flag_on("fast-load")], message=json.dumps(REPORT), delay_ms=300)
    )
    stages.add(b.ready("ok", [b.flag_off("fast-load")], delay_ms=300))
    watch = ObjectWatch(k, "modelservers", "evidence")
    k.apply(_modelserver("evidence", FLAGS))

    def served_without_fast_load() -> bool:
        live = k.get("ms", "evidence")
        return (
            _condition(live, "Ready").get("status") == "True"
            and _states(live).get("fast-load") == "RolledBack"
        )

    wait_until("Ready without fast-load", served_without_fast_load, timeout=90)
    objects = [o for o in watch.stop() if o.get("status")]

    # --- GitOps health on every status written, in order ------------------------------------
    judged = _judge(objects)
    _record("rollback-by-report", objects, judged)
    shown = [
        (k_, a, _condition(o, "Ready").get("reason"), _states(o).get("fast-load"))
        for o, (k_, a, _) in zip(objects, judged, strict=True)
    ]
    assert len(objects) >= 3, shown
    assert judged[0][:2] == ("InProgress", "Progressing"), shown
    assert judged[-1][:2] == ("Current", "Healthy"), shown
    assert "fast-load" in judged[-1][2], judged[-1]
    assert not [j for j in judged if j[0] == "Failed" or j[1] == "Degraded"], shown
    # While the pods without fast-load start, both say the rollout is under way.
    in_flight = [
        j
        for o, j in zip(objects, judged, strict=True)
        if _states(o).get("fast-load") == "RolledBack"
        and _condition(o, "Ready").get("status") != "True"
    ]
    assert in_flight, shown
    assert all(j[:2] == ("InProgress", "Progressing") for j in in_flight), shown

    # --- kubectl glowplug --------------------------------------------------------------------
    status = plugin(k, "status", "evidence")
    assert status.returncode == 0, status.stderr
    print(status.stdout)
    for expected in ("Ready", "Reconciling", "COLD START", "RolledBack", "FailedInPhase"):
        assert expected in status.stdout, status.stdout
    assert "OptimizationRolledBack" in status.stdout, status.stdout
    # kwok's starts take ~0 s per phase: the bars themselves are tested in
    # tests/unit/test_kubectl_plugin.py; here the phases the pod shows are listed.
    assert "COLD START" in status.stdout and "  schedule  " in status.stdout, status.stdout
    explain = plugin(k, "explain-rollback", "evidence")
    assert explain.returncode == 0, explain.stderr
    print(explain.stdout)
    assert "fast-load: RolledBack (FailedInPhase)" in explain.stdout
    assert "misaligned address" in explain.stdout
    assert "phase load" in explain.stdout
    retry = plugin(k, "retry", "evidence")
    assert retry.returncode == 0, retry.stderr
    live = k.get("ms", "evidence")
    assert live["metadata"]["annotations"]["glowplug.dev/retry-optimizations"] == "fast-load"
    wait_until(
        "the operator retrying fast-load",
        lambda: "RetryingOptimization" in _events(k, "evidence"),
        timeout=30,
    )
    unknown = plugin(k, "retry", "evidence", "no-such-flag")
    assert unknown.returncode == 1
    assert "no-such-flag: not a flag of this ModelServer" in unknown.stderr

    # --- the operator's log: one line per decision, naming the ModelServer -------------------
    where = f"modelserver {sim_namespace}/evidence: "
    wait_until("the retry in the log", lambda: f"{where}RetryingOptimization" in sim_operator.log())
    log = sim_operator.log()
    assert f"{where}OptimizationRolledBack: rolled back flag fast-load" in log, log
    assert f"{where}Ready: 1/1 replicas serve the model" in log, log

    # --- a clean shutdown, also when SIGTERM comes twice (a wrapper and the process group) ----
    assert sim_operator.proc is not None
    sim_operator.proc.send_signal(signal.SIGTERM)
    sim_operator.proc.send_signal(signal.SIGTERM)
    assert sim_operator.proc.wait(timeout=30) == 0
    log = sim_operator.log()
    assert "SIGTERM received: stopping" in log
    assert "Traceback" not in log, log
    assert "InvalidStateError" not in log, log


def test_a_bisection_is_in_progress_for_gitops_tools_until_served(
    kubectl: Kubectl,
    sim_namespace: str,
    stages,
    sim_operator: OperatorProcess,
    room_for: Callable[[int], None],
) -> None:
    """No evidence (the probe kills slim-imports' starts): the operator bisects; kstatus and Argo
    CD say the rollout is under way through every step, never Failed, and Healthy at the end."""
    room_for(2)  # a pod and a trial's: the verdicts must not see the GPUs of earlier tests
    k = kubectl.in_namespace(sim_namespace)
    stages.add(b.crash_loop("hang", [b.flag_on("slim-imports")], exit_code=137, delay_ms=500))
    stages.add(b.ready("ok", [b.flag_off("slim-imports")], delay_ms=300))
    watch = ObjectWatch(k, "modelservers", "bisect")
    k.apply(_modelserver("bisect", FLAGS))

    def served_without_slim_imports() -> bool:
        live = k.get("ms", "bisect")
        return (
            _condition(live, "Ready").get("status") == "True"
            and _states(live).get("slim-imports") == "RolledBack"
        )

    wait_until("Ready after the bisection", served_without_slim_imports, timeout=120)
    objects = [o for o in watch.stop() if o.get("status")]
    judged = _judge(objects)
    _record("bisection", objects, judged)
    shown = [(j[0], j[1], _condition(o, "Reconciling").get("reason")) for o, j in
             zip(objects, judged, strict=True)]  # fmt: skip
    bisecting = [
        j
        for o, j in zip(objects, judged, strict=True)
        if _condition(o, "Reconciling").get("reason") == "Bisecting"
    ]
    assert bisecting, shown
    assert all(j[:2] == ("InProgress", "Progressing") for j in bisecting), shown
    assert all("Bisecting" in j[2] for j in bisecting), shown
    assert not [j for j in judged if j[0] == "Failed" or j[1] == "Degraded"], shown
    assert judged[-1][:2] == ("Current", "Healthy"), shown


@pytest.fixture
def json_operator(
    kubectl: Kubectl, crd: None, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator with GLOWPLUG_LOG_FORMAT=json, watching this test's namespace."""
    process = OperatorProcess(
        kubectl.kubeconfig, namespace, tmp_path, resync_seconds="5", log_format="json"
    ).start()
    yield process
    process.kill(signal.SIGTERM)


def test_a_stalled_modelserver_fails_health_checks_until_fixed_in_json_logs(
    kubectl: Kubectl, namespace: str, json_operator: OperatorProcess
) -> None:
    """A hostPath cache the operator does not allow: Stalled (kstatus Failed, Argo CD Degraded);
    the fix is a new generation, InProgress until observed, then Current."""
    k = kubectl.in_namespace(namespace)
    watch = ObjectWatch(k, "modelservers", "stuck")
    k.apply(_modelserver("stuck", [], cache={"kind": "HostPath", "hostPath": "/var/models"}))
    wait_until(
        "Stalled",
        lambda: _condition(k.get("ms", "stuck"), "Stalled").get("status") == "True",
        timeout=30,
    )
    k.run("patch", "ms", "stuck", "--type=merge", "-p", '{"spec":{"cache":null}}')
    wait_until(
        "Ready once fixed",
        lambda: _condition(k.get("ms", "stuck"), "Ready").get("status") == "True",
        timeout=60,
    )
    objects = watch.stop()
    judged = _judge(objects)
    _record(
        "stalled-then-fixed",
        [o for o in objects if o.get("status")],
        [j for o, j in zip(objects, judged, strict=True) if o.get("status")],
    )
    shown = [
        (j[0], j[1], o["metadata"]["generation"], (o.get("status") or {}).get("observedGeneration"))
        for o, j in zip(objects, judged, strict=True)
    ]
    stalled = [
        j
        for o, j in zip(objects, judged, strict=True)
        if o["metadata"]["generation"] == 1 and o.get("status")
    ]
    assert stalled and stalled[-1][:2] == ("Failed", "Degraded"), shown
    assert "InvalidSpec" in stalled[-1][2]
    # The patched object before the operator has seen it: in progress, not still Failed.
    unseen = [
        j
        for o, j in zip(objects, judged, strict=True)
        if o["metadata"]["generation"] == 2 and o["status"].get("observedGeneration") == 1
    ]
    assert unseen and all(j[:2] == ("InProgress", "Progressing") for j in unseen), shown
    assert judged[-1][:2] == ("Current", "Healthy"), shown

    lines = [json.loads(line) for line in json_operator.log().splitlines() if line.strip()]
    # Decision lines carry a reason; the gateway's write lines (`write`) name the ModelServer too.
    decisions = [line for line in lines if line.get("modelserver") == "stuck" and "reason" in line]
    assert {"InvalidSpec", "Ready"} <= {d["reason"] for d in decisions}, decisions
    writes = [line for line in lines if line.get("modelserver") == "stuck" and "write" in line]
    assert writes, "the gateway logs each write of the ModelServer's status and children"
    invalid = next(d for d in decisions if d["reason"] == "InvalidSpec")
    assert invalid["namespace"] == namespace
    assert invalid["level"] == "INFO"
    assert "spec.cache.hostPath" in invalid["message"]
