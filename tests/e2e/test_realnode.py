"""glowplug's own images on the local cluster's real node (kubelet + containerd + runc): the
chart's operator in-cluster with its own ServiceAccount, a real prefetch init container fetching
from nginx on the node's bridge, a real worker probed by the kubelet and answering through the
Service (kube-proxy)."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from glowplug_worker.devtools.manifest import write_manifest

from tests.ci import cannot_run
from tests.cluster.kube import ROOT, Kubectl, make_namespace, wait_until
from tests.prefetch.servers import Nginx

pytestmark = pytest.mark.e2e

REAL_NODE = "glowplug.dev/real-node"
# The node's bridge address (hack/node.sh NODE_IP): pods reach the host there and nowhere else.
NODE_IP = "10.88.0.1"
PLACEMENT = {
    "nodeSelector": {REAL_NODE: "true"},
    "tolerations": [{"key": REAL_NODE, "operator": "Exists", "effect": "NoSchedule"}],
}
PROMPT = [{"role": "user", "content": "Hello, glowplug!"}]
# A Service kube-proxy knows without endpoints refuses; one it has not seen has no route yet.
NOT_ROUTED_YET = (errno.ECONNREFUSED, errno.EHOSTUNREACH)
RESULTS = ROOT / "bench" / "results" / "realnode_e2e.md"


@pytest.fixture(scope="module")
def real_node(kubectl: Kubectl) -> dict[str, Any]:
    nodes = kubectl.get("nodes", selector=REAL_NODE)["items"]
    if not nodes:
        cannot_run("no node labelled glowplug.dev/real-node: run `make cluster-up`")
    return nodes[0]


@dataclass
class Weights:
    source: str  # the manifest URL the init container fetches
    model_dir: Path  # the same files on this machine, for the reference decode
    bytes_sent: Callable[[], int]  # what nginx has sent of them so far


@pytest.fixture(scope="module")
def weights(
    tmp_path_factory: pytest.TempPathFactory, real_node: dict[str, Any]
) -> Iterator[Weights]:
    """A tiny Llama made here, served by nginx on the bridge address with a sha256 manifest."""
    www = tmp_path_factory.mktemp("www")
    www.chmod(0o755)
    model = www / "tiny"
    subprocess.run(
        [sys.executable, "-m", "glowplug_worker.devtools.tiny_model", str(model)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    write_manifest(model, revision="tiny-e2e")
    for p in [model, *model.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    server = Nginx(www, tmp_path_factory.mktemp("nginx-run"), host=NODE_IP)
    yield Weights(f"{server.url}/tiny/manifest.json", model, lambda: server.bytes_sent("/tiny/"))
    server.stop()


@pytest.fixture(scope="module")
def nginx_bytes(weights: Weights) -> Callable[[], int]:
    """Bytes nginx has sent of the model so far."""
    return weights.bytes_sent


@pytest.fixture(scope="module")
def workloads(kubectl: Kubectl, real_node: dict[str, Any]) -> Iterator[str]:
    """The namespace the in-cluster operator watches (PodSecurity `restricted`)."""
    name = make_namespace(kubectl, "real")
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def release(
    kubectl: Kubectl, crd: None, workloads: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kubectl]:
    """`helm install` of charts/glowplug with its default images, placed on the real node."""
    helm = shutil.which("helm")
    if helm is None:
        pytest.fail("helm is not on PATH: run the tests through `make test-e2e`")
    namespace = f"glowplug-system-{uuid.uuid4().hex[:6]}"
    values = tmp_path_factory.mktemp("values") / "values.yaml"
    values.write_text(json.dumps({"namespaces": [workloads], **PLACEMENT}))
    base = [helm, "--kubeconfig", kubectl.kubeconfig, "--namespace", namespace]
    subprocess.run(
        [*base, "install", "glowplug", str(ROOT / "charts" / "glowplug"), "--create-namespace",
         "--skip-crds", "-f", str(values), "--wait", "--timeout", "120s"],
        check=True, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    yield kubectl.in_namespace(namespace)
    subprocess.run([*base, "uninstall", "glowplug", "--wait"], capture_output=True, timeout=120)
    kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)


def _gone(k: Kubectl, name: str) -> None:
    """Delete a test's ModelServer and wait for its pods to leave: the one node's memory holds
    only a few 3Gi workers, and a later test's rollout needs room for a surge pod."""
    k.run("delete", "ms", name, "--wait=true", timeout=120)
    wait_until(
        f"the pods of {name} gone",
        lambda: not k.get("pods", selector=f"glowplug.dev/modelserver={name}")["items"],
        120,
    )


