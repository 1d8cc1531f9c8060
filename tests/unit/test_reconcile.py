"""The reconciler's write discipline, with the API replaced by a recorder: what it writes for a
spec the CRD let through but the operator cannot use, and that a converged ModelServer costs no
write at all. (The same paths run against a real API server in tests/e2e.)"""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from glowplug_operator.controller.kube import ApiError
from glowplug_operator.controller.metrics import Metrics
from glowplug_operator.controller.reconciler import Reconciler
from glowplug_operator.controller.store import Store
from glowplug_operator.settings import Settings

from tests.cluster.kube import ROOT

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class RecordingKube:
    """Stands in for `kube.Kube`: records every write instead of sending it."""

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.deleted: list[tuple[str, str]] = []

    async def apply(
        self, manifest: dict[str, Any], force: bool = True, live_version: str | None = None
    ) -> dict[str, Any]:
        self.applied.append(copy.deepcopy(manifest))
        return copy.deepcopy(manifest)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        self.deleted.append((kind, name))

    async def replace_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> str | None:
        self.statuses.append(copy.deepcopy(status))
        return None

    async def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    @property
    def writes(self) -> int:
        return len(self.applied) + len(self.statuses) + len(self.events) + len(self.deleted)


def _body(**spec: Any) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / "modelserver.yaml").read_text())
    body["metadata"].update(namespace="ml", uid="uid-1", generation=1)
    body["spec"].update(spec)
    return body


# The first status at once, as after a new ModelServer's wait for its pods.
AT_ONCE = Settings(first_status_wait_seconds=0)


def _reconciler(
    body: dict[str, Any], settings: Settings | None = None
) -> tuple[Reconciler, RecordingKube, Store]:
    cache = Store()
    cache.put_modelserver(body)
    kube = RecordingKube()
    reconciler = Reconciler(settings or Settings(), kube, cache, Metrics())  # type: ignore[arg-type]
    return reconciler, kube, cache


def _reconcile(reconciler: Reconciler, now: datetime = NOW) -> float | None:
    return asyncio.run(reconciler.reconcile(("ml", "tiny-llama"), now=now))


