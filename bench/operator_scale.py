"""Operator scale benchmark (issue 3): N ModelServers applied at once to the local control plane.

For each size N it measures the seconds until every ModelServer has its Deployment and Service and
`Ready=True` (kwok nodes make the pods Ready), the operator's peak RSS, and the API writes per
ModelServer during convergence and during a steady-state window after it. It prints a table and
writes bench/results/operator_scale.md and .json.

    uv run python bench/operator_scale.py                      # sizes 100,500,1000, own cluster
    uv run python bench/operator_scale.py --sizes 20 --steady-seconds 10
    uv run python bench/operator_scale.py --kubeconfig .cluster/kubeconfig --sizes 50
    uv run python bench/operator_scale.py --sizes 1000 --repeat 3   # the median ratio, ~20 min

Without --kubeconfig it starts a fresh cluster for each size (hack/cluster.sh with
GLOWPLUG_CLUSTER_DIR, default /tmp/glowplug-bench-cluster; about 15 s, where deleting 500
ModelServers' namespace took 50 s) and stops it at the end unless --keep. With --kubeconfig the
sizes share that cluster and each size's namespace is deleted (and timed) unless --keep. Each size
has its own namespace and a fresh operator process watching only that namespace. The harness adds
kwok GPU nodes (8 GPUs each).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import functools
import math
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from json import dumps as json_dumps
from json import loads as json_loads
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GROUP_PATH = "/apis/glowplug.dev/v1alpha1"
MANAGER = "glowplug-bench"
GPUS_PER_NODE = 8
OPERATOR_WATCHES = ("modelservers", "deployments", "services", "pods")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The operator's writes as the API server counts them (apiserver_request_total has no user label,
# so they are told apart by resource and verb; the operator's Events are left out there because
# the scheduler, kube-controller-manager and kwok post Events too).
OPERATOR_RESOURCES = {
    ("deployments", ""),
    ("services", ""),
    ("persistentvolumeclaims", ""),
    ("poddisruptionbudgets", ""),
    ("modelservers", "status"),
}
OPERATOR_VERBS = {"APPLY", "PATCH", "DELETE"}
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}


# --- talking to the API server -------------------------------------------------------------------


class Kube:
    """A minimal async REST client from a kubeconfig (client certificates or a bearer token).

    On aiohttp, not httpx: httpx's connection pool checks every open connection on each request
    (`has_expired`, a `getpeername` each); with 64 creates in flight that was most of the 72% of
    a core the benchmark took, on the machine the API server runs on."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        context_name = config.get("current-context") or config["contexts"][0]["name"]
        context = _named(config["contexts"], context_name)["context"]
        cluster = _named(config["clusters"], context["cluster"])["cluster"]
        user = _named(config.get("users") or [], context.get("user", ""))["user"]
        self._tmp = tempfile.TemporaryDirectory(prefix="glowplug-bench-")
        ctx = ssl.create_default_context(cafile=self._file(cluster, "certificate-authority"))
        if cluster.get("insecure-skip-tls-verify"):
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        cert = self._file(user, "client-certificate")
        if cert:
            ctx.load_cert_chain(cert, self._file(user, "client-key"))
        self._server = cluster["server"].rstrip("/")
        self._ssl = ctx
        self._headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._session is None:  # made inside the running event loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=80, ssl=self._ssl),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=60, sock_connect=10),
            )
        return self._session

    def _file(self, section: dict[str, Any], key: str) -> str | None:
        if section.get(key):
            return str(section[key])
        data = section.get(f"{key}-data")
        if not data:
            return None
        path = Path(self._tmp.name) / key
        path.write_bytes(base64.b64decode(data))
        return str(path)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._tmp.cleanup()

    async def request(
        self,
        method: str,
        path: str,
        ok: Iterable[int] = (),
        json: Any = None,
        params: dict[str, str] | None = None,
        content: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        async with self.http.request(
            method, self._server + path, json=json, params=params, data=content, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status >= 400 and resp.status not in ok:
                raise ApiError(f"{method} {path}: {resp.status} {text[:300]}")
            if resp.content_type == "application/json":
                return json_loads(text)
            return text

    async def apply(self, path: str, manifest: dict[str, Any]) -> Any:
        """Server-side apply (creates or updates) with the benchmark's field manager."""
        return await self.request(
            "PATCH",
            path,
            params={"fieldManager": MANAGER, "force": "true"},
            content=json_dumps(manifest),
            headers={"Content-Type": "application/apply-patch+yaml"},
        )

    async def watch(self, path: str, params: dict[str, str], handle: Callable[..., None]) -> None:
        """List, then watch forever from the list's resourceVersion; relist on 410 Gone."""
        while True:
            listing = await self.request("GET", path, params=params)
            for item in listing["items"]:
                handle("ADDED", item)
            version = listing["metadata"]["resourceVersion"]
            gone = False
            while not gone:
                query = {
                    **params,
                    "watch": "1",
                    "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": "900",
                }
                try:
                    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
                    async with self.http.get(
                        self._server + path, params=query, timeout=timeout
                    ) as r:
                        async for line in _lines(r.content):
                            event = json_loads(line)
                            if event["type"] == "ERROR":
                                gone = True
                                break
                            version = event["object"]["metadata"]["resourceVersion"]
                            if event["type"] != "BOOKMARK":
                                handle(event["type"], event["object"])
                except aiohttp.ClientError:
                    await asyncio.sleep(0.5)


class ApiError(RuntimeError):
    """The API server answered with an error status (the message has it: `...: 409 ...`)."""


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """A watch stream's lines, of any length (aiohttp's own line reader stops at 128 KiB)."""
    buffer = b""
    async for data in content.iter_any():
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line:
                yield line
    if buffer:
        yield buffer


def _named(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next((i for i in items if i["name"] == name), {"user": {}, "cluster": {}})


# --- metrics and /proc ---------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str, names: set[str]) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        match = _SAMPLE.match(line)
        if match and match.group(1) in names:
            labels = dict(_LABEL.findall(match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


@dataclass
class Counters:
    """A snapshot of the write counters: the operator's own and the API server's."""

    operator: dict[str, float] = field(default_factory=dict)  # kind -> writes
    reconciles: float = 0.0
    reconcile_errors: float = 0.0
    apiserver: dict[str, float] = field(default_factory=dict)  # "verb resource[/sub]" -> count
    latency_sum: dict[str, float] = field(default_factory=dict)  # same keys, server-side seconds
    latency_count: dict[str, float] = field(default_factory=dict)

    def minus(self, other: Counters) -> Counters:
        def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
            return {
                k: a.get(k, 0) - b.get(k, 0)
                for k in a.keys() | b.keys()
                if a.get(k, 0) != b.get(k, 0)
            }

        return Counters(
            diff(self.operator, other.operator),
            self.reconciles - other.reconciles,
            self.reconcile_errors - other.reconcile_errors,
            diff(self.apiserver, other.apiserver),
            diff(self.latency_sum, other.latency_sum),
            diff(self.latency_count, other.latency_count),
        )

    def mean_latency_ms(self) -> dict[str, float]:
        """Mean server-side latency of the operator's kinds of write over the window."""
        out = {}
        for key, count in self.latency_count.items():
            verb, resource = key.split(" ", 1)
            name, _, sub = resource.partition("/")
            if count and verb in OPERATOR_VERBS | {"POST"} and (name, sub) in OPERATOR_RESOURCES:
                out[key] = round(1000 * self.latency_sum.get(key, 0) / count, 1)
        return out

    @property
    def operator_writes(self) -> float:
        return sum(self.operator.values())

    @property
    def apiserver_operator_writes(self) -> float:
        total = 0.0
        for key, value in self.apiserver.items():
            verb, resource = key.split(" ", 1)
            name, _, sub = resource.partition("/")
            if verb in OPERATOR_VERBS and (name, sub) in OPERATOR_RESOURCES:
                total += value
        return total

    @property
    def apiserver_writes(self) -> float:
        return sum(self.apiserver.values())


async def snapshot(kube: Kube, metrics_url: str) -> Counters:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as plain,
        plain.get(metrics_url) as response,
    ):
        own = await response.text()
    wanted = {
        "glowplug_api_writes_total",
        "glowplug_reconcile_seconds_count",
        "glowplug_reconcile_errors_total",
    }
    counters = Counters()
    for name, labels, value in parse_prometheus(own, wanted):
        if name == "glowplug_api_writes_total":
            counters.operator[labels["kind"]] = value
        elif name == "glowplug_reconcile_seconds_count":
            counters.reconciles = value
        else:
            counters.reconcile_errors = value
    return await apiserver_counters(kube, counters)


async def apiserver_counters(kube: Kube, counters: Counters | None = None) -> Counters:
    """The API server's write counts and latencies, by verb and resource, into `counters` (the
    floor, which has no operator to ask, passes none)."""
    counters = counters or Counters()
    names = {
        "apiserver_request_total": counters.apiserver,
        "apiserver_request_duration_seconds_sum": counters.latency_sum,
        "apiserver_request_duration_seconds_count": counters.latency_count,
    }
    for name, labels, value in parse_prometheus(await kube.request("GET", "/metrics"), set(names)):
        if labels.get("verb") in WRITE_VERBS:
            sub = labels.get("subresource", "")
            key = f"{labels['verb']} {labels.get('resource', '?')}{'/' + sub if sub else ''}"
            names[name][key] = names[name].get(key, 0) + value
    return counters


async def namespaced_watches(kube: Kube) -> Counter[str]:
    """Open namespace-scoped WATCH requests by resource (apiserver_longrunning_requests)."""
    text = await kube.request("GET", "/metrics")
    watches: Counter[str] = Counter()
    for _, labels, value in parse_prometheus(text, {"apiserver_longrunning_requests"}):
        if labels.get("verb") == "WATCH" and labels.get("scope") == "namespace":
            watches[labels.get("resource", "")] += int(value)
    return watches


async def wait_for_watches(
    kube: Kube, before: Counter[str], proc: subprocess.Popen[bytes], log: Path
) -> None:
    """Until the operator has opened its watches, so that the clock starts with it listening."""
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited ({proc.returncode}); see {log}")
        now = await namespaced_watches(kube)
        if all(now[r] > before[r] for r in OPERATOR_WATCHES):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the operator did not open its watches in 60 s; see {log}")


def proc_memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kb = line.split()[:2]
                values[key] = int(kb) / 1024
    return values.get("VmRSS:", 0.0), values.get("VmHWM:", 0.0)


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    cpu = {name: proc_cpu(pid) for name, pid in pids.items()}
    with open("/proc/stat") as stat:
        total = [int(x) for x in stat.readline().split()[1:]]
    cpu["(machine busy)"] = (sum(total) - total[3] - total[4]) / CLK_TCK
    return cpu


def cluster_pids(kubeconfig: Path) -> dict[str, int]:
    """The control plane's processes, where the cluster is one of hack/cluster.sh's."""
    pids = {}
    for path in sorted((kubeconfig.parent / "pids").glob("*")):
        with contextlib.suppress(OSError, ValueError):
            pids[path.name] = int(path.read_text())
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the cluster side: CRD, nodes, ModelServers --------------------------------------------------


async def install_crd(kube: Kube) -> None:
    crd = yaml.safe_load((ROOT / "crds" / "modelserver.yaml").read_text())
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
    await kube.apply(path, crd)
    for _ in range(300):
        body = await kube.request("GET", path)
        conditions = (body.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            break
        await asyncio.sleep(0.1)
    else:
        raise RuntimeError("the ModelServer CRD did not become Established")
    for _ in range(300):  # until its storage is ready too (before that, lists answer 429)
        listing = await kube.request("GET", f"{GROUP_PATH}/modelservers", ok=(429,))
        if isinstance(listing, dict) and listing.get("kind") == "ModelServerList":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the ModelServer CRD's storage did not become ready")


async def ensure_gpu_nodes(kube: Kube, gpus_needed: int) -> int:
    """Enough kwok GPU nodes (8 GPUs each, like hack/kwok/nodes.yaml) for `gpus_needed` plus 5%."""
    template = next(d for d in yaml.safe_load_all((ROOT / "hack/kwok/nodes.yaml").read_text()) if d)
    wanted = math.ceil(gpus_needed * 1.05 / GPUS_PER_NODE)
    nodes = (await kube.request("GET", "/api/v1/nodes", params={"labelSelector": "type=kwok"}))[
        "items"
    ]
    missing = [
        i
        for i in range(wanted)
        if f"kwok-bench-gpu-{i}" not in {n["metadata"]["name"] for n in nodes}
    ]
    missing = missing[: max(0, wanted - len(nodes))]

    async def create(i: int) -> None:
        node = copy.deepcopy(template)
        name = f"kwok-bench-gpu-{i}"
        node["metadata"]["name"] = name
        node["metadata"]["labels"]["kubernetes.io/hostname"] = name
        await kube.request("POST", "/api/v1/nodes", ok=(409,), json=node)

    await asyncio.gather(*(create(i) for i in missing))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        nodes = (await kube.request("GET", "/api/v1/nodes", params={"labelSelector": "type=kwok"}))[
            "items"
        ]
        usable = [
            n
            for n in nodes
            if not n["spec"].get("taints")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        if len(usable) >= max(wanted, len(nodes)):
            return len(usable)
        await asyncio.sleep(0.5)
    raise RuntimeError(f"only {len(usable)} of {len(nodes)} kwok nodes became Ready and untainted")


@functools.cache
def _example() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "examples" / "modelserver.yaml").read_text()))


def modelserver(name: str, gpus: int) -> dict[str, Any]:
    """examples/modelserver.yaml with a small footprint, so that a node takes 8 of them (parsed
    once: PyYAML takes a millisecond of the benchmark's CPU per parse)."""
    body = copy.deepcopy(_example())
    body["metadata"] = {"name": name}
    body["spec"]["resources"] = {"gpus": gpus, "memory": "1Gi", "cpu": "1"}
    body["spec"]["cache"] = {"kind": "EmptyDir", "size": "8Gi"}
    return body


async def create_namespace(kube: Kube, name: str) -> None:
    await kube.request(
        "POST",
        "/api/v1/namespaces",
        json={"metadata": {"name": name, "labels": {"glowplug.dev/bench": "operator-scale"}}},
    )
    for _ in range(300):  # ServiceAccount admission needs the "default" ServiceAccount
        body = await kube.request(
            "GET", f"/api/v1/namespaces/{name}/serviceaccounts/default", ok=(404,)
        )
        if isinstance(body, dict) and body.get("kind") == "ServiceAccount":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"namespace {name} got no default ServiceAccount")


async def delete_namespace(kube: Kube, name: str, timeout: float) -> float | None:
    """Seconds until the namespace (and everything in it) is gone; None past the timeout."""
    start = time.monotonic()
    await kube.request("DELETE", f"/api/v1/namespaces/{name}", ok=(404,))
    # The pods have a 60 s grace period and kwok honours it: end them now (a terminating
    # namespace accepts no new pods, so the ReplicaSets cannot replace them).
    await kube.request(
        "DELETE", f"/api/v1/namespaces/{name}/pods", ok=(404,), params={"gracePeriodSeconds": "0"}
    )
    while time.monotonic() - start < timeout:
        body = await kube.request("GET", f"/api/v1/namespaces/{name}", ok=(404,))
        if not isinstance(body, dict) or body.get("kind") != "Namespace":
            return time.monotonic() - start
        await asyncio.sleep(1)
    return None


# --- progress ------------------------------------------------------------------------------------


@dataclass
class Progress:
    """What the watches have seen, with the first time (seconds after t0) each thing happened."""

    names: set[str]
    t0: float = 0.0
    ready: set[str] = field(default_factory=set)
    deployments: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)
    pods_ready: set[str] = field(default_factory=set)
    first: dict[str, dict[str, float]] = field(default_factory=dict)
    converged_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def _mark(self, what: str, name: str, present: bool, into: set[str]) -> None:
        if name not in self.names:
            return
        if present:
            into.add(name)
            self.first.setdefault(what, {}).setdefault(name, time.monotonic() - self.t0)
        else:
            into.discard(name)
        n = len(self.names)
        if (
            self.converged_at is None
            and len(self.ready) == n
            and len(self.deployments) == n
            and len(self.services) == n
        ):
            self.converged_at = time.monotonic() - self.t0
            self.done.set()

    def on_modelserver(self, kind: str, body: dict[str, Any]) -> None:
        conditions = (body.get("status") or {}).get("conditions") or []
        ready = kind != "DELETED" and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
        )
        self._mark("ready", body["metadata"]["name"], ready, self.ready)

    def on_deployment(self, kind: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        self._mark("deployment", name, kind != "DELETED", self.deployments)
        pods = kind != "DELETED" and (body.get("status") or {}).get("readyReplicas", 0) >= 1
        self._mark("pods_ready", name, pods, self.pods_ready)

    def on_service(self, kind: str, body: dict[str, Any]) -> None:
        self._mark("service", body["metadata"]["name"], kind != "DELETED", self.services)

    def all_at(self, what: str) -> float | None:
        """When the last of the N first reached `what`."""
        seen = self.first.get(what, {})
        return max(seen.values()) if len(seen) >= len(self.names) else None

    def stages(self) -> dict[str, dict[str, float]]:
        """Per stage, when the ModelServers first reached it: median, 90th percentile, last."""
        out = {}
        for what, seen in self.first.items():
            times = sorted(seen.values())
            out[what] = {
                "count": len(times),
                "p50": round(times[len(times) // 2], 1),
                "p90": round(times[min(len(times) - 1, int(len(times) * 0.9))], 1),
                "max": round(times[-1], 1),
            }
        return out

    def counts(self) -> dict[str, int]:
        return {
            "ready": len(self.ready),
            "deployments": len(self.deployments),
            "services": len(self.services),
            "pods_ready": len(self.pods_ready),
        }


# --- the floor: the same children applied directly ----------------------------------------------


def floor_manifests(namespace: str, name: str, gpus: int) -> list[dict[str, Any]]:
    """The Deployment and Service the operator would apply for `modelserver(name)` on its first
    reconcile (its own builders, every flag of the spec on), without owner references (there is
    no ModelServer to own them)."""
    from glowplug_operator import builders
    from glowplug_operator.contract import flag_fingerprint, flag_set_hash
    from glowplug_operator.settings import Settings
    from glowplug_operator.spec import parse_spec

    body = modelserver(name, gpus)
    body["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), generation=1)
    spec = parse_spec(body)
    owner = builders.Owner(name, namespace, body["metadata"]["uid"])
    flags = [f.name for f in spec.startup.optimizations]
    prints = {
        f.name: flag_fingerprint(f.model_dump(by_alias=True)) for f in spec.startup.optimizations
    }
    out = [
        builders.build_deployment(owner, spec, Settings(), flags, flag_set_hash(flags, prints)),
        builders.build_service(owner, spec),
    ]
    for manifest in out:
        manifest["metadata"].pop("ownerReferences", None)
    return out


async def run_floor(
    kube: Kube, kubeconfig: Path, size: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Seconds from the first apply until every one of the N Deployments has a Ready pod and
    every Service exists, when the benchmark applies them itself (server-side apply, the same
    concurrency as the ModelServer creates): what the cluster needs without any operator."""
    namespace = f"floor-{size}-{uuid.uuid4().hex[:6]}"
    await create_namespace(kube, namespace)
    names = [f"ms-{i:04d}" for i in range(size)]
    manifests = {n: floor_manifests(namespace, n, args.gpus) for n in names}
    progress = Progress(set(names))

    def on_deployment(kind: str, body: dict[str, Any]) -> None:
        progress.on_deployment(kind, body)
        name = body["metadata"]["name"]
        pods = kind != "DELETED" and (body.get("status") or {}).get("readyReplicas", 0) >= 1
        progress._mark("ready", name, pods, progress.ready)  # the floor's "converged"

    base = f"/namespaces/{namespace}"
    managed = {"labelSelector": "app.kubernetes.io/managed-by=glowplug"}
    watches = [
        asyncio.create_task(kube.watch(f"/apis/apps/v1{base}/deployments", managed, on_deployment)),
        asyncio.create_task(kube.watch(f"/api/v1{base}/services", managed, progress.on_service)),
    ]
    gate = asyncio.Semaphore(args.floor_concurrency)
    latency_before = await apiserver_counters(kube)
    pids = {**cluster_pids(kubeconfig), "benchmark": os.getpid()}
    cpu0 = cpu_snapshot(pids)
    progress.t0 = time.monotonic()

    async def retried(path: str, manifest: dict[str, Any]) -> None:
        for attempt in range(5):  # an apply is idempotent; a loaded API server answers 504/429
            try:
                await kube.apply(path, manifest)
                return
            except (ApiError, aiohttp.ClientError) as error:
                if attempt == 4 or not re.search(r": (5\d\d|429) ", str(error)):
                    raise
                await asyncio.sleep(1 + attempt)

    async def apply(name: str) -> None:
        async with gate:
            deployment, service = manifests[name]
            await asyncio.gather(
                retried(f"/apis/apps/v1{base}/deployments/{name}", deployment),
                retried(f"/api/v1{base}/services/{name}", service),
            )

    await asyncio.gather(*(apply(n) for n in names))
    applies = time.monotonic() - progress.t0
    latency = (await apiserver_counters(kube)).minus(latency_before).mean_latency_ms()
    print(f"  floor: applied {size} Deployments and Services in {applies:.1f}s", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(progress.done.wait(), timeout=args.timeout)
    cpu1 = cpu_snapshot(pids)
    for task in watches:
        task.cancel()
    await asyncio.gather(*watches, return_exceptions=True)
    seconds = _round(progress.converged_at)
    print(f"  floor: every pod Ready after {seconds}s", flush=True)
    return {
        "seconds": seconds,
        "applies_seconds": round(applies, 1),
        "apiserver_mean_latency_ms": latency,
        "cpu_seconds": cpu_seconds(cpu0, cpu1),
        "namespace": namespace,
    }


# --- one size ------------------------------------------------------------------------------------


@dataclass
class Result:
    size: int
    namespace: str
    converged: bool
    converge_seconds: float | None
    creates_seconds: float
    children_seconds: float | None
    pods_ready_seconds: float | None
    peak_rss_mb: float
    idle_rss_mb: float
    final_rss_mb: float
    convergence: dict[str, Any]
    steady: dict[str, Any] | None
    cpu_convergence: dict[str, float]
    cpu_seconds: dict[str, float]
    cpu_steady: dict[str, float]
    stages: dict[str, dict[str, float]]
    timeline: list[dict[str, Any]]
    operator_log_errors: list[str]
    operator_exit: int | None
    namespace_delete_seconds: float | None = None
    kwok_nodes: int = 0
    floor: dict[str, Any] | None = None
    floor_first: bool = False  # the floor was measured before glowplug, on the same cluster

    def floor_ratio(self) -> float | None:
        floor = (self.floor or {}).get("seconds")
        if not floor or self.converge_seconds is None:
            return None
        return round(self.converge_seconds / floor, 2)

    def writes_per_ms(self) -> float:
        return self.convergence["operator_writes"] / self.size


def start_operator(
    kubeconfig: Path, namespace: str, port: int, log: Path, workers: int | None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "GLOWPLUG_NAMESPACES": namespace,
        "GLOWPLUG_METRICS_PORT": str(port),
        "GLOWPLUG_HEALTH_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    if workers:
        env["GLOWPLUG_RECONCILE_WORKERS"] = str(workers)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "glowplug_operator"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_operator(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def log_errors(log: Path, limit: int = 20) -> list[str]:
    """The operator's error lines, grouped: each distinct message (names and numbers masked) with
    how often it came, and the exception each traceback ended in."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    seen: Counter[str] = Counter()
    for i, line in enumerate(lines):
        if line.startswith(("Traceback", "  ", "The above exception", "During handling")):
            continue
        is_exception = i > 0 and lines[i - 1].startswith("    ") and re.match(r"^[\w.]+", line)
        if is_exception or re.search(r"(?i)\b(error|critical|failed|exception)\b", line):
            seen[re.sub(r"\b\d+(\.\d+)?\b", "N", line)[:300]] += 1
    return [f"{count}x {line}" for line, count in seen.most_common(limit)]


def summarize(delta: Counters, size: int, seconds: float) -> dict[str, Any]:
    return {
        "seconds": round(seconds, 1),
        "operator_writes": delta.operator_writes,
        "operator_writes_by_kind": dict(sorted(delta.operator.items())),
        "operator_writes_per_ms": round(delta.operator_writes / size, 2),
        "reconciles": delta.reconciles,
        "reconciles_per_ms": round(delta.reconciles / size, 2),
        "reconcile_errors": delta.reconcile_errors,
        "apiserver_operator_writes": delta.apiserver_operator_writes,
        "apiserver_operator_writes_per_ms": round(delta.apiserver_operator_writes / size, 2),
        "apiserver_all_writes": delta.apiserver_writes,
        "apiserver_mean_latency_ms": delta.mean_latency_ms(),
        "apiserver_writes_by_verb_resource": dict(
            sorted(delta.apiserver.items(), key=lambda kv: -kv[1])
        ),
    }


def cpu_share(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """Percent of one core each process used over the window (200% = both cores of the machine)."""
    return {k: round(100 * used / max(seconds, 1e-6), 1) for k, used in _used(before, after)}


def cpu_seconds(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each process used between two snapshots."""
    return {k: round(used, 1) for k, used in _used(before, after)}


def _used(before: dict[str, float], after: dict[str, float]) -> list[tuple[str, float]]:
    return [(k, after[k] - before.get(k, 0)) for k in after]


async def run_size(kube: Kube, kubeconfig: Path, size: int, args: argparse.Namespace) -> Result:
    namespace = f"bench-{size}-{uuid.uuid4().hex[:6]}"
    await create_namespace(kube, namespace)
    port = free_port()
    watches_before = await namespaced_watches(kube)
    log = RESULTS / f"operator-{size}.log"
    proc = start_operator(kubeconfig, namespace, port, log, args.workers)
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    pids = {"operator": proc.pid, **cluster_pids(kubeconfig), "benchmark": os.getpid()}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as plain:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"the operator exited ({proc.returncode}); see {log}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with plain.get(metrics_url) as response:
                    if response.status == 200:
                        break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"the operator's metrics never came up; see {log}")
    await wait_for_watches(kube, watches_before, proc, log)
    idle_rss = proc_memory(proc.pid)[0]
    print(f"  operator pid {proc.pid} watching {namespace}, metrics on :{port}", flush=True)

    names = [f"ms-{i:04d}" for i in range(size)]
    progress = Progress(set(names))
    base = f"/namespaces/{namespace}"
    managed = {"labelSelector": "app.kubernetes.io/managed-by=glowplug"}
    watches = [
        asyncio.create_task(
            kube.watch(f"{GROUP_PATH}{base}/modelservers", {}, progress.on_modelserver)
        ),
        asyncio.create_task(
            kube.watch(f"/apis/apps/v1{base}/deployments", managed, progress.on_deployment)
        ),
        asyncio.create_task(kube.watch(f"/api/v1{base}/services", managed, progress.on_service)),
    ]
    timeline: list[dict[str, Any]] = []
    peak = [0.0]

    async def sample() -> None:
        while True:
            rss, hwm = proc_memory(proc.pid)
            peak[0] = max(peak[0], hwm)
            timeline.append(
                {
                    "t": round(time.monotonic() - progress.t0, 2),
                    "rss_mb": round(rss, 1),
                    **progress.counts(),
                }
            )
            await asyncio.sleep(args.sample_interval)

    before = await snapshot(kube, metrics_url)
    cpu0 = cpu_snapshot(pids)
    progress.t0 = time.monotonic()
    sampler = asyncio.create_task(sample())
    gate = asyncio.Semaphore(args.concurrency)

    async def create(name: str) -> None:
        async with gate:
            await kube.request(
                "POST", f"{GROUP_PATH}{base}/modelservers", json=modelserver(name, args.gpus)
            )

    await asyncio.gather(*(create(n) for n in names))
    creates_seconds = time.monotonic() - progress.t0
    print(f"  created {size} ModelServers in {creates_seconds:.1f}s", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(progress.done.wait(), timeout=args.timeout)
    converged = progress.converged_at is not None
    window = progress.converged_at if converged else time.monotonic() - progress.t0
    at_convergence = await snapshot(kube, metrics_url)
    cpu1 = cpu_snapshot(pids)
    print(
        f"  {'converged' if converged else 'NOT converged'} after {window:.1f}s:",
        progress.counts(),
        flush=True,
    )

    steady = None
    cpu2 = cpu1
    settled, cpu1b = at_convergence, cpu1
    if converged and args.steady_seconds > 0:
        # The operator posts its Ready Events just after the status write the watch saw: wait
        # until its counters stop moving (3 s without a write) before the steady window starts.
        start, quiet_since = time.monotonic(), time.monotonic()
        while time.monotonic() - quiet_since < 3 and time.monotonic() - start < 60:
            await asyncio.sleep(1)
            now = await snapshot(kube, metrics_url)
            if now.operator_writes != settled.operator_writes:
                quiet_since = time.monotonic()
            settled = now
        settle_seconds = round(time.monotonic() - start, 1)
        cpu1b = cpu_snapshot(pids)
        await asyncio.sleep(args.steady_seconds)
        after = await snapshot(kube, metrics_url)
        cpu2 = cpu_snapshot(pids)
        steady = summarize(after.minus(settled), size, args.steady_seconds)
        steady["settle_seconds"] = settle_seconds
        steady["settle_writes"] = settled.minus(at_convergence).operator.copy()
        still = progress.counts()
        steady["still_ready"] = still["ready"]
        print(
            f"  steady {args.steady_seconds:.0f}s: {steady['operator_writes']:.0f} writes,",
            still,
            flush=True,
        )
    final_rss, hwm = proc_memory(proc.pid) if proc.poll() is None else (0.0, 0.0)
    peak[0] = max(peak[0], hwm)
    sampler.cancel()
    for task in watches:
        task.cancel()
    await asyncio.gather(sampler, *watches, return_exceptions=True)
    exit_code = stop_operator(proc)

    result = Result(
        size=size,
        namespace=namespace,
        converged=converged,
        converge_seconds=round(progress.converged_at, 1) if converged else None,
        creates_seconds=round(creates_seconds, 1),
        children_seconds=_max_or_none(progress.all_at("deployment"), progress.all_at("service")),
        pods_ready_seconds=_round(progress.all_at("pods_ready")),
        peak_rss_mb=round(peak[0], 1),
        idle_rss_mb=round(idle_rss, 1),
        final_rss_mb=round(final_rss, 1),
        # writes until the operator settled: its last Ready Events land just after convergence
        convergence=summarize(settled.minus(before), size, window),
        steady=steady,
        cpu_convergence=cpu_share(cpu0, cpu1, window),
        cpu_seconds=cpu_seconds(cpu0, cpu1),
        cpu_steady=cpu_share(cpu1b, cpu2, args.steady_seconds) if steady else {},
        stages=progress.stages(),
        timeline=timeline,
        operator_log_errors=log_errors(log),
        operator_exit=exit_code,
    )
    if not args.keep and args.kubeconfig is not None:  # an own cluster goes away instead
        result.namespace_delete_seconds = _round(
            await delete_namespace(kube, namespace, args.delete_timeout)
        )
        print(f"  namespace deleted in {result.namespace_delete_seconds}s", flush=True)
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _max_or_none(*values: float | None) -> float | None:
    return (
        None
        if any(v is None for v in values)
        else round(max(v for v in values if v is not None), 1)
    )


# --- report --------------------------------------------------------------------------------------


def _fmt(value: Any, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def table(results: list[Result], steady_seconds: float) -> str:
    head = (
        "| N | converged (s) | children (s) | pods Ready (s) | creates (s) | peak RSS (MB) "
        "| writes/MS conv. (operator) | writes/MS conv. (apiserver) | reconciles/MS "
        f"| writes in {steady_seconds:.0f}s steady (operator) | same (apiserver) "
        "| reconcile errors | operator CPU % conv. | floor (s) | glowplug / floor |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        c, s = r.convergence, r.steady or {}
        converged = _fmt(r.converge_seconds) if r.converged else f"NO ({c['seconds']} s)"
        rows.append(
            f"| {r.size} | {converged} "
            f"| {_fmt(r.children_seconds)} | {_fmt(r.pods_ready_seconds)} | {r.creates_seconds} "
            f"| {r.peak_rss_mb} | {c['operator_writes_per_ms']} "
            f"| {c['apiserver_operator_writes_per_ms']} "
            f"| {c['reconciles_per_ms']} | {_fmt(s.get('operator_writes'))} "
            f"| {_fmt(s.get('apiserver_operator_writes'))} "
            f"| {c['reconcile_errors'] + s.get('reconcile_errors', 0):.0f} "
            f"| {r.cpu_convergence.get('operator')} "
            f"| {_fmt((r.floor or {}).get('seconds'))} | {_fmt(r.floor_ratio(), 'x')} |"
        )
    return head + "\n".join(rows) + "\n"


def median_table(results: list[Result]) -> str:
    """Per size measured more than once: the median of each run's glowplug / floor."""
    rows = []
    for size in sorted({r.size for r in results}):
        ratios = sorted(x for r in results if r.size == size and (x := r.floor_ratio()))
        if len(ratios) > 1:
            median = statistics.median(ratios)
            listed = ", ".join(f"{x}x" for x in ratios)
            rows.append(f"| {size} | {len(ratios)} | {listed} | **{median:.2f}x** |")
    if not rows:
        return ""
    head = "| N | runs | glowplug / floor, each run | median |\n|---:|---:|---|---:|\n"
    return "\n## Repeated runs\n\n" + head + "\n".join(rows) + "\n"


def stage_table(results: list[Result]) -> str:
    stages = ("deployment", "service", "pods_ready", "ready")
    head = "| N | " + " | ".join(f"{s} p50 / p90 / max" for s in stages) + " |\n"
    head += "|---:|" + "---:|" * len(stages) + "\n"
    rows = []
    for r in results:
        cells = []
        for stage in stages:
            st = r.stages.get(stage)
            cells.append(f"{st['p50']} / {st['p90']} / {st['max']}" if st else "-")
        rows.append(f"| {r.size} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def details_table(results: list[Result]) -> str:
    head = (
        "| N | idle RSS (MB) | peak RSS (MB) | RSS at end (MB) | settle (s) | steady reconciles "
        "| steady writes, all components (apiserver) | namespace delete (s) |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        s = r.steady or {}
        rows.append(
            f"| {r.size} | {r.idle_rss_mb} | {r.peak_rss_mb} | {r.final_rss_mb} "
            f"| {_fmt(s.get('settle_seconds'))} | {_fmt(s.get('reconciles'))} "
            f"| {_fmt(s.get('apiserver_all_writes'))} | {_fmt(r.namespace_delete_seconds)} |"
        )
    return head + "\n".join(rows) + "\n"


def services_table(results: list[Result]) -> str:
    """The pace of Service creation, glowplug's and the floor's: every Service's ClusterIP comes
    from the API server's allocator, one at a time (see bench/README.md)."""
    head = (
        "| N | run | Services/s | APPLY services mean (ms) | APPLY deployments mean (ms) |\n"
        "|---:|---|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        runs = [("glowplug", r.children_seconds, r.convergence["apiserver_mean_latency_ms"])]
        if r.floor and r.floor.get("seconds"):
            runs.append(
                ("floor", r.floor["applies_seconds"], r.floor.get("apiserver_mean_latency_ms", {}))
            )
        for name, seconds, latency in runs:
            pace = round(r.size / seconds, 1) if seconds else None
            rows.append(
                f"| {r.size} | {name} | {_fmt(pace)} | {_fmt(latency.get('APPLY services'))} "
                f"| {_fmt(latency.get('APPLY deployments'))} |"
            )
    return head + "\n".join(rows) + "\n"


def cpu_table(results: list[Result]) -> str:
    names = sorted({k for r in results for k in r.cpu_convergence})
    head = "| N | " + " | ".join(names) + " |\n|---:|" + "---:|" * len(names) + "\n"
    return (
        head
        + "\n".join(
            f"| {r.size} | " + " | ".join(_fmt(r.cpu_convergence.get(n)) for n in names) + " |"
            for r in results
        )
        + "\n"
    )


def cpu_seconds_table(results: list[Result]) -> str:
    """The CPU each run cost, process by process: on a machine whose cores are all busy, a run
    takes as long as its CPU work, so what glowplug costs beyond the floor is its extra CPU."""
    runs = [(r, (r.floor or {}).get("cpu_seconds")) for r in results]
    rows = [(r, floor) for r, floor in runs if floor]
    if not rows:
        return "No floor was measured.\n"
    names = sorted({k for r, floor in rows for k in (*r.cpu_seconds, *floor)})
    head = "| N | run | " + " | ".join(names) + " |\n|---:|---|" + "---:|" * len(names) + "\n"
    lines = []
    for r, floor in rows:
        for run, values in (("glowplug (s)", r.cpu_seconds), ("floor (s)", floor)):
            lines.append(f"| {r.size} | {run} | " + " | ".join(_fmt(values.get(n)) for n in names))
        extra = [1000 * (r.cpu_seconds.get(n, 0) - floor.get(n, 0)) / r.size for n in names]
        lines.append(
            f"| {r.size} | glowplug - floor, per ModelServer (ms) | "
            + " | ".join(_fmt(round(x, 1)) for x in extra)
        )
    return head + "\n".join(line + " |" for line in lines) + "\n"


def writes_table(results: list[Result]) -> str:
    kinds = sorted({k for r in results for k in r.convergence["operator_writes_by_kind"]})
    head = "| N | " + " | ".join(kinds) + " |\n|---:|" + "---:|" * len(kinds) + "\n"
    return (
        head
        + "\n".join(
            f"| {r.size} | "
            + " | ".join(f"{r.convergence['operator_writes_by_kind'].get(k, 0):.0f}" for k in kinds)
            + " |"
            for r in results
        )
        + "\n"
    )


def write_report(
    results: list[Result], meta: dict[str, Any], steady_seconds: float, name: str
) -> str:
    text = (
        "# Operator scale benchmark\n\n"
        f"{meta['date']} · commit {meta['commit']} · {meta['cpus']} CPUs · load before "
        f"{meta['loadavg']} · GPUs per ModelServer {meta['gpus']} · reconcile workers "
        f"{meta['workers'] or 'default'} · kwok GPU nodes "
        f"{', '.join(str(r.kwok_nodes) for r in results)}\n\n"
        + table(results, steady_seconds)
        + median_table(results)
        + "\nTimes are seconds from the first create. *children*: every ModelServer has its "
        "Deployment and Service; *pods Ready*: every Deployment reports a Ready replica; "
        "*converged*: children plus `Ready=True` on every ModelServer. Writes per ModelServer come "
        "from the operator's `glowplug_api_writes_total` and, as a cross-check, from the API "
        "server's `apiserver_request_total` (APPLY/PATCH/DELETE of deployments, services, "
        "persistentvolumeclaims, poddisruptionbudgets and modelservers/status; Events excluded, "
        "other components post them too). *floor*: the same Deployments and Services "
        "(glowplug's builders, the same spec) applied by the benchmark itself, without the "
        "operator, in another namespace of the same cluster "
        f"{'before' if meta.get('floor_first') else 'after'} the operator's run: seconds "
        "until every one has a Ready pod; *glowplug / floor* is converged / floor.\n\n"
        "## When the ModelServers reached each stage (seconds after the first create)\n\n"
        + stage_table(results)
        + "\n## Memory and steady state\n\n"
        + details_table(results)
        + "\n## The pace of Service creation (ClusterIP allocation)\n\n"
        + services_table(results)
        + "\n## Operator writes during convergence, by kind\n\n"
        + writes_table(results)
        + "\n## CPU during convergence (% of one core; the machine has "
        f"{meta['cpus']})\n\n"
        + cpu_table(results)
        + "\n## CPU seconds until converged, glowplug and the floor\n\n"
        "From the first create (the floor: the first apply) until converged. *(machine busy)* is "
        "every process on the machine, the benchmark's own included.\n\n"
        + cpu_seconds_table(results)
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(
        json_dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=1)
    )
    return text


# --- main ----------------------------------------------------------------------------------------


def cluster(action: str, cluster_dir: Path) -> None:
    # kwok nodes only: the real node's bridge belongs to the main cluster.
    env = {**os.environ, "GLOWPLUG_CLUSTER_DIR": str(cluster_dir), "GLOWPLUG_REAL_NODE": "0"}
    subprocess.run(
        [str(ROOT / "hack" / "cluster.sh"), action], env=env, check=True, stdout=subprocess.DEVNULL
    )


async def bench_size(args: argparse.Namespace, kubeconfig: Path, size: int) -> Result:
    """Prepare the cluster (CRD, nodes) and measure one size."""
    kube = Kube(kubeconfig)
    try:
        await install_crd(kube)
        # GPUs for the floor's pods too: they run beside glowplug's on the same nodes.
        runs = 1 if args.no_floor else 2
        nodes = await ensure_gpu_nodes(kube, runs * size * args.gpus)
        print(f"N={size}: {nodes} kwok GPU nodes", flush=True)
        floor: dict[str, Any] | None = None
        if not args.no_floor and args.floor_first:
            floor = await _floor_or_error(kube, kubeconfig, size, args)
        result = await run_size(kube, kubeconfig, size, args)
        result.kwok_nodes = nodes
        result.floor_first = bool(floor)
        if not args.no_floor:
            result.floor = floor or await _floor_or_error(kube, kubeconfig, size, args)
            print(f"  glowplug / floor: {result.floor_ratio()}x", flush=True)
        return result
    finally:
        await kube.close()


async def _floor_or_error(
    kube: Kube, kubeconfig: Path, size: int, args: argparse.Namespace
) -> dict[str, Any]:
    try:
        return await run_floor(kube, kubeconfig, size, args)
    except Exception as error:  # keep the operator's figures; say why there is no floor
        print(f"  floor FAILED: {error}", file=sys.stderr, flush=True)
        return {"seconds": None, "error": str(error)[:300]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="100,500,1000", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--steady-seconds", type=float, default=60)
    parser.add_argument(
        "--kubeconfig", type=Path, help="reuse this cluster instead of starting one"
    )
    parser.add_argument("--cluster-dir", type=Path, default=Path("/tmp/glowplug-bench-cluster"))
    parser.add_argument("--keep", action="store_true", help="keep the namespaces and the cluster")
    parser.add_argument(
        "--gpus", type=int, default=1, help="GPUs per ModelServer (0: no kwok nodes added)"
    )
    parser.add_argument("--workers", type=int, help="GLOWPLUG_RECONCILE_WORKERS for the operator")
    parser.add_argument("--concurrency", type=int, default=64, help="parallel creates")
    parser.add_argument("--timeout", type=float, default=600, help="give up converging after this")
    parser.add_argument("--delete-timeout", type=float, default=600)
    parser.add_argument(
        "--floor-concurrency",
        type=int,
        default=16,
        help="ModelServers' children applied at once for the floor (the operator's default "
        "reconcile workers: the same parallelism glowplug has)",
    )
    parser.add_argument(
        "--floor-first",
        action="store_true",
        help="measure the floor before glowplug on each cluster (by default it comes after)",
    )
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="skip applying the same Deployments and Services without the operator",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each size this many times (a fresh cluster each time without --kubeconfig) "
        "and report the median ratio: one run's floor moves by 10-20%%",
    )
    parser.add_argument("--sample-interval", type=float, default=0.5)
    parser.add_argument(
        "--output", default="operator_scale", help="name of the .md/.json in bench/results/"
    )
    args = parser.parse_args(argv)

    own = args.kubeconfig is None
    kubeconfig = (args.cluster_dir / "kubeconfig") if own else args.kubeconfig.resolve()
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "cpus": os.cpu_count(),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "gpus": args.gpus,
        "workers": args.workers,
        "steady_seconds": args.steady_seconds,
        "floor_first": args.floor_first,
        "kubeconfig": str(kubeconfig),
    }
    results: list[Result] = []
    try:
        for size in (n for n in args.sizes for _ in range(args.repeat)):
            if own:  # a fresh cluster per size: quicker than deleting 1000 ModelServers, and clean
                if (args.cluster_dir / "pids").exists():
                    cluster("down", args.cluster_dir)
                print(f"starting a fresh cluster in {args.cluster_dir}", flush=True)
                cluster("up", args.cluster_dir)
            try:
                results.append(asyncio.run(bench_size(args, kubeconfig, size)))
            except Exception as error:  # report the sizes that worked, say which did not
                print(f"N={size} FAILED: {error}", file=sys.stderr, flush=True)
    finally:
        if own and not args.keep:
            cluster("down", args.cluster_dir)
    if not results:
        return 1
    print()
    print(write_report(results, meta, args.steady_seconds, args.output))
    for r in results:
        if r.operator_log_errors:
            print(f"N={r.size}: operator log errors:\n  " + "\n  ".join(r.operator_log_errors))
    print(f"written to {RESULTS / args.output}.md and .json")
    return (
        0
        if len(results) == len(args.sizes) * args.repeat and all(r.converged for r in results)
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