def _record(title: str, text: str) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as out:
        out.write(f"## {title}\n\n```\n{text.rstrip()}\n```\n\n")


def test_the_real_node_runs_containerd(kubectl: Kubectl, real_node: dict[str, Any]) -> None:
    info = real_node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://2.")
    assert info["kubeletVersion"] == kubectl.json("version")["serverVersion"]["gitVersion"]
    addresses = {a["type"]: a["address"] for a in real_node["status"]["addresses"]}
    assert addresses["InternalIP"] == NODE_IP
    RESULTS.unlink(missing_ok=True)
    _record("kubectl get nodes -o wide", kubectl.run("get", "nodes", "-o", "wide"))


def test_the_chart_runs_the_operator_in_cluster(
    release: Kubectl, real_node: dict[str, Any]
) -> None:
    pod = release.get("pods", selector="app.kubernetes.io/name=glowplug")["items"][0]
    assert pod["spec"]["nodeName"] == real_node["metadata"]["name"]
    assert pod["spec"]["containers"][0]["image"] == "ghcr.io/glowplug/operator:0.1.0"
    # The chart's ServiceAccount token is the operator's only credential.
    assert pod["spec"]["serviceAccountName"].startswith("glowplug")
    state = pod["status"]["containerStatuses"][0]
    assert state["ready"] and "running" in state["state"]


