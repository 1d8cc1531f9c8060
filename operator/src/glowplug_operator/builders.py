"""Pure builders: typed spec + settings + effective flags in, plain Kubernetes manifests out.

No API calls, no globals, no clock: the same inputs always give the same manifests, so the
reconciler can compare them with what is live and write only when they differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from glowplug_operator.cache import cache_volume
from glowplug_operator.commands import (
    PVC_MOUNT_ROOT,
    builtin_command,
    container_env,
    downloads_in_worker,
    engine_command,
    prefetch_args,
    worker_image,
)
from glowplug_operator.contract import (
    API_VERSION,
    CACHE_OWNER_CONTAINER,
    FLAGS_ANNOTATION,
    FLAGS_HASH_LABEL,
    INIT_CONTAINER,
    KIND,
    MANAGED_BY,
    MODELSERVER_LABEL,
    TERMINATION_PATH,
    TRIAL_ANNOTATION,
    WORKER_CONTAINER,
    child_name,
)
from glowplug_operator.engines import engine
from glowplug_operator.settings import Settings
from glowplug_operator.spec import ModelServerSpec, Optimization

UID = 1000
PRE_STOP_SECONDS = 10  # before SIGTERM, while endpoints stop routing to the pod
TERMINATION_GRACE_SECONDS = 60  # preStop, then the worker's drain (--drain-seconds 25), then exit
Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The ModelServer the children belong to."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> Manifest:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def selector_labels(owner: Owner) -> dict[str, str]:
    return {MODELSERVER_LABEL: owner.name, **MANAGED_BY}


def common_labels(owner: Owner) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modelserver",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "glowplug",
        **selector_labels(owner),
    }


def label_selector(owner: Owner) -> str:
    """The pods' selector as a string, for status.selector (the scale subresource, HPAs)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(owner).items()))


def _metadata(owner: Owner, name: str, *, owned: bool = True) -> Manifest:
    meta: Manifest = {"name": name, "namespace": owner.namespace, "labels": common_labels(owner)}
    if owned:
        meta["ownerReferences"] = [owner.reference()]
    return meta


def budget_seconds(spec: ModelServerSpec, settings: Settings) -> int:
    return spec.startup.budget_seconds or settings.default_budget_seconds


# The builtin worker holds a not-ready /ready answer this long, and answers the moment it is ready
# (`/ready?wait=`): within a 1 s probe period the kubelet sees the start end at once instead of at
# its next tick (on average half a second late).
READY_HOLD_SECONDS = 0.9


def startup_probe_timing(budget: int) -> tuple[int, int]:
    """(periodSeconds, failureThreshold) so that the startup probe gives up after about `budget`.

    Every second: the kubelet sees a ready worker at most a second late (a 5 s period cost 2.5 s
    of every start on average), and /ready is a cheap local request. The builtin worker's held
    answer (READY_HOLD_SECONDS) removes the rest of that wait."""
    period = 1
    return period, max(1, math.ceil(budget / period))


def _container_security() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _credentials(spec: ModelServerSpec) -> list[Manifest]:
    """The Secret's keys become the prefetcher's env vars (HF_TOKEN, AWS_*): referenced, never
    copied; the worker reads the weights from the volume and never sees them."""
    ref = spec.model.credentials_secret_ref
    return [{"secretRef": {"name": ref.name}}] if ref else []


def _mounts(spec: ModelServerSpec, settings: Settings) -> list[Manifest]:
    mounts: list[Manifest] = [
        {"name": "cache", "mountPath": settings.cache_mount_path},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if spec.model.scheme == "pvc":
        mounts.append(
            {
                "name": "source",
                "mountPath": f"{PVC_MOUNT_ROOT}/{spec.model.pvc_claim}",
                "readOnly": True,
            }
        )
    return mounts


def _cache_owner(spec: ModelServerSpec, settings: Settings, image: str) -> list[Manifest]:
    """For a HostPath cache only: the kubelet creates the node directory root-owned, and
    fsGroup does not apply to hostPath, so the non-root prefetcher could not write there. This
    container hands the directory (not what is in it) to the pods' user: root with CHOWN and
    nothing else."""
    if spec.cache.kind != "HostPath":
        return []
    return [
        {
            "name": CACHE_OWNER_CONTAINER,
            "image": image,
            "command": ["chown", f"{UID}:{UID}", settings.cache_mount_path],
            "volumeMounts": [{"name": "cache", "mountPath": settings.cache_mount_path}],
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": False,
                "runAsUser": 0,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}},
        }
    ]


