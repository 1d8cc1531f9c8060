"""The reconciler's write discipline, with the API replaced by a recorder: what it writes for a
spec the CRD let through but the operator cannot use, and that a converged ModelServer costs no
write at all. (The same paths run against a real API server in tests/e2e.)"""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import UTC, datetime
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

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return None  # nothing outside the store

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


def _reconciler(body: dict[str, Any]) -> tuple[Reconciler, RecordingKube, Store]:
    cache = Store()
    cache.put_modelserver(body)
    kube = RecordingKube()
    return Reconciler(Settings(), kube, cache, Metrics()), kube, cache  # type: ignore[arg-type]


def _reconcile(reconciler: Reconciler) -> float | None:
    return asyncio.run(reconciler.reconcile(("ml", "tiny-llama"), now=NOW))


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
    reconciler, kube, cache = _reconciler(body)
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
    reconciler, kube, cache = _reconciler(body)
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
    class that does not exist is said in Ready, with one Warning, before any pod exists."""
    body = _body(cache={"kind": "PersistentVolumeClaim", "size": "1Gi", "storageClassName": "ssd"})
    reconciler, kube, store = _reconciler(body)
    store.storage_classes = {}  # listed: there are none
    _reconcile(reconciler)  # applies the claim; the store holds it, Pending (no status yet)
    body["status"] = kube.statuses[-1]
    _reconcile(reconciler)
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
    # The generation's first status goes out beside the applies; the refusal's status follows it,
    # and looking again writes neither status nor Event (a blocked ModelServer costs no writes).
    reconciler, kube = _refusing(
        'Service "tiny-llama" is invalid: metadata.labels: Invalid value: "x y": a valid label'
    )
    _reconcile(reconciler)
    reasons = [
        next(c["reason"] for c in s["conditions"] if c["type"] == "Ready") for s in kube.statuses
    ]
    assert reasons[-1] == "InvalidSpec" and len(reasons) == 2
    statuses, events = len(kube.statuses), len(kube.events)
    assert _reconcile(reconciler) == Settings().resync_seconds
    assert (len(kube.statuses), len(kube.events)) == (statuses, events)
