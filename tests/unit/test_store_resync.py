"""The store against fresh lists (issue 16, item 7): after a watch relist, objects deleted in
the gap are dropped, objects missed are added, and what the watch delivered since the list
began is kept."""

from __future__ import annotations

import time
from typing import Any

from glowplug_operator.contract import MANAGED_BY
from glowplug_operator.controller.store import Store, resync


def _obj(name: str, owner: str | None = None, namespace: str = "ml") -> dict[str, Any]:
    """An object; with `owner`, labelled as the operator labels that ModelServer's children."""
    labels = {"glowplug.dev/modelserver": owner, **MANAGED_BY} if owner else {}
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels}}


def _lists(**kinds: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    base: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("ModelServer", "Deployment", "Service", "Pod")
    }
    base.update(kinds)
    return base


def test_what_was_deleted_in_a_watch_gap_is_dropped_and_its_owner_reconciled() -> None:
    store = Store()
    store.put_modelserver(_obj("a"))
    store.put_modelserver(_obj("gone"))
    store.put_child("Deployment", _obj("a", owner="a"))
    store.put_child("Service", _obj("a", owner="a"))
    store.put_pod(("ml", "a"), _obj("a-1", owner="a"))
    store.put_pod(("ml", "a"), _obj("a-2", owner="a"))
    started = time.monotonic()
    listed = _lists(
        ModelServer=[_obj("a")],
        Deployment=[_obj("a", owner="a")],
        Pod=[_obj("a-2", owner="a")],
    )
    touched = resync(store, listed, started)
    assert set(store.modelservers) == {("ml", "a")}
    assert store.child("Service", "ml", "a") is None
    assert store.child("Deployment", "ml", "a") is not None
    assert set(store.pods[("ml", "a")]) == {"a-2"}
    assert touched == {("ml", "a")}


def test_what_the_watch_delivered_after_the_list_began_is_kept() -> None:
    store = Store()
    store.put_modelserver(_obj("a"))
    started = time.monotonic()
    time.sleep(0.001)
    store.put_modelserver(_obj("new"))  # created after the list's snapshot
    store.put_pod(("ml", "a"), _obj("a-3", owner="a"))
    touched = resync(store, _lists(ModelServer=[_obj("a")]), started)
    assert set(store.modelservers) == {("ml", "a"), ("ml", "new")}
    assert "a-3" in store.pods[("ml", "a")]
    assert touched == set()


def test_what_the_watch_missed_is_added() -> None:
    store = Store()
    store.put_modelserver(_obj("a"))
    started = time.monotonic()
    listed = _lists(
        ModelServer=[_obj("a"), _obj("b")],
        Deployment=[_obj("a", owner="a")],
        Pod=[_obj("a-1", owner="a")],
    )
    touched = resync(store, listed, started)
    assert ("ml", "b") in store.modelservers
    assert store.child("Deployment", "ml", "a") is not None
    assert "a-1" in store.pods[("ml", "a")]
    assert touched == {("ml", "a"), ("ml", "b")}


def _class(name: str, provisioner: str = "csi.example.com") -> dict[str, Any]:
    return {"metadata": {"name": name}, "provisioner": provisioner}


def test_storage_classes_come_from_the_list_but_for_newer_watch_news() -> None:
    store = Store()
    assert store.storage_classes is None, "unknown until listed: an unbound claim is not judged"
    store.put_storage_class(_class("old"))
    store.put_storage_class(_class("removed-in-the-gap"))
    started = time.monotonic()
    time.sleep(0.001)
    store.put_storage_class(_class("created-since"))
    store.put_storage_class(_class("changed-since", "new.example.com"))
    store.drop_storage_class(_class("deleted-since"))
    listed = _lists(
        StorageClass=[
            _class("old"),
            _class("changed-since", "stale.example.com"),
            _class("deleted-since"),
        ]
    )
    resync(store, listed, started)
    assert store.storage_classes is not None
    assert set(store.storage_classes) == {"old", "created-since", "changed-since"}
    assert store.storage_classes["changed-since"]["provisioner"] == "new.example.com"


def test_a_new_storage_class_concerns_the_modelservers_whose_claim_waits() -> None:
    store = Store()

    def claim(owner: str, cls: str | None, phase: str) -> dict[str, Any]:
        body = _obj(f"{owner}-cache", owner=owner)
        body["spec"] = {"storageClassName": cls} if cls else {}
        body["status"] = {"phase": phase}
        return body

    store.put_child("PersistentVolumeClaim", claim("a", "fast", "Pending"))
    store.put_child("PersistentVolumeClaim", claim("b", None, "Pending"))
    store.put_child("PersistentVolumeClaim", claim("c", "fast", "Bound"))
    store.put_child("PersistentVolumeClaim", claim("d", "slow", "Pending"))
    assert sorted(store.claims_of_class("fast")) == [("ml", "a"), ("ml", "b")]


def test_an_object_of_a_child_kind_that_is_not_ours_is_known_by_its_owners_only() -> None:
    """A user's Service named like a ModelServer: the store keeps who owns it (nobody), not the
    object; once a relist misses it, its name is free and the ModelServer is looked at again."""
    store = Store()
    store.put_modelserver(_obj("shop"))
    users = _obj("shop")
    users["spec"] = {"selector": {"app": "shop"}}
    store.put_child("Service", users)
    assert store.child("Service", "ml", "shop") is None
    assert store.other_owners("Service", "ml", "shop") == ()
    ours = _obj("shop", owner="shop")
    ours["metadata"]["ownerReferences"] = [{"uid": "uid-shop"}]
    store.put_child("Service", ours)  # labelled now: a child, no longer an other
    assert store.other_owners("Service", "ml", "shop") is None
    store.put_child("Service", users)

    started = time.monotonic()
    touched = resync(store, _lists(ModelServer=[_obj("shop")]), started)
    assert store.other_owners("Service", "ml", "shop") is None
    assert touched == {("ml", "shop")}
