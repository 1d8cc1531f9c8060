"""The informer's store: what the operator knows of the cluster, the latest ModelServers, their
children and pods, as kopf's watch streams deliver them. The reconciler reads only from here, so
a converged ModelServer costs no API requests at all."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from glowplug_operator.contract import MODELSERVER_LABEL

Key = tuple[str, str]  # (namespace, name)
Body = dict[str, Any]


def slim(body: Body) -> Body:
    """The body without what the operator never reads (managedFields, the last-applied
    annotation); at a thousand ModelServers this is most of the store's memory."""
    meta = body.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        annotations = meta.get("annotations")
        if annotations:
            annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    return body


def slim_pod(body: Body) -> Body:
    """A pod as the rollback logic reads it: metadata and status (the spec is the template's)."""
    slim(body)
    return {k: body[k] for k in ("apiVersion", "kind", "metadata", "status") if k in body}


def key_of(body: Body) -> Key:
    meta = body["metadata"]
    return meta["namespace"], meta["name"]


def owner_of(body: Body) -> Key | None:
    """The ModelServer a child or pod belongs to, from the glowplug.dev/modelserver label."""
    meta = body.get("metadata", {})
    name = (meta.get("labels") or {}).get(MODELSERVER_LABEL)
    return (meta["namespace"], name) if name else None


@dataclass
class Store:
    modelservers: dict[Key, Body] = field(default_factory=dict)
    children: dict[tuple[str, str, str], Body] = field(default_factory=dict)
    pods: defaultdict[Key, dict[str, Body]] = field(default_factory=lambda: defaultdict(dict))

    def put_modelserver(self, body: Body) -> None:
        self.modelservers[key_of(body)] = slim(body)

    def drop_modelserver(self, key: Key) -> None:
        self.modelservers.pop(key, None)
        self.pods.pop(key, None)

    def put_child(self, kind: str, body: Body) -> None:
        namespace, name = key_of(body)
        self.children[kind, namespace, name] = slim(body)

    def drop_child(self, kind: str, body: Body) -> None:
        namespace, name = key_of(body)
        self.children.pop((kind, namespace, name), None)

    def child(self, kind: str, namespace: str, name: str) -> Body | None:
        return self.children.get((kind, namespace, name))

    def put_pod(self, owner: Key, body: Body) -> None:
        self.pods[owner][body["metadata"]["name"]] = slim_pod(body)

    def drop_pod(self, owner: Key, body: Body) -> None:
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
