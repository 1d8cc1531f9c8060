"""Benchmark: `kubectl apply` to the first answered chat completion on the local cluster's real
node, glowplug against the Deployment a user would write by hand, in one run.

- glowplug: a ModelServer with its default flags (`overlap-download`, `prefetch-weights`,
  `fast-load`, `hf-offline`, `native-model`), served by the chart's in-cluster operator and
  glowplug's worker image. With `overlap-download` the worker downloads the weights itself while
  it imports torch: the pod has no init container.
- glowplug-init: the same ModelServer without `overlap-download`: its prefetch init container
  downloads, then the worker starts (glowplug before the flag).
- by hand: a Deployment in the same worker image whose init container downloads the files with a
  few lines of Python (urllib, what `curl` would do) and whose container runs `transformers serve`
  (transformers' own OpenAI-compatible server; the worker image ships its `serving` extra), with
  a readiness probe on its /health.

Same model (a tiny Llama made here), same node, same nginx weight source on
the node's bridge. `cold`: an empty cache volume (the weights are downloaded); `warm`: a
`local-path` claim that already holds them (the second start on the same claim). Each start is
timed by this script from `kubectl apply` to the first 200 from /v1/chat/completions through the
Service; phases come from the pods' status (and glowplug's `status.coldStart`).

    make cluster-up && uv run python bench/realnode_coldstart.py [--runs 2]

Target: glowplug <= 0.5x the hand-written Deployment. Prints a table and writes it to
bench/results/realnode_coldstart.md (the runs in .json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from glowplug_worker.devtools.manifest import write_manifest  # noqa: E402

from tests.cluster.kube import Kubectl, kubeconfig_path  # noqa: E402
from tests.prefetch.servers import Nginx  # noqa: E402

NODE_IP = "10.88.0.1"
NAMESPACE = "bench-realnode"
SYSTEM = "bench-glowplug-system"
WORKER_IMAGE = "ghcr.io/glowplug/worker:0.1.0"
FLAGS = ["overlap-download", "prefetch-weights", "fast-load", "hf-offline", "native-model"]
# glowplug-init: the same flags without overlap-download, so the pod has its prefetch init
# container (glowplug's default before the flag existed).
SIDE_FLAGS = {"glowplug": FLAGS, "glowplug-init": [f for f in FLAGS if f != "overlap-download"]}
SIDES = ("glowplug", "glowplug-init", "by-hand")
PLACEMENT = {
    "nodeSelector": {"glowplug.dev/real-node": "true"},
    "tolerations": [
        {"key": "glowplug.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}
    ],
}
PROMPT = [{"role": "user", "content": "Hello, glowplug!"}]
# The hand-written init container: fetch each file the manifest lists, unless it is there.
DOWNLOAD = """
import json, os, sys, urllib.request
base, dest = sys.argv[1], sys.argv[2]
manifest = json.load(urllib.request.urlopen(base + "/manifest.json"))
for f in manifest["files"]:
    path = os.path.join(dest, f["path"])
    if os.path.exists(path) and os.path.getsize(path) == f["size"]:
        continue
    os.makedirs(os.path.dirname(path), exist_ok=True)
    urllib.request.urlretrieve(base + "/" + f["path"], path + ".part")
    os.rename(path + ".part", path)