def _reference_answer(model_dir: Path, max_tokens: int) -> str:
    """transformers' own greedy decode of the same chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt")
    if not isinstance(ids, torch.Tensor):  # a BatchEncoding in newer transformers
        ids = ids["input_ids"]
    out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def _chat(url: str, body: bytes) -> str | None:
    """The answer, or None while kube-proxy has not yet routed the Service to the new endpoint
    (it follows the pod's readiness by a moment): refused while it knows no endpoint, no route
    (the Service range ends on the pod bridge) before it knows the Service."""
    request = urllib.request.Request(url, body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return str(json.load(response)["choices"][0]["message"]["content"])
    except urllib.error.URLError as error:
        if isinstance(error.reason, OSError) and error.reason.errno in NOT_ROUTED_YET:
            return None
        raise


def _with_worker_phases(k: Kubectl, name: str) -> dict[str, float] | None:
    """status.coldStart.phases once they hold the worker's own import, load and warmup."""
    phases = (k.get("ms", name)["status"].get("coldStart") or {}).get("phases") or {}
    return phases if {"import", "load", "warmup"} <= set(phases) else None


def test_a_modelserver_serves_from_our_images_on_the_real_node(
    kubectl: Kubectl, release: Kubectl, workloads: str, weights: Weights,
    real_node: dict[str, Any],
) -> None:  # fmt: skip
    k = kubectl.in_namespace(workloads)
    flags = ["prefetch-weights", "fast-load", "hf-offline", "native-model"]
    pod = _ready_pod(k, "tiny", weights, flags)
    assert pod["spec"]["nodeName"] == real_node["metadata"]["name"]
    init = pod["status"]["initContainerStatuses"][0]
    assert init["state"]["terminated"]["exitCode"] == 0
    # The prefetcher's report (its termination message) says what it fetched.
    report = json.loads(init["state"]["terminated"]["message"])
    worker = pod["status"]["containerStatuses"][0]
    assert worker["ready"] and worker["restartCount"] == 0
    assert worker["imageID"], "containerd resolved the worker image"

    service = k.get("service", "tiny")
    url = f"http://{service['spec']['clusterIP']}:8000/v1/chat/completions"
    body = json.dumps({"model": "tiny", "messages": PROMPT, "max_tokens": 8, "temperature": 0})
    body = body.encode()
    answer = wait_until("an answer through the Service", lambda: _chat(url, body), 30)
    assert answer == _reference_answer(weights.model_dir, 8)

    # The operator read the worker's own phases from its /startup into status and its metrics.
    phases = wait_until(
        "the worker's phases in status.coldStart", lambda: _with_worker_phases(k, "tiny"), 30
    )
    assert phases["download"] == report["phases"]["download"]
    # Two operator replicas: the leader reconciled and observed the phases; the standby did not.
    pages = []
    for operator in release.get("pods", selector="app.kubernetes.io/name=glowplug")["items"]:
        url = f"http://{operator['status']['podIP']}:9090/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            pages.append(response.read().decode())
    assert any('glowplug_cold_start_seconds_count{phase="load"}' in page for page in pages)

    _record("kubectl get pods -o wide", k.run("get", "pods", "-o", "wide"))
    _record("the prefetcher's report", json.dumps(report, indent=1))
    _record("POST /v1/chat/completions through the Service", answer)
    _record(
        "status.coldStart",
        json.dumps(k.get("ms", "tiny")["status"].get("coldStart"), indent=1),
    )
    _gone(k, "tiny")


def _ready_pod(k: Kubectl, name: str, weights: Weights, flags: list[str]) -> dict[str, Any]:
    """Apply a ModelServer with `flags` on an EmptyDir cache, wait until Ready; its pod."""
    k.apply(
        _modelserver(
            name,
            weights,
            cache={"kind": "EmptyDir"},
            startup={"budgetSeconds": 300, "optimizations": [{"name": f} for f in flags]},
        )
    )
    k.run("wait", "--for=condition=Ready", f"modelserver/{name}", "--timeout=300s", timeout=320)
    pod: dict[str, Any] = k.get("pods", selector=f"glowplug.dev/modelserver={name}")["items"][0]
    return pod


def _modelserver(name: str, weights: Weights, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": weights.source, "task": "generate"},
            # The node has 2 CPUs for every test's pods; a worker uses what is free.
            "resources": {"gpus": 0, "cpu": "100m", "memory": "3Gi"},
            "placement": PLACEMENT,
            "startup": {"budgetSeconds": 300},
            **spec,
        },
    }


def test_two_replicas_share_one_claim_and_download_once(
    kubectl: Kubectl,
    release: Kubectl,
    workloads: str,
    weights: Weights,
    nginx_bytes: Callable[[], int],
) -> None:
    """A `local-path` claim is a real directory on the node: the second pod finds the weights
    the first one fetched."""
    k = kubectl.in_namespace(workloads)
    before = nginx_bytes()
    cache = {"kind": "PersistentVolumeClaim", "size": "1Gi", "storageClassName": "local-path",
             "accessMode": "ReadWriteOnce"}  # fmt: skip
    k.apply(_modelserver("shared", weights, replicas=2, cache=cache))
    k.run("wait", "--for=condition=Ready", "modelserver/shared", "--timeout=400s", timeout=420)

    claim = k.get("pvc", "shared-cache")
    assert claim["status"]["phase"] == "Bound"
    volume = kubectl.get("pv", claim["spec"]["volumeName"])
    assert volume["spec"]["storageClassName"] == "local-path"
    pods = k.get("pods", selector="glowplug.dev/modelserver=shared")["items"]
    assert len(pods) == 2 and all(p["status"]["containerStatuses"][0]["ready"] for p in pods)
    downloads = sorted(
        (json.loads(p["status"]["initContainerStatuses"][0]["state"]["terminated"]["message"])["download"]
         for p in pods),
        key=lambda d: d["reused"],
    )  # fmt: skip
    assert [d["reused"] for d in downloads] == [False, True]
    assert downloads[1]["bytes"] == 0
    model_bytes = sum(p.stat().st_size for p in weights.model_dir.rglob("*") if p.is_file())
    # One copy of the weights left nginx (the manifest was fetched by both).
    assert model_bytes <= nginx_bytes() - before < 2 * model_bytes
    _record("two replicas, one claim: the prefetchers' reports", json.dumps(downloads, indent=1))
    _gone(k, "shared")


