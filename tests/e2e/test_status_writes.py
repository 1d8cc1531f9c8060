"""Status writes against the real API server (issue 16, item 7): a write computed from an old
body is refused, not written over a newer one; a write to a deleted ModelServer is reported as
gone, and the reconciler forgets the object instead of failing on it forever."""

from __future__ import annotations

import asyncio

import pytest
from glowplug_operator.controller.kube import Gone, Kube, Stale
from glowplug_operator.controller.metrics import Metrics
from glowplug_operator.controller.reconciler import Reconciler
from glowplug_operator.controller.store import Store
from glowplug_operator.settings import Settings

from tests.cluster.kube import Kubectl
from tests.e2e.test_modelserver import _example


def _run(coro):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        kube = Kube("glowplug-test")
        try:
            return await coro(kube)
        finally:
            await kube.close()

    return asyncio.run(go())


@pytest.fixture(autouse=True)
def _kubeconfig(kubectl: Kubectl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", kubectl.kubeconfig)  # for the gateway's kubernetes client


def test_a_status_computed_from_an_old_body_is_not_written(
    kubectl: Kubectl, namespace: str, crd: None
) -> None:
    k = kubectl.in_namespace(namespace)
    k.apply(_example("racy"))
    old = k.get("ms", "racy")["metadata"]["resourceVersion"]
    k.run("label", "ms", "racy", "edited=yes")  # someone changes the object meanwhile

    async def write(kube: Kube) -> None:
        await kube.replace_status(namespace, "racy", {"replicas": 7}, old)

    with pytest.raises(Stale):
        _run(write)
    assert (k.get("ms", "racy").get("status") or {}).get("replicas") != 7

    fresh = k.get("ms", "racy")["metadata"]["resourceVersion"]

    async def write_fresh(kube: Kube) -> str | None:
        return await kube.replace_status(namespace, "racy", {"replicas": 7}, fresh)

    assert _run(write_fresh) not in (None, fresh)
    assert k.get("ms", "racy")["status"]["replicas"] == 7


def test_a_deleted_modelserver_is_forgotten_not_retried(
    kubectl: Kubectl, namespace: str, crd: None
) -> None:
    k = kubectl.in_namespace(namespace)
    k.apply(_example("ghost", replicas=0))
    body = k.get("ms", "ghost")
    k.run("delete", "ms", "ghost", "--wait=true")

    async def write(kube: Kube) -> None:
        await kube.replace_status(namespace, "ghost", {}, body["metadata"]["resourceVersion"])

    with pytest.raises(Gone):
        _run(write)

    # The store still holds it (its DELETED event was lost): one reconcile forgets it.
    store = Store()
    store.put_modelserver(body)

    async def reconcile(kube: Kube) -> float | None:
        return await Reconciler(Settings(), kube, store, Metrics()).reconcile((namespace, "ghost"))

    assert _run(reconcile) is None
    assert (namespace, "ghost") not in store.modelservers