"""


def kubectl() -> Kubectl:
    binary = shutil.which("kubectl")
    if binary is None:
        sys.exit("kubectl is not on PATH: run `make cluster-up` and put its binaries on PATH")
    return Kubectl(kubeconfig_path(), binary=binary)


def make_model(www: Path) -> Path:
    model = www / "model"
    subprocess.run(
        [sys.executable, "-m", "glowplug_worker.devtools.tiny_model", str(model)],
        check=True, capture_output=True,
    )  # fmt: skip
    write_manifest(model, revision="bench")
    for p in [www, *www.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return model


def install_operator(k: Kubectl) -> None:
    """The CRD from crds/ (as after an upgrade) and the chart, placed on the real node."""
    k.run("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    k.run("wait", "--for=condition=Established", "crd/modelservers.glowplug.dev")
    values = {"namespaces": [NAMESPACE], **PLACEMENT}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        json.dump(values, f)
        f.flush()
        subprocess.run(
            ["helm", "--kubeconfig", k.kubeconfig, "-n", SYSTEM, "upgrade", "--install",
             "glowplug", str(ROOT / "charts" / "glowplug"), "--create-namespace", "--skip-crds",
             "-f", f.name, "--wait", "--timeout", "180s"],
            check=True, capture_output=True,
        )  # fmt: skip


def modelserver(name: str, source: str, cache: dict[str, Any], flags: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"source": source, "task": "generate"},
            "resources": {"gpus": 0, "cpu": "100m", "memory": "3Gi"},
            "placement": PLACEMENT,
            "cache": cache,
            "startup": {"budgetSeconds": 300, "optimizations": [{"name": f} for f in flags]},
        },
    }


def by_hand(name: str, base: str, claim: str | None) -> list[dict[str, Any]]:
    """The Deployment and Service a user would write: download, then `transformers serve`."""
    labels = {"app": name}
    volume: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": claim}} if claim else {"emptyDir": {}}
    )
    security = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod = {
        "securityContext": {"fsGroup": 1000, "runAsUser": 1000},
        **PLACEMENT,
        "initContainers": [
            {
                "name": "download",
                "image": WORKER_IMAGE,
                "command": ["python3", "-c", DOWNLOAD, base, "/models/model"],
                "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                "securityContext": security,
            }
        ],
        "containers": [
            {
                "name": "server",
                "image": WORKER_IMAGE,
                "command": ["transformers", "serve", "/models/model", "--host", "0.0.0.0"],
                "env": [
                    {"name": "HF_HUB_OFFLINE", "value": "1"},
                    {"name": "HOME", "value": "/tmp"},
                ],
                "ports": [{"name": "http", "containerPort": 8000}],
                "readinessProbe": {
                    "httpGet": {"path": "/health", "port": "http"},
                    "periodSeconds": 1,
                },
                "resources": {
                    "requests": {"cpu": "100m", "memory": "3Gi"},
                    "limits": {"memory": "3Gi"},
                },
                "volumeMounts": [
                    {"name": "models", "mountPath": "/models"},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
                "securityContext": security,
            }
        ],
        "volumes": [{"name": "models", **volume}, {"name": "tmp", "emptyDir": {}}],
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": 8000}]},
        },
    ]


def claim(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local-path",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }


def first_answer(k: Kubectl, service: str, model: str, deadline: float) -> float:
    """Poll the Service until a chat completion comes back; returns the time it did."""
    body = json.dumps(
        {"model": model, "messages": PROMPT, "max_tokens": 8, "temperature": 0}
    ).encode()
    url = None
    while time.monotonic() < deadline:
        if url is None and k.exists("service", service):
            ip = k.run("get", "service", service, "-o", "jsonpath={.spec.clusterIP}").strip()
            url = f"http://{ip}:8000/v1/chat/completions" if ip else None
        if url:
            request = urllib.request.Request(url, body, {"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    if response.status == 200 and json.load(response)["choices"]:
                        return time.monotonic()
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
        time.sleep(0.2)
    raise TimeoutError(f"no answer from {service} in time")


def _at(text: str | None) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def pod_phases(k: Kubectl, selector: str) -> dict[str, float]:
    """download (the init container's run, if there is one) and start (main container start to
    Ready)."""
    pods = k.get("pods", selector=selector)["items"]
    if not pods:
        return {}
    status = pods[0]["status"]
    out: dict[str, float] = {}
    init = (status.get("initContainerStatuses") or [{}])[0].get("state", {}).get("terminated")
    if init:
        out["download"] = round((_at(init["finishedAt"]) or 0) - (_at(init["startedAt"]) or 0), 2)
    main = (status.get("containerStatuses") or [{}])[0].get("state", {}).get("running")
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    if main and ready.get("status") == "True":
        out["start"] = round(
            (_at(ready["lastTransitionTime"]) or 0) - (_at(main["startedAt"]) or 0), 2
        )
    return out


def run_one(k: Kubectl, side: str, cache: str, source_base: str, index: int) -> dict[str, Any]:
    prefix = {"glowplug": "gp", "glowplug-init": "gpi"}.get(side, "hand")
    name = f"{prefix}-{cache}-{index}"
    claim_name = f"{side}-warm"
    started = time.monotonic()
    if side in SIDE_FLAGS:
        volume = (
            {"kind": "PersistentVolumeClaim", "existingClaim": claim_name}
            if cache == "warm"
            else {"kind": "EmptyDir"}
        )
        k.apply(modelserver(name, f"{source_base}/manifest.json", volume, SIDE_FLAGS[side]))
        service, model, selector = name, name, f"glowplug.dev/modelserver={name}"
    else:
        k.apply(*by_hand(name, source_base, claim_name if cache == "warm" else None))
        service, model, selector = name, "/models/model", f"app={name}"
    answered = first_answer(k, service, model, started + 300)
    row: dict[str, Any] = {"side": side, "cache": cache, "seconds": round(answered - started, 2)}
    row["phases"] = pod_phases(k, selector)
    if side in SIDE_FLAGS:
        time.sleep(1)  # the worker's own phases arrive with the next status write
        cold = (k.get("ms", name).get("status") or {}).get("coldStart") or {}
        phases = cold.get("phases", {})
        row["phases"].update({p: phases.get(p) for p in ("import", "load", "warmup")})
        if "download" not in row["phases"]:  # overlap-download: the worker's own, beside import
            row["phases"]["download"] = phases.get("download")
        k.run("delete", "ms", name, "--wait=true", timeout=120)
    else:
        k.run("delete", "deployment,service", name, "--wait=true", timeout=120)
    k.run("wait", "--for=delete", "pod", "-l", selector, "--timeout=120s", check=False, timeout=130)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="starts per side and cache")
    args = parser.parse_args()
    k = kubectl().in_namespace(NAMESPACE)
    if not k.get("nodes", selector="glowplug.dev/real-node")["items"]:
        sys.exit("no real node: run `make cluster-up`")
    k.run("create", "namespace", NAMESPACE, check=False)
    install_operator(k)

    work = Path(tempfile.mkdtemp(prefix="realnode-bench-"))
    www = work / "www"
    make_model(www)
    nginx = Nginx(www, work / "nginx", host=NODE_IP)
    source_base = f"{nginx.url}/model"
    rows: list[dict[str, Any]] = []
    try:
        for side in SIDES:
            k.apply(claim(f"{side}-warm"))
        # Fill each warm claim once with its own side's downloader (not timed).
        for side in SIDES:
            run_one(k, side, "warm", source_base, 0)
        for index in range(1, args.runs + 1):
            for cache in ("cold", "warm"):
                for side in SIDES:
                    row = run_one(k, side, cache, source_base, index)
                    print(json.dumps(row))
                    rows.append(row)
    finally:
        nginx.stop()
        k.run("delete", "namespace", NAMESPACE, "--wait=false", check=False)
        subprocess.run(
            ["helm", "--kubeconfig", k.kubeconfig, "-n", SYSTEM, "uninstall", "glowplug"],
            capture_output=True,
        )
        shutil.rmtree(work, ignore_errors=True)
    text = report(rows, args)
    print(text)
    out = ROOT / "bench" / "results" / "realnode_coldstart.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return 0


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"# kubectl apply -> first chat completion on the real node (tiny model, medians of "
        f"{args.runs})",
        "",
        "| cache | side | apply -> answer (s) | x by hand "
        "| download | start | import | load | warmup |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cache in ("cold", "warm"):
        medians = {}
        for side in ("by-hand", "glowplug", "glowplug-init"):
            mine = [r for r in rows if r["side"] == side and r["cache"] == cache]
            if not mine:
                continue
            medians[side] = statistics.median(r["seconds"] for r in mine)
            phase = {
                p: statistics.median(
                    [r["phases"][p] for r in mine if r["phases"].get(p) is not None]
                    or [float("nan")]
                )
                for p in ("download", "start", "import", "load", "warmup")
            }
            ratio = medians[side] / medians["by-hand"] if "by-hand" in medians else float("nan")
            cells = " | ".join("-" if v != v else f"{v:.2f}" for v in phase.values())
            lines.append(f"| {cache} | {side} | {medians[side]:.2f} | {ratio:.2f} | {cells} |")
    lines += [
        "",
        f"Machine: {os.cpu_count()} CPUs, no GPU; one real node (kubelet, containerd, runc).",
        "glowplug: the chart's operator in-cluster, flags " + ", ".join(FLAGS) + "; "
        "glowplug-init: the same without overlap-download (a prefetch init container).",
        "by hand: Deployment with a urllib init container and `transformers serve` (readiness on "
        "/health). download/start from the pods' status; import/load/warmup from glowplug's "
        "status.coldStart (the worker's /startup), and so is glowplug's download with "
        "overlap-download (the worker's own, beside import).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