def test_overlap_download_serves_without_an_init_container(
    kubectl: Kubectl,
    release: Kubectl,
    workloads: str,
    weights: Weights,
    nginx_bytes: Callable[[], int],
) -> None:
    """The worker fetches the weights from nginx itself, beside its imports; its download is a
    phase of status.coldStart."""
    k = kubectl.in_namespace(workloads)
    before = nginx_bytes()
    flags = ["overlap-download", "fast-load", "hf-offline", "native-model"]
    pod = _ready_pod(k, "overlap", weights, flags)
    assert "initContainers" not in pod["spec"]
    worker = pod["status"]["containerStatuses"][0]
    assert worker["ready"] and worker["restartCount"] == 0
    model_bytes = sum(p.stat().st_size for p in weights.model_dir.rglob("*") if p.is_file())
    assert nginx_bytes() - before >= model_bytes
    service = k.get("service", "overlap")
    url = f"http://{service['spec']['clusterIP']}:8000/v1/chat/completions"
    body = json.dumps({"model": "overlap", "messages": PROMPT, "max_tokens": 8, "temperature": 0})
    answer = wait_until("an answer through the Service", lambda: _chat(url, body.encode()), 30)
    assert answer == _reference_answer(weights.model_dir, 8)

    status = k.get("ms", "overlap")["status"]
    weights_ready = next(c for c in status["conditions"] if c["type"] == "WeightsReady")
    assert weights_ready["status"] == "True"
    assert "the worker downloaded the weights" in weights_ready["message"]
    phases = wait_until(
        "the worker's phases in status.coldStart", lambda: _with_worker_phases(k, "overlap"), 30
    )
    assert 0 < phases["download"] < phases["import"]  # the tiny model lands within the imports
    _record("overlap-download: status.coldStart", json.dumps(status.get("coldStart"), indent=1))
    _gone(k, "overlap")