def _prefetch_container(
    spec: ModelServerSpec,
    settings: Settings,
    image: str,
    flags: Sequence[Optimization],
    namespace: str,
) -> Manifest:
    args = ["prefetch", *prefetch_args(spec, settings, namespace)]
    container: Manifest = {
        "name": INIT_CONTAINER,
        "image": image,
        "command": ["glowplug-worker"],
        "args": args,
        "env": container_env(flags, settings, worker=False),
        "volumeMounts": _mounts(spec, settings),
        "securityContext": _container_security(),
        "terminationMessagePath": TERMINATION_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": _resources(spec, gpus=False),
    }
    if spec.model.credentials_secret_ref:
        container["envFrom"] = _credentials(spec)
    if spec.image.pull_policy:
        container["imagePullPolicy"] = spec.image.pull_policy
    return container


def _resources(spec: ModelServerSpec, *, gpus: bool) -> Manifest:
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    if spec.resources.memory:
        limits["memory"] = requests["memory"] = spec.resources.memory
    if spec.resources.cpu:
        requests["cpu"] = spec.resources.cpu
    if gpus and spec.resources.gpus:
        limits["nvidia.com/gpu"] = spec.resources.gpus
    out: Manifest = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _http_probe(path: str, period: int, failures: int, timeout: int = 2) -> Manifest:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _worker_container(
    owner: Owner, spec: ModelServerSpec, settings: Settings, flags: Sequence[Optimization]
) -> Manifest:
    """The container that serves: glowplug's worker, or the engine's own server."""
    period, failures = startup_probe_timing(budget_seconds(spec, settings))
    if spec.engine.kind == "builtin":
        command, args, env = builtin_command(owner.name, owner.namespace, spec, settings, flags)
        ready, live = "/ready", "/health"
        startup_path = f"{ready}?wait={READY_HOLD_SECONDS * period:g}"
    else:
        command, args, env = engine_command(owner.name, owner.namespace, spec, settings, flags)
        kind = engine(spec.engine.kind)
        ready = spec.engine.readiness_path or kind.readiness_path
        live = spec.engine.liveness_path or kind.liveness_path
        startup_path = ready
    container: Manifest = {
        "name": WORKER_CONTAINER,
        "image": worker_image(spec, settings),
        "command": command,
        "args": args,
        "env": env,
        "ports": [{"name": "http", "containerPort": spec.serving.port, "protocol": "TCP"}],
        "volumeMounts": [*_mounts(spec, settings), {"name": "dshm", "mountPath": "/dev/shm"}],
        "resources": _resources(spec, gpus=True),
        "startupProbe": _http_probe(startup_path, period, failures),
        # After the startup probe, the first readiness probe decides when the pod is Ready.
        "readinessProbe": _http_probe(ready, 1, 3),
        "livenessProbe": _http_probe(live, 10, 3, timeout=5),
        "securityContext": _container_security(),
        "terminationMessagePath": TERMINATION_PATH,
        # An engine writes no report: its last log lines are the evidence (rollback/signatures).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # The kubelet waits before SIGTERM: endpoints controllers and kube-proxies take a few
        # seconds to stop routing to a terminating pod; the server keeps serving meanwhile.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
    }
    if spec.image.pull_policy:
        container["imagePullPolicy"] = spec.image.pull_policy
    return container


