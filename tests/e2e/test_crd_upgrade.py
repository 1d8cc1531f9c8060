"""The CRD upgrade path docs/api.md gives: `helm upgrade` leaves crds/ alone (shown here with a
chart whose CRD has a new field), `kubectl apply --server-side --force-conflicts -f crds/` puts
it in. The operator runs through it; ModelServers made before and after keep reconciling."""

from __future__ import annotations

import copy
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.kube import ROOT, Kubectl, wait_until
from tests.cluster.operator import OperatorProcess

CRD = ROOT / "crds" / "modelserver.yaml"


def _modelserver(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": name},
        "spec": {"model": {"source": "https://models.example/tiny/manifest.json"}, **spec},
    }


def _ready(k: Kubectl, name: str, replicas: int = 1) -> bool:
    status = k.get("ms", name).get("status") or {}
    ready = any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
    )
    return ready and status.get("readyReplicas") == replicas


def _upgraded(path: Path) -> Path:
    """The chart, its crds/modelserver.yaml with one more optional field, spec.notes."""
    crd = yaml.safe_load(CRD.read_text())
    upgraded = copy.deepcopy(crd)
    spec = upgraded["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["notes"] = {
        "type": "string",
        "maxLength": 256,
        "description": "Free text (added by tests/e2e/test_crd_upgrade.py).",
    }
    chart = path / "glowplug"
    shutil.copytree(ROOT / "charts" / "glowplug", chart)
    (chart / "crds" / "modelserver.yaml").write_text(yaml.safe_dump(upgraded, sort_keys=False))
    return chart


def _has_notes(kubectl: Kubectl) -> bool:
    schema = kubectl.get("crd", "modelservers.glowplug.dev")["spec"]["versions"][0]["schema"]
    return "notes" in schema["openAPIV3Schema"]["properties"]["spec"]["properties"]


def _apply_crd(kubectl: Kubectl, directory: Path) -> None:
    """The documented step, then wait for the API server to serve it."""
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(directory))
    kubectl.run(
        "wait", "--for=condition=Established", "crd/modelservers.glowplug.dev", "--timeout=60s"
    )


def test_a_crd_applied_server_side_upgrades_a_running_install(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    helm_binary = shutil.which("helm")
    if helm_binary is None:
        pytest.fail("helm is not on PATH: run the tests through `make test-e2e`")
    release, release_ns = f"gp-{uuid.uuid4().hex[:6]}", f"glowplug-system-{uuid.uuid4().hex[:6]}"
    helm = [helm_binary, "--kubeconfig", kubectl.kubeconfig, "--namespace", release_ns]
    chart = _upgraded(tmp_path)

    def run(*args: str) -> None:
        subprocess.run([*helm, *args], check=True, capture_output=True, text=True, timeout=120)

    k = kubectl.in_namespace(namespace)
    k.apply(_modelserver("before"))
    wait_until("Ready before the upgrade", lambda: _ready(k, "before"), timeout=60)
    try:
        # The chart installed, then upgraded to a chart with the new CRD: Helm leaves it out.
        run(
            "install",
            release,
            str(ROOT / "charts" / "glowplug"),
            "--create-namespace",
            "--wait=false",
            "--set",
            "metrics.port=9091",
            "--set",
            f"namespaces={{{namespace}}}",
        )
        run("upgrade", release, str(chart), "--wait=false", "--set", "metrics.port=9091",
            "--set", f"namespaces={{{namespace}}}")  # fmt: skip
        assert not _has_notes(kubectl), "helm upgrade changed the CRD: docs/api.md is wrong"
        _apply_crd(kubectl, chart / "crds")
        assert _has_notes(kubectl)

        k.apply(_modelserver("after", notes="made with the upgraded CRD"))
        wait_until("Ready after the upgrade", lambda: _ready(k, "after"), timeout=60)
        # The new field is in the schema in force: the API server kept it (no pruning).
        assert k.get("ms", "after")["spec"]["notes"] == "made with the upgraded CRD"
        # The operator's watches went on through the CRD change: an edit is reconciled.
        k.run("patch", "ms", "before", "--type=merge", "-p", '{"spec":{"replicas":2}}')
        wait_until("the edit reconciled", lambda: _ready(k, "before", replicas=2), timeout=60)
        assert operator.running
        assert "Traceback" not in operator.log(), operator.log()
    finally:
        k.run("delete", "ms", "after", "--ignore-not-found", "--wait=true")
        _apply_crd(kubectl, CRD.parent)  # back to the repository's CRD for the other tests
        subprocess.run([*helm, "uninstall", release], capture_output=True, timeout=120)
        kubectl.run("delete", "namespace", release_ns, "--wait=false", check=False)