def _native_model_cannot_take(model_dir: Path, www: Path) -> None:
    """A copy of the model whose final norm tensor has a name native-model has no place for
    (transformers, without fast-load, loads it and warns)."""
    from tests.serve.test_loading import rewrite_header  # imports torch: only when needed

    odd = www / "odd"
    shutil.copytree(model_dir, odd)

    def rename(header: dict[str, Any]) -> None:
        header["model.nrm_.weight"] = header.pop("model.norm.weight")  # same length, same offsets

    rewrite_header(odd / "model.safetensors", rename)
    write_manifest(odd, revision="odd")
    for p in [odd, *odd.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def _rolled_back(k: Kubectl, name: str) -> dict[str, dict[str, Any]]:
    status = k.get("ms", name).get("status") or {}
    return {o["name"]: o for o in status.get("optimizations") or []}


def _first_failure_to_ready(k: Kubectl, name: str) -> float:
    """Seconds from the first worker container that ended in failure to the ModelServer's Ready."""
    from datetime import datetime

    def at(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    failures = []
    for event in k.get("events")["items"]:
        if event.get("reason") in ("BackOff", "Unhealthy", "Killing") or "Failed" in event.get(
            "reason", ""
        ):
            stamp = event.get("firstTimestamp") or event.get("eventTime")
            if stamp:
                failures.append(at(stamp))
    ready = next(c for c in k.get("ms", name)["status"]["conditions"] if c["type"] == "Ready")
    return at(ready["lastTransitionTime"]) - min(failures)


@pytest.mark.parametrize(
    ("scenario", "source", "flags", "culprit", "reasons", "budget"),
    [
        # The worker fails in its load phase and its report names the flag: rolled back at once.
        ("report names the flag", "odd", [{"name": "native-model"}, {"name": "hf-offline"}],
         "native-model", {"StartupFailed", "FailedInPhase"}, 120),
        # The worker's own command line refuses the flag's args before any report is written;
        # argparse's last log line names the option: rolled back from the log.
        ("no report: the log names the flag", "tiny",
         [{"name": "hf-offline"}, {"name": "bad-arg", "args": ["--no-such-option"]}],
         "bad-arg", {"StartupFailed"}, 120),
        # The worker listens where no probe looks and logs nothing of it: never Ready, the real
        # startup probe kills it after the budget, and bisection finds the flag.
        ("never ready: bisection", "tiny",
         [{"name": "hf-offline"}, {"name": "wrong-port", "args": ["--port", "9000"]}],
         "wrong-port", {"Bisected"}, 30),
    ],
)  # fmt: skip
def test_a_flag_that_breaks_real_starts_is_rolled_back(
    kubectl: Kubectl, release: Kubectl, workloads: str, weights: Weights,
    scenario: str, source: str, flags: list[dict[str, Any]], culprit: str, reasons: set[str],
    budget: int,
) -> None:  # fmt: skip
    if source == "odd" and not (weights.model_dir.parent / "odd").exists():
        _native_model_cannot_take(weights.model_dir, weights.model_dir.parent)
    k = kubectl.in_namespace(workloads)
    name = f"rb-{culprit}"
    url = weights.source.replace("/tiny/", f"/{source}/")
    body = _modelserver(name, weights, startup={"budgetSeconds": budget, "optimizations": flags})
    body["spec"]["model"]["source"] = url
    k.apply(body)
    generation = k.get("ms", name)["metadata"]["generation"]
    k.run("wait", "--for=condition=Ready", f"modelserver/{name}", "--timeout=480s", timeout=500)

    states = _rolled_back(k, name)
    assert states[culprit]["state"] == "RolledBack"
    assert states[culprit]["reason"] in reasons
    assert all(s["state"] == "Active" for n, s in states.items() if n != culprit)
    ms = k.get("ms", name)
    assert ms["metadata"]["generation"] == generation  # the spec is untouched
    assert [f["name"] for f in ms["spec"]["startup"]["optimizations"]] == [f["name"] for f in flags]
    events = k.run("get", "events", "--field-selector", f"involvedObject.name={name}")
    assert "OptimizationRolledBack" in events and culprit in events
    pod = k.get("pods", selector=f"glowplug.dev/modelserver={name}")["items"]
    assert any(p["status"]["containerStatuses"][0]["ready"] for p in pod)
    seconds = _first_failure_to_ready(k, name)
    _record(
        f"rollback on real containers ({scenario}): first failure -> Ready {seconds:.1f} s",
        k.run("describe", "ms", name),
    )
    _gone(k, name)


def test_transformers_serve_engine_serves_and_a_breaking_flag_is_rolled_back(
    kubectl: Kubectl, release: Kubectl, workloads: str, weights: Weights
) -> None:
    """A stock third-party server under glowplug: `transformers serve` (engine
    transformers-serve) reads the weights glowplug's prefetch image fetched. Its flash-attention
    flag fails at load on this CPU node with transformers' own ImportError; the engine writes no
    glowplug report, so the kubelet's copy of its last log lines is the evidence that blames the
    flag. The other flag stays on, and the server answers through the Service."""
    k = kubectl.in_namespace(workloads)
    name = "ts"
    flags = [{"name": "flash-attention"}, {"name": "log-info", "args": ["--log-level", "info"]}]
    k.apply(
        _modelserver(
            name,
            weights,
            engine={"kind": "transformers-serve"},
            startup={"budgetSeconds": 300, "optimizations": flags},
        )
    )
    k.run("wait", "--for=condition=Ready", f"modelserver/{name}", "--timeout=480s", timeout=500)

    states = _rolled_back(k, name)
    assert states["flash-attention"]["state"] == "RolledBack"
    assert states["flash-attention"]["reason"] == "StartupFailed"
    assert "FlashAttention2 has been toggled on" in states["flash-attention"]["message"]
    assert states["log-info"]["state"] == "Active"
    events = k.run("get", "events", "--field-selector", f"involvedObject.name={name}")
    assert "OptimizationRolledBack" in events and "FlashAttention2" in events

    pods = k.get("pods", selector=f"glowplug.dev/modelserver={name}")["items"]
    ready = [p for p in pods if p["status"]["containerStatuses"][0]["ready"]]
    assert ready
    spec = ready[0]["spec"]
    assert spec["initContainers"][-1]["image"] == "ghcr.io/glowplug/prefetch:0.1.0"
    server = spec["containers"][0]
    assert "exec transformers serve" in server["command"][2]
    assert "--log-level" in server["args"] and "flash_attention_2" not in server["args"]

    service = k.get("service", name)
    url = f"http://{service['spec']['clusterIP']}:8000/v1/chat/completions"
    body = json.dumps({"model": name, "messages": PROMPT, "max_tokens": 8, "temperature": 0})
    answer = wait_until("an answer through the Service", lambda: _chat(url, body.encode()), 30)
    assert isinstance(answer, str) and answer

    cold = k.get("ms", name)["status"]["coldStart"]
    assert {"download", "start"} <= set(cold["phases"])  # the engine's start is the pod's own
    seconds = _first_failure_to_ready(k, name)
    _record(
        f"engine transformers-serve, flag rolled back from its log: first failure -> Ready "
        f"{seconds:.1f} s",
        k.run("describe", "ms", name),
    )
    _record("transformers serve answered through the Service", answer)
    _gone(k, name)


def test_a_rollout_under_steady_load_fails_no_request(
    kubectl: Kubectl, release: Kubectl, workloads: str, weights: Weights
) -> None:
    """Clients keep sending chat completions through the Service while a spec change rolls the
    pods: the new pod serves before the old one goes (maxUnavailable 0), the old one keeps
    serving through its preStop delay while kube-proxy stops routing to it, then drains."""
    import threading

    k = kubectl.in_namespace(workloads)
    name = "steady"
    k.apply(_modelserver(name, weights, startup={"budgetSeconds": 300}))
    k.run("wait", "--for=condition=Ready", f"modelserver/{name}", "--timeout=300s", timeout=320)
    service = k.get("service", name)
    url = f"http://{service['spec']['clusterIP']}:8000/v1/chat/completions"
    body = json.dumps({"model": name, "messages": PROMPT, "max_tokens": 2}).encode()
    wait_until("the Service routes", lambda: _chat(url, body), 30)

    outcomes: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            request = urllib.request.Request(url, body, {"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    outcomes.append(str(response.status))
            except urllib.error.HTTPError as error:
                outcomes.append(str(error.code))
            except (urllib.error.URLError, OSError) as error:
                outcomes.append(type(getattr(error, "reason", error)).__name__)

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        old = {
            p["metadata"]["name"]
            for p in k.get("pods", selector=f"glowplug.dev/modelserver={name}")["items"]
        }
        flags = {"spec": {"startup": {"optimizations": [{"name": "hf-offline"}]}}}
        k.run("patch", "ms", name, "--type=merge", "-p", json.dumps(flags))

        def rolled() -> bool:
            pods = k.get("pods", selector=f"glowplug.dev/modelserver={name}")["items"]
            return bool(pods) and not old & {p["metadata"]["name"] for p in pods}

        wait_until("the old pod gone and the new one serving", rolled, 240)
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    failed = [o for o in outcomes if o != "200"]
    _record(
        "a rollout under steady load (2 clients, chat completions through the Service)",
        f"requests: {len(outcomes)}, failed: {len(failed)} {sorted(set(failed))}",
    )
    assert len(outcomes) > 20
    assert failed == []
    _gone(k, name)
