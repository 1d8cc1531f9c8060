"""The operator runs with exactly the chart's ServiceAccount and RBAC, not an admin credential:
installed cluster-wide (a ClusterRole) and with `namespaces` set (Roles in those namespaces, a
ClusterRole for the cluster-scoped reads only), it reconciles a ModelServer to Ready on kwok.

The chart is installed with helm; the operator process runs here with a kubeconfig holding a token
of the chart's ServiceAccount (`kubectl create token`), as the in-cluster pod would.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.kube import ROOT, Kubectl, make_namespace, wait_until
from tests.cluster.operator import OperatorProcess


def _install(kubectl: Kubectl, namespace: str, name: str, *sets: str) -> list[str]:
    helm = shutil.which("helm")
    if helm is None:
        pytest.fail("helm is not on PATH: run the tests through `make test-e2e`")
    base = [helm, "--kubeconfig", kubectl.kubeconfig, "--namespace", namespace]
    args = [*base, "install", name, str(ROOT / "charts" / "glowplug"), "--create-namespace"]
    args += ["--skip-crds", "--wait=false", "--set", "metrics.port=9091"]
    for value in sets:
        args += ["--set", value]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=120)
    return base


def _token_kubeconfig(kubectl: Kubectl, namespace: str, account: str, path: Path) -> str:
    """The admin kubeconfig's cluster, with the ServiceAccount's token as the only credential."""
    admin = yaml.safe_load(Path(kubectl.kubeconfig).read_text())
    token = kubectl.in_namespace(namespace).run("create", "token", account, "--duration=1h")
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": account, "user": {"token": token.strip()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def watched(kubectl: Kubectl, crd: None, needs_kwok: None) -> Iterator[str]:
    name = make_namespace(kubectl, "rbac-watched")
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_the_charts_service_account_is_enough_to_reach_ready(
    kubectl: Kubectl, watched: str, mode: str, tmp_path: Path
) -> None:
    release_ns = f"glowplug-system-{uuid.uuid4().hex[:6]}"
    name = f"gp-{uuid.uuid4().hex[:6]}"
    sets = [f"namespaces={{{watched}}}"] if mode == "namespaced" else []
    base = _install(kubectl, release_ns, name, *sets)
    operator: OperatorProcess | None = None
    try:
        k = kubectl.in_namespace(release_ns)
        account = k.get("serviceaccounts", selector=f"app.kubernetes.io/instance={name}")
        (account_name,) = [a["metadata"]["name"] for a in account["items"]]
        config = _token_kubeconfig(kubectl, release_ns, account_name, tmp_path / "sa.kubeconfig")
        operator = OperatorProcess(config, watched, tmp_path, resync_seconds="5")
        if mode == "cluster-wide":
            operator.env["GLOWPLUG_NAMESPACES"] = ""  # watch every namespace, as the chart does
        operator.start()

        w = kubectl.in_namespace(watched)
        w.apply(
            {
                "apiVersion": "glowplug.dev/v1alpha1",
                "kind": "ModelServer",
                "metadata": {"name": "rbac"},
                "spec": {
                    "model": {"source": "https://models.example/tiny/manifest.json"},
                    # EmptyDir: a claim would not bind on a cluster without a provisioner.
                    "replicas": 2,  # with a PodDisruptionBudget
                },
            }
        )

        def ready() -> bool:
            conditions = (w.get("ms", "rbac").get("status") or {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait_until(f"Ready with the chart's ServiceAccount ({mode})", ready, timeout=90)
        for kind in ("deployment", "service", "pdb"):
            assert w.exists(kind, "rbac"), kind
        events = [
            e["reason"] for e in w.get("events")["items"] if e["involvedObject"]["name"] == "rbac"
        ]
        assert "Ready" in events, events
        log = operator.log()
        # No RBAC refusal (a cluster-wide operator also meets other tests' terminating
        # namespaces, where the API server refuses new Events for another reason).
        for refused in (f'User "system:serviceaccount:{release_ns}', "Not enough permissions"):
            assert refused not in log, log

        who = f"--as=system:serviceaccount:{release_ns}:{account_name}"
        elsewhere = "default"
        can = (
            kubectl.in_namespace(elsewhere)
            .run("auth", "can-i", "create", "deployments.apps", who, check=False)
            .strip()
        )
        assert can == ("yes" if mode == "cluster-wide" else "no")
    finally:
        if operator is not None:
            operator.kill()
        subprocess.run([*base, "uninstall", name], capture_output=True, timeout=120)
        kubectl.run("delete", "namespace", release_ns, "--wait=false", check=False)