def test_a_spec_the_operator_cannot_use_is_reported_not_rolled_out() -> None:
    # A PVC cache with neither size nor claim: the CRD refuses it; an old CRD would not.
    body = _body(cache={"kind": "PersistentVolumeClaim"})
    reconciler, kube, _ = _reconciler(body)
    assert _reconcile(reconciler) is None

    assert kube.applied == []
    ready = next(c for c in kube.statuses[-1]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"].startswith("spec.cache")
    assert [(t, r) for t, r, _ in kube.events] == [("Warning", "InvalidSpec")]

    writes = kube.writes
    _reconcile(reconciler)  # nothing changed: nothing written, no second event
    assert kube.writes == writes


def test_each_decision_is_one_info_line_naming_the_modelserver(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reconciler, kube, _ = _reconciler(_body(cache={"kind": "PersistentVolumeClaim"}))
    with caplog.at_level(logging.INFO, logger="glowplug_operator.controller.reconciler"):
        _reconcile(reconciler)
        _reconcile(reconciler)  # nothing new decided: no second line
    lines = [r for r in caplog.records if r.name == "glowplug_operator.controller.reconciler"]
    assert len(lines) == len(kube.events) == 1
    (line,) = lines
    assert line.levelno == logging.INFO
    assert line.getMessage().startswith("modelserver ml/tiny-llama: InvalidSpec: spec.cache")
    assert (line.namespace, line.modelserver, line.reason) == ("ml", "tiny-llama", "InvalidSpec")


def test_a_converged_modelserver_costs_no_write() -> None:
    body = _body()
    reconciler, kube, cache = _reconciler(body, AT_ONCE)
    _reconcile(reconciler)
    assert {m["kind"] for m in kube.applied} == {"Deployment", "Service"}
    # What the watch would deliver back: the children as applied, the status as written.
    for manifest in kube.applied:
        cache.put_child(manifest["kind"], copy.deepcopy(manifest))
    body["status"] = kube.statuses[-1]

    writes = kube.writes
    _reconcile(reconciler)
    assert kube.writes == writes


def test_a_drifted_child_is_applied_again() -> None:
    body = _body()
    reconciler, kube, cache = _reconciler(body, AT_ONCE)
    _reconcile(reconciler)
    for manifest in kube.applied:
        live = copy.deepcopy(manifest)
        if live["kind"] == "Deployment":
            live["spec"]["replicas"] = 5  # a hand edit
        cache.put_child(live["kind"], live)
    body["status"] = kube.statuses[-1]
    kube.applied.clear()

    _reconcile(reconciler)
    assert [m["kind"] for m in kube.applied] == ["Deployment"]
    assert kube.applied[0]["spec"]["replicas"] == 1


def test_a_host_path_cache_is_refused_unless_the_operator_allows_it() -> None:
    # A node directory is shared by every namespace on the node: off by default.
    body = _body(cache={"kind": "HostPath", "hostPath": "/var/lib/glowplug"})
    reconciler, kube, _ = _reconciler(body)
    assert _reconcile(reconciler) is None
    assert kube.applied == []
    ready = next(c for c in kube.statuses[-1]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"].startswith("spec.cache.hostPath: HostPath caches are off")

    allowed = Settings(host_path_prefixes=("/var/lib/glowplug",))
    permitted = Reconciler(allowed, RecordingKube(), Store(), Metrics())  # type: ignore[arg-type]
    permitted.store.put_modelserver(
        _body(cache={"kind": "HostPath", "hostPath": "/var/lib/glowplug"})
    )
    _reconcile(permitted)
    assert [m["kind"] for m in permitted.kube.applied] == ["Deployment", "Service"]  # type: ignore[attr-defined]


def test_the_cache_claim_and_its_storage_class_reach_the_status() -> None:
    """The reconciler reads its own claim and the StorageClasses from the store: a claim of a
    class that does not exist is said in Ready, with one Warning, before any pod exists (a new
    ModelServer's first status does not wait when it has a problem to report)."""
    body = _body(cache={"kind": "PersistentVolumeClaim", "size": "1Gi", "storageClassName": "ssd"})
    reconciler, kube, store = _reconciler(body)
    store.storage_classes = {}  # listed: there are none
    _reconcile(reconciler)  # applies the claim; the store holds it, Pending (no status yet)
    assert kube.statuses == []  # only "starting" to say: the first status waits
    _reconcile(reconciler)
    assert len(kube.statuses) == 1
    ready = next(c for c in kube.statuses[-1]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ClaimPending")
    assert ready["message"] == "claim tiny-llama-cache is Pending: storage class ssd does not exist"
    assert [r for _, r, _ in kube.events].count("ClaimPending") == 1


class RefusingServiceKube(RecordingKube):
    """The API server refusing the Service with a 422 carrying `message`."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    async def apply(
        self, manifest: dict[str, Any], force: bool = True, live_version: str | None = None
    ) -> dict[str, Any]:
        if manifest["kind"] == "Service":
            raise ApiError(422, self.message)
        return await super().apply(manifest, force, live_version)


def _refusing(message: str) -> tuple[Reconciler, RefusingServiceKube]:
    cache = Store()
    cache.put_modelserver(_body())
    kube = RefusingServiceKube(message)
    return Reconciler(Settings(), kube, cache, Metrics()), kube  # type: ignore[arg-type]


def test_a_422_from_the_api_servers_own_storage_is_retried_not_invalid_spec() -> None:
    # Seen with etcd restarted during reconciliation (tests/e2e/test_chaos.py): the Service's IP
    # allocation fails inside the API server, which says 422 Invalid.
    reconciler, kube = _refusing(
        'Service "tiny-llama" is invalid: spec.clusterIPs: Invalid value: [""]: failed to '
        "allocate IP: rpc error: code = Unavailable desc = error reading from server: EOF"
    )
    with pytest.raises(ApiError):  # the loop retries it with backoff
        _reconcile(reconciler)
    # The generation's first status (written beside the applies) says it is rolling out; nothing
    # calls the spec invalid or stalled.
    reasons = {c["reason"] for s in kube.statuses for c in s["conditions"]}
    assert "InvalidSpec" not in reasons
    assert all(
        c["status"] == "False"
        for s in kube.statuses
        for c in s["conditions"]
        if c["type"] == "Stalled"
    )
    assert kube.events == []


def test_a_422_on_a_field_of_the_spec_is_invalid_spec() -> None:
    reconciler, kube = _refusing(
        'Service "tiny-llama" is invalid: metadata.labels: Invalid value: "x y": a valid label'
    )
    assert _reconcile(reconciler) == Settings().resync_seconds
    ready = next(c for c in kube.statuses[-1]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert [(t, r) for t, r, _ in kube.events] == [("Warning", "InvalidSpec")]


def test_a_refused_generation_ends_blocked_and_stays_so_without_writes() -> None:
    # A new ModelServer's first status is the refusal's (its "starting" status waits and is not
    # written), and looking again writes neither status nor Event (a blocked ModelServer costs
    # no writes).
    reconciler, kube = _refusing(
        'Service "tiny-llama" is invalid: metadata.labels: Invalid value: "x y": a valid label'
    )
    _reconcile(reconciler)
    reasons = [
        next(c["reason"] for c in s["conditions"] if c["type"] == "Ready") for s in kube.statuses
    ]
    assert reasons == ["InvalidSpec"]
    statuses, events = len(kube.statuses), len(kube.events)
    assert _reconcile(reconciler) == Settings().resync_seconds
    assert (len(kube.statuses), len(kube.events)) == (statuses, events)


# --- a new ModelServer's first status waits for its pods ----------------------------------------


def _crd_default_status() -> dict[str, Any]:
    """What the API server shows before the operator's first write: the CRD's status default."""
    crd = yaml.safe_load((ROOT / "crds" / "modelserver.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return copy.deepcopy(schema["properties"]["status"]["default"])


def _ready_pod_of(deployment: dict[str, Any], ready_at: datetime) -> dict[str, Any]:
    """A pod of the applied Deployment's template, scheduled, started and Ready at `ready_at`."""
    template = deployment["spec"]["template"]
    stamp = ready_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    containers = [c["name"] for c in template["spec"]["containers"]]
    inits = [c["name"] for c in template["spec"].get("initContainers") or []]
    done = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": stamp}}
    done["terminated"]["finishedAt"] = stamp
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "tiny-llama-5d8f-abcde",
            "namespace": "ml",
            "uid": "pod-1",
            "creationTimestamp": stamp,
            "labels": dict(template["metadata"]["labels"]),
            "annotations": dict(template["metadata"].get("annotations") or {}),
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.9",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": stamp}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "initContainerStatuses": [
                {"name": n, "ready": True, "restartCount": 0, "state": done} for n in inits
            ],
            "containerStatuses": [
                {
                    "name": n,
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": stamp}},
                }
                for n in containers
            ],
        },
    }


def test_a_quick_start_is_said_in_one_status_write() -> None:
    """Pods Ready within the wait: one status (Ready, the flags Active) and one Ready Event,
    where an immediate first status would have made two writes."""
    body = _body()
    body["status"] = _crd_default_status()
    reconciler, kube, store = _reconciler(body)
    wait = _reconcile(reconciler)
    assert {m["kind"] for m in kube.applied} == {"Deployment", "Service"}
    assert kube.statuses == [] and kube.events == []
    assert wait is not None and 0 < wait <= Settings().first_status_wait_seconds

    deployment = next(m for m in kube.applied if m["kind"] == "Deployment")
    store.put_pod(("ml", "tiny-llama"), _ready_pod_of(deployment, NOW + timedelta(seconds=2)))
    _reconcile(reconciler, NOW + timedelta(seconds=3))
    (status,) = kube.statuses
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], status["observedGeneration"]) == ("True", 1)
    assert {s["state"] for s in status["optimizations"]} == {"Active"}
    assert [(t, r) for t, r, _ in kube.events] == [("Normal", "Ready")]


