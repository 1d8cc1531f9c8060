"""A platform engineer's day with a ModelServer, against the real API server (issue 3)."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.kube import ROOT, Kubectl, wait_until
from tests.cluster.operator import OperatorProcess

EXAMPLE = ROOT / "examples" / "modelserver.yaml"
INVALID = sorted((ROOT / "tests" / "data" / "invalid-specs").glob("*.yaml"))


def _example(name: str = "tiny-llama", **spec: Any) -> dict[str, Any]:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"]["name"] = name
    body["spec"].update(spec)
    return body


def _condition(ms: dict[str, Any], kind: str) -> dict[str, Any] | None:
    conditions = (ms.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), None)


def _ready(k: Kubectl, name: str) -> dict[str, Any] | None:
    ms = k.get("ms", name)
    cond = _condition(ms, "Ready")
    return ms if cond and cond["status"] == "True" else None


def test_example_becomes_ready_with_its_children(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, needs_kwok: None
) -> None:
    k = kubectl.in_namespace(namespace)
    k.run("apply", "-f", str(EXAMPLE))
    k.run("wait", "--for=condition=Ready", "modelserver/tiny-llama", "--timeout=90s")

    ms = k.get("ms", "tiny-llama")
    status = ms["status"]
    assert status["observedGeneration"] == ms["metadata"]["generation"]
    assert status["replicaSummary"] == "1/1"
    assert status["endpoint"] == f"http://tiny-llama.{namespace}.svc:8000"
    assert status["coldStart"]["lastSeconds"] >= 0
    assert {o["name"]: o["state"] for o in status["optimizations"]} == {
        "prefetch-weights": "Active",
        "fast-load": "Active",
        "hf-offline": "Active",
    }
    deployment = k.get("deployment", "tiny-llama")
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "ModelServer",
        "tiny-llama",
        ms["metadata"]["uid"],
    )
    template = deployment["spec"]["template"]
    assert (
        template["metadata"]["annotations"]["glowplug.dev/optimizations"]
        == "prefetch-weights,fast-load,hf-offline"
    )
    assert k.exists("service", "tiny-llama")
    # The namespace enforces PodSecurity "restricted": the pod exists, so it passed.
    pods = k.get("pods", selector="glowplug.dev/modelserver=tiny-llama")["items"]
    assert len(pods) == 1
    assert pods[0]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    table = k.run("get", "ms")
    assert re.search(r"tiny-llama\s+True\s+1/1\s+[\d.]+\s+0\s+", table), table
    described = k.run("describe", "ms", "tiny-llama")
    assert "Ready" in described and "glowplug-operator" in described


def test_kubectl_scale_reaches_the_deployment(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, needs_kwok: None
) -> None:
    k = kubectl.in_namespace(namespace)
    k.apply(_example("scaled"))
    k.run("wait", "--for=condition=Ready", "ms/scaled", "--timeout=90s")
    k.run("scale", "ms/scaled", "--replicas=2")
    wait_until(
        "2 ready replicas",
        lambda: (_ready(k, "scaled") or {}).get("status", {}).get("readyReplicas") == 2,
    )
    assert k.get("deployment", "scaled")["spec"]["replicas"] == 2
    assert k.get("pdb", "scaled")["spec"]["maxUnavailable"] == 1
    assert k.get("ms", "scaled")["status"]["replicaSummary"] == "2/2"
    k.run("scale", "ms/scaled", "--replicas=1")
    wait_until("the PDB removed at 1 replica", lambda: not k.exists("pdb", "scaled"))


def test_hand_edits_of_children_are_undone(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, needs_kwok: None
) -> None:
    k = kubectl.in_namespace(namespace)
    k.apply(_example("guarded"))
    k.run("wait", "--for=condition=Ready", "ms/guarded", "--timeout=90s")

    k.run("scale", "deployment/guarded", "--replicas=3")
    wait_until(
        "replicas put back to 1", lambda: k.get("deployment", "guarded")["spec"]["replicas"] == 1
    )

    k.run("delete", "service", "guarded")
    wait_until("the Service recreated", lambda: k.exists("service", "guarded"))


def test_deleting_the_modelserver_collects_children_and_keeps_a_retained_cache(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    k = kubectl.in_namespace(namespace)
    kept = _example(
        "kept", cache={"kind": "PersistentVolumeClaim", "size": "1Gi", "retainOnDelete": True}
    )
    dropped = _example("dropped", cache={"kind": "PersistentVolumeClaim", "size": "1Gi"})
    k.apply(kept, dropped)
    for name in ("kept", "dropped"):
        wait_until(
            f"{name}'s children",
            lambda n=name: k.exists("deployment", n) and k.exists("pvc", f"{n}-cache"),
        )
    k.run("delete", "ms", "kept", "dropped", "--wait=true", "--timeout=60s")

    def collected() -> bool:
        names = {d["metadata"]["name"] for d in k.get("deployments")["items"]}
        names |= {s["metadata"]["name"] for s in k.get("services")["items"]}
        return not names & {"kept", "dropped"}

    wait_until("Deployments and Services garbage-collected", collected, timeout=60)
    wait_until(
        "the unretained claim deleted", lambda: not k.exists("pvc", "dropped-cache"), timeout=60
    )
    assert k.exists("pvc", "kept-cache")


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_specs_are_refused_naming_the_field(
    kubectl: Kubectl, namespace: str, crd: None, path: Path
) -> None:
    text = path.read_text()
    expected = re.search(r"^# expect: (.+)$", text, re.M)
    assert expected, f"{path.name} needs an '# expect:' line"
    accepted, output = kubectl.in_namespace(namespace).try_apply(text)
    assert not accepted, f"{path.name} was accepted"
    assert expected.group(1).strip() in output


def test_enough_invalid_specs_are_covered() -> None:
    assert len(INVALID) >= 15


def test_operator_killed_midway_converges_without_duplicates(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, needs_kwok: None
) -> None:
    k = kubectl.in_namespace(namespace)
    names = [f"ms-{i}" for i in range(6)]
    k.apply(*[_example(n) for n in names])
    wait_until("a first Deployment", lambda: k.get("deployments")["items"])
    operator.kill(signal.SIGKILL)
    operator.start()
    for name in names:
        k.run("wait", "--for=condition=Ready", f"ms/{name}", "--timeout=120s")
    assert sorted(d["metadata"]["name"] for d in k.get("deployments")["items"]) == names
    assert sorted(s["metadata"]["name"] for s in k.get("services")["items"]) == names
    # One ReplicaSet each: nothing re-rendered the pod template after the restart.
    replica_sets = k.get("replicasets")["items"]
    assert len(replica_sets) == len(names)


def test_a_converged_modelserver_is_not_written_again(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, needs_kwok: None
) -> None:
    k = kubectl.in_namespace(namespace)
    k.apply(_example("quiet"))
    k.run("wait", "--for=condition=Ready", "ms/quiet", "--timeout=90s")

    def versions() -> dict[str, str]:
        return {
            kind: k.get(kind, name)["metadata"]["resourceVersion"]
            for kind, name in (("ms", "quiet"), ("deployment", "quiet"), ("service", "quiet"))
        }

    wait_until("the status to settle", lambda: versions() == versions() and _ready(k, "quiet"))
    before = versions()
    events_before = len(k.get("events")["items"])
    # The operator resyncs every 5 s in the tests: two resyncs, and nothing may be written.
    time.sleep(11)
    assert versions() == before
    assert len(k.get("events")["items"]) == events_before
    assert k.get("ms", "quiet")["metadata"]["generation"] == 1
