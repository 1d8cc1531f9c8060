"""GitOps health of the statuses status.py writes, judged by the real checkers: kstatus (the Go
library Flux's health checks use, hack/kstatus) and the Argo CD health Lua of examples/argocd/.

The scenarios are the status.py tables of tests/unit/test_status.py (pods as the API server
returns them, decisions as rollback.decide shapes them); tests/e2e/test_operations.py runs the
same checkers on the statuses the running operator writes through a rollout and a rollback, and
records them in tests/data/statuses/ (checked here too, without a cluster).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from glowplug_operator.rollback import Condition, Degraded, FlagState

from tests.cluster.health import ARGOCD_LUA, argocd_health, kstatus
from tests.unit.test_status import (
    PREFETCH_FAILED,
    T0,
    _body,
    decision,
    init_crashlooping,
    init_image_pull,
    invalid,
    pod,
    ready_pod,
    starting_pod,
    status,
    stored,
    worker_waiting,
)

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "tests" / "data" / "statuses"
NOW = T0 + timedelta(minutes=2)


def modelserver(status_: dict[str, Any] | None, generation: int = 4) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": "llama", "namespace": "ml", "generation": generation},
        "spec": {"model": {"source": "hf://org/name"}},
    }
    if status_ is not None:
        body["status"] = stored(status_)
    return body


def rolled_back() -> dict[str, Any]:
    """fast-load rolled back, the pod without it serves."""
    chosen = decision({}, NOW)
    chosen = replace(
        chosen,
        flag_states=(
            FlagState("prefetch-weights", "Active"),
            FlagState("fast-load", "RolledBack", "FailedInPhase", "in phase load: misaligned"),
        ),
        condition=Condition(
            "OptimizationsHealthy", "False", "FlagsRolledBack", "rolled back: fast-load"
        ),
    )
    return status([ready_pod()], decided=chosen)


def bisecting() -> dict[str, Any]:
    chosen = replace(
        decision({}, NOW),
        template_changed=True,
        condition=Condition(
            "OptimizationsHealthy",
            "False",
            "Bisecting",
            "bisecting fast-load, prefetch-weights (step 1, Failing): trying without fast-load",
        ),
    )
    return status([starting_pod()], decided=chosen)


def starts_fail_without_flags() -> dict[str, Any]:
    chosen = replace(
        decision({}, NOW),
        degraded=Degraded("StartupFailedWithoutFlags", "starts failed even with every flag off"),
    )
    return status([starting_pod()], decided=chosen)


def image_pull_failed() -> dict[str, Any]:
    pods = [pod(init_image_pull(), worker_waiting())]
    return status(pods, now=NOW, decided=decision({}, NOW, pods))


BAD_SPEC = {"model": {"source": "hf://org/name"}, "cache": {"kind": "PersistentVolumeClaim"}}

# (id, object, kstatus verdict, Argo CD health, a word the Argo CD message holds)
SCENARIOS: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("no-pods-yet", modelserver(status([])), "InProgress", "Progressing", "RollingOut"),
    ("prefetch-running", modelserver(status([starting_pod()])), "InProgress", "Progressing", ""),
    (
        "prefetch-failing",
        modelserver(status([pod(init_crashlooping(PREFETCH_FAILED), worker_waiting())])),
        "InProgress",
        "Progressing",
        "",
    ),
    ("serving", modelserver(status([ready_pod()])), "Current", "Healthy", "Serving"),
    ("scaled-to-zero", modelserver(status([], replicas=0)), "Current", "Healthy", "ScaledToZero"),
    (
        "spec-edited-not-yet-observed",
        modelserver(status([ready_pod()]), generation=5),
        "InProgress",
        "Progressing",
        "generation 5",
    ),
    ("flag-rolled-back-serving", modelserver(rolled_back()), "Current", "Healthy", "fast-load"),
    ("bisecting", modelserver(bisecting()), "InProgress", "Progressing", "Bisecting"),
    ("image-pull-failed", modelserver(image_pull_failed()), "Failed", "Degraded", "ImagePull"),
    (
        "not-a-flag-problem",
        modelserver(starts_fail_without_flags()),
        "Failed",
        "Degraded",
        "StartupFailedWithoutFlags",
    ),
    (
        "invalid-spec",
        {**_body(BAD_SPEC), "status": stored(invalid(_body(BAD_SPEC), T0))},
        "Failed",
        "Degraded",
        "InvalidSpec",
    ),
]


@pytest.mark.parametrize(
    ("obj", "verdict", "health", "word"),
    [s[1:] for s in SCENARIOS],
    ids=[s[0] for s in SCENARIOS],
)
def test_kstatus_and_argocd_agree_on_status_py_scenarios(
    obj: dict[str, Any], verdict: str, health: str, word: str
) -> None:
    (judged,) = kstatus([obj])
    assert judged.get("error") is None, judged
    assert judged["status"] == verdict, judged
    argo = argocd_health(obj)
    assert argo["status"] == health, argo
    assert word in argo["message"], argo


def test_before_the_first_status_both_say_in_progress() -> None:
    """Before the operator's first status write the API server shows the CRD's status default
    (observedGeneration 0, Ready Unknown): kstatus says InProgress, where it reads an object
    without any status as Current (its generic rule), and the Lua says Progressing."""
    crd = yaml.safe_load((ROOT / "crds" / "modelserver.yaml").read_text())
    default = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    obj = modelserver(None, generation=1)
    obj["status"] = default["default"]
    (judged,) = kstatus([obj])
    assert judged["status"] == "InProgress", judged
    argo = argocd_health(obj)
    assert argo["status"] == "Progressing", argo
    assert "not yet seen generation 1" in argo["message"], argo
    assert kstatus([modelserver(None)])[0]["status"] == "Current"  # why the default is there


def recorded() -> list[Path]:
    return sorted(RECORDED.glob("*.json"))


@pytest.mark.parametrize("path", recorded(), ids=[p.stem for p in recorded()])
def test_statuses_the_operator_wrote_on_the_local_cluster(path: Path) -> None:
    """Each recording: the ModelServer after every status write of one e2e scenario, and the
    verdicts the e2e test saw; kstatus and the Lua must still agree with them."""
    record = json.loads(path.read_text())
    objects = [step["object"] for step in record["steps"]]
    assert len(objects) >= 3
    verdicts = kstatus(objects)
    for step, judged in zip(record["steps"], verdicts, strict=True):
        assert judged["status"] == step["kstatus"], (step["object"]["status"], judged)
        assert argocd_health(step["object"])["status"] == step["argocd"]


def test_the_argocd_configmap_carries_the_tested_lua() -> None:
    cm = yaml.safe_load((ROOT / "examples" / "argocd" / "argocd-cm.yaml").read_text())
    lua = cm["data"]["resource.customizations.health.glowplug.dev_ModelServer"]
    assert lua.strip() == ARGOCD_LUA.read_text().strip()


def test_the_flux_kustomization_checks_modelservers_of_the_crd() -> None:
    docs = list(yaml.safe_load_all((ROOT / "examples" / "flux" / "kustomization.yaml").read_text()))
    kustomization = next(d for d in docs if d["kind"] == "Kustomization")
    crd = yaml.safe_load((ROOT / "crds" / "modelserver.yaml").read_text())
    api = f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"
    checks = kustomization["spec"]["healthChecks"]
    assert {(c["apiVersion"], c["kind"]) for c in checks} == {(api, crd["spec"]["names"]["kind"])}
    assert kustomization["spec"]["timeout"]
