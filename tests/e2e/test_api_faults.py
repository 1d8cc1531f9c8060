"""API faults (issue 16, prove it): the operator talks to kube-apiserver only through a proxy
that answers a share of its requests with 409, 429, 500 and 503, delays others, resets
connections, and cuts or expires (410 Gone) its watches. Ten ModelServers still all converge:
Ready, each with exactly one Deployment and one Service owned by it, no orphaned child, status
observed at the current generation. The proxy needs only a kubeconfig: the test holds whatever
API client the operator uses."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import behaviours as b
from tests.cluster.faultproxy import FaultProxy
from tests.cluster.kube import ROOT, Kubectl, wait_until
from tests.cluster.manifests import modelserver, optimizations
from tests.cluster.operator import OperatorProcess

COUNT = int(os.environ.get("GLOWPLUG_FAULT_MODELSERVERS", "10"))
RATE = float(os.environ.get("GLOWPLUG_FAULT_RATE", "0.15"))


@pytest.fixture
def proxy(kubectl: Kubectl) -> Iterator[FaultProxy]:
    p = FaultProxy(kubectl.kubeconfig, rate=RATE, seed=16).start()
    yield p
    p.stop()


def _modelserver(name: str) -> dict[str, Any]:
    startup = {"optimizations": optimizations("prefetch-weights")}
    return modelserver(name, gpus=0, source="s3://weights/tiny", startup=startup)


def _owned(k: Kubectl, kind: str) -> dict[str, list[str]]:
    """Owner ModelServer name -> names of the children of `kind` it controls."""
    out: dict[str, list[str]] = {}
    for obj in k.get(kind)["items"]:
        for ref in obj["metadata"].get("ownerReferences") or []:
            if ref["kind"] == "ModelServer" and ref.get("controller"):
                out.setdefault(ref["name"], []).append(obj["metadata"]["name"])
    return out


def test_modelservers_converge_through_a_faulty_api_server(
    kubectl: Kubectl,
    sim_namespace: str,
    stages: Any,
    crd: None,
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    k = kubectl.in_namespace(sim_namespace)
    stages.add(b.ready("all", [], delay_ms=300))
    operator = OperatorProcess(
        proxy.kubeconfig(tmp_path / "proxy.kubeconfig"), sim_namespace, tmp_path, resync_seconds="5"
    ).start()
    try:
        started = time.monotonic()
        names = [f"f{i}" for i in range(COUNT)]
        k.apply(*(_modelserver(n) for n in names))

        def converged() -> bool:
            items = {ms["metadata"]["name"]: ms for ms in k.get("ms")["items"]}
            return all(
                (s := items[n].get("status") or {}).get("observedGeneration")
                == items[n]["metadata"]["generation"]
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in s.get("conditions") or []
                )
                for n in names
            )

        wait_until(f"{COUNT} ModelServers Ready through the faulty proxy", converged, 240, 1)
        seconds = time.monotonic() - started
        assert operator.running, operator.log()[-3000:]
        uids = {ms["metadata"]["name"]: ms["metadata"]["uid"] for ms in k.get("ms")["items"]}
        for kind in ("deployments", "services"):
            owned = _owned(k, kind)
            assert sorted(owned) == sorted(names), f"{kind} owned by {sorted(owned)}"
            assert all(v == [n] for n, v in owned.items()), f"duplicate {kind}: {owned}"
        for rs in k.get("replicasets")["items"]:
            refs = rs["metadata"].get("ownerReferences") or []
            assert refs, f"orphaned ReplicaSet {rs['metadata']['name']}"
        for dep in k.get("deployments")["items"]:
            ref = dep["metadata"]["ownerReferences"][0]
            assert ref["uid"] == uids[ref["name"]], "a child owned by a ModelServer that is gone"
    finally:
        operator.kill()
    faults = sum(proxy.injected.values())
    assert faults >= 10, f"only {faults} faults were injected: the test proved little"
    lines = [
        f"# API faults: {COUNT} ModelServers Ready in {seconds:.0f} s through the fault proxy",
        "",
        f"{proxy.forwarded} requests forwarded, {faults} faults injected (rate {RATE}):",
        "",
        "| fault | count |",
        "|---|---|",
        *(f"| {f} | {n} |" for f, n in proxy.injected.most_common()),
        "",
        "All Ready, one Deployment and one Service per ModelServer, no orphaned ReplicaSet.",
    ]
    text = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "api_faults.md").write_text(text)
    print("\n" + text)
