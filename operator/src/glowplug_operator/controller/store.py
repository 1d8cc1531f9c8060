"""The informer's store: what the operator knows of the cluster, the latest ModelServers, their
children and pods, as the watch streams deliver them. The reconciler reads only from here, so
a converged ModelServer costs no API requests at all. Of the objects of a child's kind that are
not the operator's (no managed-by label), only the owners are kept: a child's name taken by one
of them is a NameConflict, found without a request."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from glowplug_operator.contract import MANAGED_BY, MODELSERVER_LABEL, cache_claim_name

Key = tuple[str, str]  # (namespace, name)
Body = dict[str, Any]


def slim(body: Body) -> Body:
    """The body without what the operator never reads (managedFields, the last-applied
    annotation), its short strings shared (`compact`); at a thousand ModelServers this is most
    of the store's memory."""
    meta = body.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        annotations = meta.get("annotations")
        if annotations:
            annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    return cast(Body, compact(body))


def slim_pod(body: Body) -> Body:
    """A pod as the rollback logic reads it: metadata and status (the spec is the template's)."""
    return slim({k: body[k] for k in ("apiVersion", "kind", "metadata", "status") if k in body})


SHARED_CHARS = 32  # strings up to this long are shared: states, reasons, image names


def compact(value: Any) -> Any:
    """`value`, changed in place: its short strings made one object each (`sys.intern`). Every
    parsed watch event has its own copies of "True", "Running", "ClusterIP"...; the keys are
    shared already (orjson, which decodes every body, keeps one object per key). Together that
    is about 45% of a Deployment's memory in the store."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in items:
        if type(v) is str:
            if len(v) <= SHARED_CHARS:
                value[k] = sys.intern(v)
        elif isinstance(v, dict | list):
            compact(v)
    return value


def key_of(body: Body) -> Key:
    meta = body["metadata"]
    return meta["namespace"], meta["name"]


def owner_of(body: Body) -> Key | None:
    """The ModelServer a child or pod belongs to, from the glowplug.dev/modelserver label."""
    meta = body.get("metadata", {})
    name = (meta.get("labels") or {}).get(MODELSERVER_LABEL)
    return (meta["namespace"], name) if name else None


def managed(body: Body) -> bool:
    """The object carries the operator's managed-by label: one of its children."""
    labels = body.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in MANAGED_BY.items())


def named_for(kind: str, namespace: str, name: str) -> Key:
    """The ModelServer whose child of `kind` would have this name."""
    suffix = cache_claim_name("")
    if kind == "PersistentVolumeClaim" and name.endswith(suffix):
        name = name[: -len(suffix)]
    return namespace, name


@dataclass
class Store:
    modelservers: dict[Key, Body] = field(default_factory=dict)
    children: dict[tuple[str, str, str], Body] = field(default_factory=dict)
    # Objects of a child kind that are not the operator's, by (kind, namespace, name): the uids
    # of their owners only.
    others: dict[tuple[str, str, str], tuple[str, ...]] = field(default_factory=dict)
    pods: defaultdict[Key, dict[str, Body]] = field(default_factory=lambda: defaultdict(dict))
    # When each entry was last put, by (kind, namespace, name): a relist drops only what was
    # in the store before the list began and is not in the list.
    stamps: dict[tuple[str, str, str], float] = field(default_factory=dict)
    # StorageClasses by name (cluster-scoped), to say why a cache claim is not bound; None until
    # they are listed (then an unbound claim's class is not judged).
    storage_classes: dict[str, Body] | None = None
    # When a pod of each ModelServer was last gone (a DELETED event), as wall-clock time: the
    # pods that wait for the room it made are not reported unschedulable at once.
    pod_left_at: dict[Key, datetime] = field(default_factory=dict)

    def put_storage_class(self, body: Body) -> None:
        name = body["metadata"]["name"]
        self.stamps["StorageClass", "", name] = time.monotonic()
        if self.storage_classes is None:
            self.storage_classes = {}
        self.storage_classes[name] = slim(body)

    def drop_storage_class(self, body: Body) -> None:
        name = body["metadata"]["name"]
        self.stamps["StorageClass", "", name] = time.monotonic()  # a deletion is news too
        if self.storage_classes is not None:
            self.storage_classes.pop(name, None)

    def claims_of_class(self, name: str) -> list[Key]:
        """The ModelServers whose unbound claim names StorageClass `name` (or none: a new
        default class is theirs too)."""
        out = []
        for (kind, _, _), body in self.children.items():
            if kind != "PersistentVolumeClaim":
                continue
            if (body.get("status") or {}).get("phase") == "Bound":
                continue
            wanted = (body.get("spec") or {}).get("storageClassName")
            if (wanted in (None, "", name)) and (owner := owner_of(body)) is not None:
                out.append(owner)
        return out

    def _stamp(self, kind: str, body: Body) -> None:
        namespace, name = key_of(body)
        self.stamps[kind, namespace, name] = time.monotonic()

    def put_modelserver(self, body: Body) -> None:
        self._stamp("ModelServer", body)
        self.modelservers[key_of(body)] = slim(body)

    def drop_modelserver(self, key: Key) -> None:
        self.pod_left_at.pop(key, None)
        self.modelservers.pop(key, None)
        self.stamps.pop(("ModelServer", *key), None)
        self.pods.pop(key, None)

    def put_child(self, kind: str, body: Body) -> None:
        """An object of a child kind: kept whole when it is the operator's, else its owners."""
        self._stamp(kind, body)
        where = (kind, *key_of(body))
        if managed(body):
            self.others.pop(where, None)
            self.children[where] = slim(body)
        else:
            self.children.pop(where, None)
            refs = body["metadata"].get("ownerReferences") or []
            self.others[where] = tuple(str(r.get("uid")) for r in refs)

    def drop_child(self, kind: str, body: Body) -> None:
        where = (kind, *key_of(body))
        self.stamps.pop(where, None)
        self.children.pop(where, None)
        self.others.pop(where, None)

    def child(self, kind: str, namespace: str, name: str) -> Body | None:
        """The operator's object of `kind` and name (with its managed-by label)."""
        return self.children.get((kind, namespace, name))

    def other_owners(self, kind: str, namespace: str, name: str) -> tuple[str, ...] | None:
        """The owners' uids of an object of `kind` and name without the managed-by label (a
        user's, or one of ours whose label was removed); None when there is none."""
        return self.others.get((kind, namespace, name))

    def put_pod(self, owner: Key, body: Body) -> None:
        self._stamp("Pod", body)
        self.pods[owner][body["metadata"]["name"]] = slim_pod(body)

    def drop_pod(self, owner: Key, body: Body) -> None:
        self.pod_left_at[owner] = datetime.now(UTC)
        pods = self.pods.get(owner)
        if pods is not None:
            pods.pop(body["metadata"]["name"], None)
            if not pods:
                del self.pods[owner]

    def pods_of(self, key: Key) -> list[Body]:
        return list(self.pods.get(key, {}).values())