def test_a_slow_start_gets_its_first_status_when_the_wait_is_over() -> None:
    body = _body()
    body["status"] = _crd_default_status()
    reconciler, kube, _ = _reconciler(body)
    _reconcile(reconciler)
    _reconcile(reconciler, NOW + timedelta(seconds=2))  # a pod event: still only starting
    assert kube.statuses == []
    wait = Settings().first_status_wait_seconds
    _reconcile(reconciler, NOW + timedelta(seconds=wait))
    (status,) = kube.statuses
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], status["observedGeneration"]) == (
        "False",
        "Starting",
        1,
    )
    assert kube.events == []  # Ready Unknown (the CRD's default) to False is no news


def test_a_modelserver_with_a_status_of_the_operator_does_not_wait() -> None:
    """A spec edit (or an operator restart) writes its status at once: kstatus reads the
    generation the status names."""
    body = _body()
    reconciler, kube, cache = _reconciler(body, AT_ONCE)
    _reconcile(reconciler)
    for manifest in kube.applied:
        cache.put_child(manifest["kind"], copy.deepcopy(manifest))
    body["status"] = kube.statuses[-1]
    body["metadata"]["generation"] = 2
    body["spec"]["replicas"] = 2
    waiting = Reconciler(Settings(), kube, cache, Metrics())  # type: ignore[arg-type]
    _reconcile(waiting)
    assert kube.statuses[-1]["observedGeneration"] == 2


# --- names taken by objects that are not the operator's -----------------------------------------


def test_a_name_taken_by_a_users_object_is_a_conflict_found_in_the_store() -> None:
    """The watches see every object of a child kind: a user's Service of the ModelServer's name
    blocks it with no request and no write."""
    body = _body()
    reconciler, kube, store = _reconciler(body, AT_ONCE)
    users = {"metadata": {"name": "tiny-llama", "namespace": "ml", "labels": {"app": "shop"}}}
    store.put_child("Service", users)
    _reconcile(reconciler)
    assert kube.applied == []
    ready = next(c for c in kube.statuses[-1]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NameConflict")
    assert "Service ml/tiny-llama" in ready["message"]


def test_a_child_whose_label_was_removed_is_applied_again() -> None:
    body = _body()
    reconciler, kube, store = _reconciler(body, AT_ONCE)
    stripped = {
        "metadata": {
            "name": "tiny-llama",
            "namespace": "ml",
            "labels": {},
            "ownerReferences": [{"uid": "uid-1", "kind": "ModelServer", "name": "tiny-llama"}],
        }
    }
    store.put_child("Service", stripped)
    _reconcile(reconciler)
    assert {m["kind"] for m in kube.applied} == {"Deployment", "Service"}
    service = next(m for m in kube.applied if m["kind"] == "Service")
    assert service["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "glowplug"
