"""The Helm chart installs on a real API server, and its RBAC lets the operator do its job."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.cluster.kube import ROOT, Kubectl, wait_until

# What the operator does, as (verb, resource) pairs for `kubectl auth can-i`.
NEEDED = [
    ("watch", "modelservers.glowplug.dev"),
    ("patch", "modelservers.glowplug.dev/status"),
    ("patch", "deployments.apps"),
    ("delete", "poddisruptionbudgets.policy"),
    ("patch", "services"),
    ("patch", "persistentvolumeclaims"),
    ("watch", "pods"),
    ("create", "events"),
    ("watch", "storageclasses.storage.k8s.io"),
]
NOT_NEEDED = [("get", "secrets"), ("update", "modelservers.glowplug.dev"), ("delete", "nodes")]


@pytest.fixture
def release(kubectl: Kubectl, crd: None) -> Iterator[tuple[str, str]]:
    helm = shutil.which("helm")
    if helm is None:
        pytest.fail("helm is not on PATH: run the tests through `make test-e2e`")
    namespace = f"glowplug-system-{uuid.uuid4().hex[:6]}"
    name = f"gp-{uuid.uuid4().hex[:6]}"
    base = [helm, "--kubeconfig", kubectl.kubeconfig, "--namespace", namespace]
    subprocess.run(
        [*base, "install", name, str(ROOT / "charts" / "glowplug"), "--create-namespace",
         "--skip-crds", "--wait=false", "--set", "metrics.port=9091"],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    yield namespace, name
    subprocess.run([*base, "uninstall", name], capture_output=True, timeout=120)
    kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)


def test_chart_installs_and_grants_what_the_operator_needs(
    kubectl: Kubectl, release: tuple[str, str], needs_kwok: None
) -> None:
    namespace, name = release
    k = kubectl.in_namespace(namespace)
    deployment = k.get("deployments")["items"][0]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    k.run("rollout", "status", f"deployment/{deployment['metadata']['name']}", "--timeout=60s")
    assert k.get("service", selector="app.kubernetes.io/instance=" + name)["items"]

    who = f"--as=system:serviceaccount:{namespace}:{account}"

    def can(verb: str, resource: str) -> str:
        kind, _, sub = resource.partition("/")
        extra = [f"--subresource={sub}"] if sub else []
        return k.run(
            "auth", "can-i", verb, kind, *extra, who, "--all-namespaces", check=False
        ).strip()

    assert {(v, r): can(v, r) for v, r in NEEDED} == {(v, r): "yes" for v, r in NEEDED}
    assert {(v, r): can(v, r) for v, r in NOT_NEEDED} == {(v, r): "no" for v, r in NOT_NEEDED}
    # Leader election: its one Lease, in the release namespace only.
    lease = f"leases.coordination.k8s.io/{deployment['metadata']['name']}"
    assert k.run("auth", "can-i", "update", lease, who, check=False).strip() == "yes"
    assert (
        k.run("auth", "can-i", "create", "leases.coordination.k8s.io", who, check=False).strip()
        == "yes"
    )
    other = "leases.coordination.k8s.io/kube-controller-manager"
    assert (
        k.run("auth", "can-i", "update", other, who, "-n", "kube-system", check=False).strip()
        == "no"
    )
    assert deployment["spec"]["replicas"] == 2
    assert k.get("pdb")["items"], "a PodDisruptionBudget for the operator pods"
    wait_until(
        "the operator pod Ready",
        lambda: k.get("pods")["items"][0]["status"].get("phase") == "Running",
    )
