"""Fixtures for end-to-end tests: the cluster (the local control plane, or any KUBECONFIG), a
namespace per test, and kwok behaviour Stages."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ci import cannot_run
from tests.cluster import behaviours
from tests.cluster.kube import (
    LOCAL_KUBECONFIG,
    Kubectl,
    kubeconfig_path,
    make_namespace,
    wait_until,
)
from tests.cluster.operator import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kubectl() -> Kubectl:
    path = kubeconfig_path()
    if not Path(path).exists():
        pytest.fail(f"no kubeconfig at {path}: run `make cluster-up` or set KUBECONFIG")
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl is not on PATH: run the tests through `make test-e2e`")
    return Kubectl(kubeconfig=path, binary=binary)


@pytest.fixture(scope="session")
def has_kwok(kubectl: Kubectl) -> bool:
    """True on the local control plane (kwok nodes and Stage resources)."""
    if os.environ.get("KUBECONFIG") and Path(os.environ["KUBECONFIG"]) != LOCAL_KUBECONFIG:
        nodes = kubectl.get("nodes", selector="type=kwok")["items"]
        return bool(nodes) and kubectl.exists("crd", "stages.kwok.x-k8s.io")
    return True


@pytest.fixture
def needs_kwok(has_kwok: bool) -> None:
    if not has_kwok:
        cannot_run("needs kwok-simulated nodes and Stages (the local control plane)")


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace, labelled with the PodSecurity `restricted` profile, deleted after."""
    name = make_namespace(kubectl, "t")
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def free_kwok_gpus(kubectl: Kubectl) -> int:
    """GPUs of the kwok nodes that no pod holds: the pods of earlier tests' namespaces, deleted
    without waiting, hold theirs until they are gone."""
    nodes = kubectl.get("nodes", selector="type=kwok")["items"]
    names = {n["metadata"]["name"] for n in nodes}
    total = sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", 0)) for n in nodes)
    held = 0
    for pod in kubectl.json("get", "pods", "--all-namespaces")["items"]:
        if pod["spec"].get("nodeName") not in names:
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for container in pod["spec"]["containers"]:
            limits = (container.get("resources") or {}).get("limits") or {}
            held += int(limits.get("nvidia.com/gpu", 0))
    return total - held


@pytest.fixture
def room_for(kubectl: Kubectl, needs_kwok: None) -> Callable[[int], None]:
    """Wait until the kwok nodes have this many GPUs free: for a test in which a pod that cannot
    be scheduled at once would be a wrong verdict (Unschedulable is reported without delay).
    An earlier test's pods keep theirs through their grace period (60 s) once deleted."""

    def wait(gpus: int) -> None:
        wait_until(
            f"{gpus} free GPUs on the kwok nodes", lambda: free_kwok_gpus(kubectl) >= gpus, 90, 1
        )

    return wait


@pytest.fixture
def sim_namespace(kubectl: Kubectl, needs_kwok: None) -> Iterator[str]:
    """A namespace whose pods get their outcome from the test's own kwok Stages (`stages`)."""
    name = make_namespace(kubectl, "sim")
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


class Stages:
    """Creates kwok Stages for one test and deletes them afterwards."""

    def __init__(self, kubectl: Kubectl, namespace: str) -> None:
        self.kubectl = kubectl
        self.namespace = namespace
        self.names: list[str] = []

    def add(self, stage: dict) -> None:
        stage["metadata"]["name"] = f"{self.namespace}-{stage['metadata']['name']}"
        stage["spec"]["selector"]["matchExpressions"].insert(
            0, behaviours.in_namespace(self.namespace)
        )
        self.kubectl.apply(stage)
        self.names.append(stage["metadata"]["name"])

    def cleanup_one(self, name: str) -> None:
        full = f"{self.namespace}-{name}"
        self.kubectl.run("delete", "stages.kwok.x-k8s.io", full, "--wait=true")
        self.names.remove(full)

    def cleanup(self) -> None:
        if self.names:
            self.kubectl.run(
                "delete", "stages.kwok.x-k8s.io", *self.names, "--wait=false", check=False
            )


@pytest.fixture
def stages(kubectl: Kubectl, sim_namespace: str) -> Iterator[Stages]:
    s = Stages(kubectl, sim_namespace)
    yield s
    s.cleanup()


@pytest.fixture(scope="session")
def crd(kubectl: Kubectl) -> None:
    """The ModelServer CRD, installed from crds/ and Established."""
    kubectl.run(
        "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "modelserver.yaml")
    )
    kubectl.run(
        "wait", "--for=condition=Established", "crd/modelservers.glowplug.dev", "--timeout=60s"
    )


def _operator(
    kubectl: Kubectl, namespace: str, tmp_path: Path, **settings: str
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kubectl.kubeconfig, namespace, tmp_path, **settings).start()
    yield process
    process.kill()
    if os.environ.get("GLOWPLUG_TEST_SHOW_OPERATOR_LOG"):
        print(process.log())


@pytest.fixture
def operator(
    kubectl: Kubectl, crd: None, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """A real operator process watching this test's namespace."""
    yield from _operator(kubectl, namespace, tmp_path, resync_seconds="5")


@pytest.fixture
def sim_operator(
    kubectl: Kubectl, crd: None, sim_namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """A real operator process watching this test's sim-* namespace."""
    yield from _operator(kubectl, sim_namespace, tmp_path, resync_seconds="5")


class RollbackResults:
    """Per scenario: pod starts and seconds from the first failure to Ready, plus the Events."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, int, float | None, list[str]]] = []

    def add(
        self, scenario: str, kubectl: Kubectl, name: str, seconds: float | None, events: list[str]
    ) -> None:
        status = kubectl.get("ms", name).get("status") or {}
        starts = sum(int(s.get("starts", 0)) for s in (status.get("rollout") or {}).get("sets", []))
        templates = len(
            kubectl.get("replicasets", selector=f"glowplug.dev/modelserver={name}")["items"]
        )
        self.rows.append((scenario, starts, templates, seconds, events))

    def table(self) -> str:
        lines = [
            "| scenario | container starts | pod templates (flag sets tried) "
            "| first failure -> Ready (s) |",
            "|---|---|---|---|",
        ]
        for scenario, starts, templates, seconds, _ in self.rows:
            shown = f"{seconds:.1f}" if seconds is not None else "(stays Degraded)"
            lines.append(f"| {scenario} | {starts} | {templates} | {shown} |")
        lines += [
            "",
            "kwok timings: a pod is created, scheduled and its init container done in about 1 s;",
            "crash/ready Stages fire 0.3-1.5 s later (see each test). A crashing container is",
            "restarted at once (a kubelet backs off 10 s, 20 s, ...), so crash loops inflate the",
            "container starts while a new template rolls out.",
        ]
        for scenario, _, _, _, events in self.rows:
            lines.append(f"\n### Events: {scenario}\n")
            lines.extend(f"    {e}" for e in events)
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def rollback_results() -> Iterator[RollbackResults]:
    results = RollbackResults()
    yield results
    if results.rows:
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "rollback_scenarios.md").write_text(results.table())
        print("\n" + results.table())
