"""Objects the operator must not take over, and children the API server refuses (issue 16, items
1 and 6), against the real API server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.kube import Kubectl, wait_until
from tests.cluster.operator import OperatorProcess
from tests.e2e.test_modelserver import _condition, _example


def _ready_reason(k: Kubectl, name: str) -> tuple[str, str] | None:
    cond = _condition(k.get("ms", name), "Ready")
    return (cond["status"], cond["reason"]) if cond else None


def _events(k: Kubectl, name: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in k.get("events")["items"]
        if e["involvedObject"]["name"] == name and e["reason"] == reason
    ]


def test_a_users_service_of_the_same_name_is_not_taken_over(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    k = kubectl.in_namespace(namespace)
    users = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "shop", "labels": {"app": "shop"}},
        "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    k.apply(users)
    before = k.get("service", "shop")
    k.apply(_example("shop"))

    wait_until(
        "Ready=False NameConflict", lambda: _ready_reason(k, "shop") == ("False", "NameConflict")
    )
    ready = _condition(k.get("ms", "shop"), "Ready")
    assert ready is not None and "Service" in ready["message"] and "shop" in ready["message"]
    wait_until("a NameConflict Event", lambda: _events(k, "shop", "NameConflict"))
    after = k.get("service", "shop")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"]["selector"] == {"app": "shop"}
    assert not after["metadata"].get("ownerReferences")
    # Nothing written: no child of the ModelServer exists beside the user's Service.
    assert not k.exists("deployment", "shop")

    k.run("delete", "ms", "shop", "--wait=true", "--timeout=60s")
    # A garbage collection would take seconds; the Service has no owner to be collected with.
    k.run("wait", "--for=delete", "ms/shop", "--timeout=30s")
    assert k.get("service", "shop")["spec"]["selector"] == {"app": "shop"}


def test_removing_the_object_that_took_the_name_unblocks_the_modelserver(
    kubectl: Kubectl, crd: None, namespace: str, tmp_path: Path
) -> None:
    """The operator watches objects that are not its own: the user's Service going away is an
    event, and the ModelServer rolls out at once, not at the next resync (300 s here)."""
    k = kubectl.in_namespace(namespace)
    users = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "free", "labels": {"app": "shop"}},
        "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80}]},
    }
    k.apply(users)
    operator = OperatorProcess(kubectl.kubeconfig, namespace, tmp_path, resync_seconds="300")
    operator.start()
    try:
        k.apply(_example("free"))
        wait_until(
            "Ready=False NameConflict",
            lambda: _ready_reason(k, "free") == ("False", "NameConflict"),
        )
        k.run("delete", "service", "free", "--wait=true")
        wait_until(
            "the ModelServer's own Service",
            lambda: (
                bool(k.exists("service", "free"))
                and bool(k.get("service", "free")["metadata"].get("ownerReferences"))
            ),
            timeout=20,
        )
        assert k.exists("deployment", "free")
    finally:
        operator.kill()


def test_a_users_claim_named_like_the_cache_is_not_adopted(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    k = kubectl.in_namespace(namespace)
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "vault-cache"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}},
    }
    k.apply(claim)
    k.apply(_example("vault", cache={"kind": "PersistentVolumeClaim", "size": "1Gi"}))
    wait_until(
        "Ready=False NameConflict", lambda: _ready_reason(k, "vault") == ("False", "NameConflict")
    )
    live = k.get("pvc", "vault-cache")
    assert not live["metadata"].get("ownerReferences")
    assert live["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert not k.exists("deployment", "vault")


def test_a_child_the_api_server_refuses_is_reported_once_not_retried_hot(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    k = kubectl.in_namespace(namespace)
    # Free-form affinity the CRD cannot check: the Deployment is refused with a 422.
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    k.apply(_example("picky", placement={"affinity": affinity}))
    wait_until(
        "Ready=False InvalidSpec", lambda: _ready_reason(k, "picky") == ("False", "InvalidSpec")
    )
    ready = _condition(k.get("ms", "picky"), "Ready")
    assert ready is not None and "nodeSelectorTerms" in ready["message"], ready
    wait_until("an InvalidSpec Event", lambda: _events(k, "picky", "InvalidSpec"))
    version = k.get("ms", "picky")["metadata"]["resourceVersion"]
    # The operator resyncs every 5 s here: nothing more is written while the spec stays.
    time.sleep(11)
    assert k.get("ms", "picky")["metadata"]["resourceVersion"] == version
    assert len(_events(k, "picky", "InvalidSpec")) == 1

    k.run(
        "patch",
        "ms",
        "picky",
        "--type=json",
        "-p",
        '[{"op":"remove","path":"/spec/placement/affinity"}]',
    )
    wait_until("the Deployment once the spec is fixed", lambda: k.exists("deployment", "picky"))


def test_immutable_claim_fields_are_refused_at_kubectl_apply(
    kubectl: Kubectl, namespace: str, crd: None
) -> None:
    k = kubectl.in_namespace(namespace)
    cache = {"kind": "PersistentVolumeClaim", "size": "2Gi", "storageClassName": "standard"}
    k.apply(_example("claimed", cache=cache))

    def edit(**change: Any) -> tuple[bool, str]:
        return k.try_apply(yaml.safe_dump(_example("claimed", cache={**cache, **change})))

    for change, message in [
        ({"storageClassName": "fast"}, "spec.cache.storageClassName: Invalid value"),
        ({"accessMode": "ReadWriteMany"}, "spec.cache.accessMode: Invalid value"),
        ({"size": "1Gi"}, "cache.size of the claim the operator created cannot shrink"),
    ]:
        accepted, output = edit(**change)
        assert not accepted, f"{change} was accepted"
        assert message in output, output
    # What a claim allows stays allowed: growing it, and leaving the created claim behind.
    assert edit(size="3Gi")[0]
    assert k.try_apply(yaml.safe_dump(_example("claimed", cache={"kind": "EmptyDir"})))[0]


def test_valid_placement_is_accepted(kubectl: Kubectl, namespace: str, crd: None) -> None:
    placement = {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "zone": ""},
        "tolerations": [
            {
                "key": "nvidia.com/gpu",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 60,
            }
        ],
        "runtimeClassName": "nvidia",
        "priorityClassName": "system.high-1",
    }
    accepted, output = kubectl.in_namespace(namespace).try_apply(
        yaml.safe_dump(_example("placed", placement=placement))
    )
    assert accepted, output