def _pod_spec(
    owner: Owner, spec: ModelServerSpec, settings: Settings, flags: Sequence[Optimization]
) -> Manifest:
    image = settings.prefetch_image
    volumes = [
        cache_volume(owner.name, spec),
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
    ]
    if spec.model.scheme == "pvc":
        volumes.append(
            {
                "name": "source",
                "persistentVolumeClaim": {"claimName": spec.model.pvc_claim, "readOnly": True},
            }
        )
    init = _cache_owner(spec, settings, image)
    if not downloads_in_worker(spec, flags):  # else the worker downloads as it starts
        init.append(_prefetch_container(spec, settings, image, flags, owner.namespace))
    pod: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            # Chown a volume only when its root is not ours yet, not every file on every start.
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        **({"initContainers": init} if init else {}),
        "containers": [_worker_container(owner, spec, settings, flags)],
        "volumes": volumes,
    }
    placement = spec.placement
    tolerations = list(placement.tolerations)
    if spec.resources.gpus and not any(t.get("key") == "nvidia.com/gpu" for t in tolerations):
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod["tolerations"] = tolerations
    if placement.node_selector:
        pod["nodeSelector"] = dict(placement.node_selector)
    if placement.affinity:
        pod["affinity"] = placement.affinity
    if placement.runtime_class_name:
        pod["runtimeClassName"] = placement.runtime_class_name
    if placement.priority_class_name:
        pod["priorityClassName"] = placement.priority_class_name
    if spec.image.pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in spec.image.pull_secrets]
    return pod


def active_flags(spec: ModelServerSpec, effective: Sequence[str]) -> list[Optimization]:
    """The spec's flag definitions for the effective names, in spec order."""
    wanted = set(effective)
    return [f for f in spec.startup.optimizations if f.name in wanted]


def build_deployment(
    owner: Owner,
    spec: ModelServerSpec,
    settings: Settings,
    effective: Sequence[str],
    flags_hash: str,
    trial: str | None = None,
) -> Manifest:
    """The Deployment running the effective flags. The pod template carries them in an annotation
    and their hash in a label; `trial` (the rollback logic's restart nonce) forces a new rollout
    of the same flags."""
    flags = active_flags(spec, effective)
    labels = {**common_labels(owner), FLAGS_HASH_LABEL: flags_hash}
    annotations = {FLAGS_ANNOTATION: ",".join(f.name for f in flags)}
    if trial:
        annotations[TRIAL_ANNOTATION] = trial
    budget = budget_seconds(spec, settings)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, child_name("Deployment", owner.name)),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(owner)},
            "revisionHistoryLimit": 5,
            # spec.rollout; its default (1, 0) keeps serving through a change but needs room
            # for one more pod.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": spec.rollout.max_surge,
                    "maxUnavailable": spec.rollout.max_unavailable,
                },
            },
            "progressDeadlineSeconds": budget + 300,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": annotations,
                },
                "spec": _pod_spec(owner, spec, settings, flags),
            },
        },
    }


def build_service(owner: Owner, spec: ModelServerSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, child_name("Service", owner.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner),
            "ports": [
                {"name": "http", "port": spec.serving.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def build_cache_claim(owner: Owner, spec: ModelServerSpec) -> Manifest | None:
    """The shared weight cache's PVC, when the cache asks for a new one. With retainOnDelete it
    has no owner reference, so deleting the ModelServer keeps the downloaded weights."""
    cache = spec.cache
    if cache.kind != "PersistentVolumeClaim" or cache.existing_claim:
        return None
    claim: Manifest = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(
            owner,
            child_name("PersistentVolumeClaim", owner.name),
            owned=not cache.retain_on_delete,
        ),
        "spec": {
            "accessModes": [cache.access_mode],
            "resources": {"requests": {"storage": cache.size}},
        },
    }
    if cache.storage_class_name:
        claim["spec"]["storageClassName"] = cache.storage_class_name
    return claim


def build_disruption_budget(owner: Owner, spec: ModelServerSpec) -> Manifest | None:
    if spec.replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, child_name("PodDisruptionBudget", owner.name)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner)}},
    }


def endpoint(owner: Owner, spec: ModelServerSpec) -> str:
    return f"http://{owner.name}.{owner.namespace}.svc:{spec.serving.port}"