def fill(store: Store, listed: dict[str, list[Body]]) -> list[Key]:
    """Put what the initial lists returned into the store (kind -> bodies, "ModelServer" and
    "Pod" included); returns the ModelServers' keys, to be reconciled."""
    for kind, bodies in listed.items():
        if kind == "StorageClass":
            store.storage_classes = {b["metadata"]["name"]: slim(b) for b in bodies}
            continue
        for body in bodies:
            if kind == "ModelServer":
                store.put_modelserver(body)
            elif kind == "Pod":
                owner = owner_of(body)
                if owner is not None:
                    store.put_pod(owner, body)
            else:
                store.put_child(kind, body)
    return [key_of(b) for b in listed.get("ModelServer", [])]


def resync(store: Store, listed: dict[str, list[Body]], started: float) -> set[Key]:
    """Bring the store in line with fresh lists (kind -> bodies) begun at `started`
    (time.monotonic()): an entry put before the list began and missing from it was deleted
    while a watch was down (its DELETED event lost in a relist) and is dropped; a listed object
    the store lacks is added. Entries put since the list began are the watch's newer word and
    are kept. Returns the ModelServers to reconcile."""
    touched: set[Key] = set()

    def stale(kind: str, namespace: str, name: str, names: set[tuple[str, str]]) -> bool:
        return (namespace, name) not in names and store.stamps.get(
            (kind, namespace, name), 0
        ) < started

    for kind, bodies in listed.items():
        if kind == "StorageClass":
            # Few and cluster-scoped: the list replaces them, but for what the watch said of a
            # class since the list began (put or deleted).
            fresh = {b["metadata"]["name"]: slim(b) for b in bodies}
            known = store.storage_classes or {}
            for (k, _, name), stamp in store.stamps.items():
                if k == "StorageClass" and stamp >= started:
                    fresh.pop(name, None)
                    if name in known:
                        fresh[name] = known[name]
            store.storage_classes = fresh
            continue
        names = {key_of(b) for b in bodies}
        if kind == "ModelServer":
            for key in [k for k in store.modelservers if stale(kind, *k, names)]:
                store.drop_modelserver(key)
                store.stamps.pop((kind, *key), None)
            for body in bodies:
                if key_of(body) not in store.modelservers:
                    store.put_modelserver(body)
                    touched.add(key_of(body))
        elif kind == "Pod":
            for owner, pods in list(store.pods.items()):
                for name in [n for n in pods if stale(kind, owner[0], n, names)]:
                    store.drop_pod(owner, pods[name])
                    store.stamps.pop((kind, owner[0], name), None)
                    touched.add(owner)
            for body in bodies:
                pod_owner = owner_of(body)
                if pod_owner is not None and body["metadata"]["name"] not in store.pods.get(
                    pod_owner, {}
                ):
                    store.put_pod(pod_owner, body)
                    touched.add(pod_owner)
        else:
            for k, namespace, name in [
                c for c in store.children if c[0] == kind and stale(kind, c[1], c[2], names)
            ]:
                child_owner = owner_of(store.children[k, namespace, name])
                store.drop_child(kind, store.children[k, namespace, name])
                store.stamps.pop((kind, namespace, name), None)
                if child_owner is not None:
                    touched.add(child_owner)
            for k, namespace, name in [
                c for c in store.others if c[0] == kind and stale(kind, c[1], c[2], names)
            ]:
                store.others.pop((k, namespace, name))
                store.stamps.pop((kind, namespace, name), None)
                touched.add(named_for(kind, namespace, name))  # its name may be free now
            for body in bodies:
                where = (kind, *key_of(body))
                if where not in store.children and where not in store.others:
                    store.put_child(kind, body)
                    if (listed_owner := owner_of(body)) is not None:
                        touched.add(listed_owner)
    return {k for k in touched if k in store.modelservers}
