"""The operator's writes to the Kubernetes API: server-side apply of children, the status patch.

Reads come from kopf's watch streams (see `cache.py`); this module only writes, and only when the
reconciler has found a difference.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

import httpx2
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Event, PersistentVolumeClaim, Pod, Service
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.resources.storage_v1 import StorageClass
from lightkube.types import PatchType

from glowplug_operator.contract import (
    API_VERSION,
    GROUP,
    KIND,
    MANAGED_BY,
    PLURAL,
    REPORTING_COMPONENT,
    VERSION,
)

ModelServer = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)

_RESOURCES: dict[str, Any] = {
    "Deployment": Deployment,
    "Service": Service,
    "PersistentVolumeClaim": PersistentVolumeClaim,
    "PodDisruptionBudget": PodDisruptionBudget,
}


_API_VERSIONS = {
    "ModelServer": API_VERSION,
    "Deployment": "apps/v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "PodDisruptionBudget": "policy/v1",
    "Pod": "v1",
}


class Gone(Exception):
    """The object was deleted (a 404 on a write)."""


class Stale(Exception):
    """The object changed since the version a write was computed from (a 409)."""


class Kube:
    """A thin async gateway; one instance per operator process."""

    def __init__(self, field_manager: str) -> None:
        self.field_manager = field_manager
        self._client: AsyncClient | None = None

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            # Generous: under load (a thousand ModelServers at once) an apply can take seconds.
            self._client = AsyncClient(
                field_manager=self.field_manager, timeout=httpx2.Timeout(30.0)
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def apply(self, manifest: dict[str, Any], force: bool = True) -> dict[str, Any]:
        """Server-side apply with the operator's one field manager; with `force`, taking over
        conflicting fields (a hand edit of a field the operator owns is undone). Without it, a
        field another manager set to another value is a 409 (the first apply of a new child:
        an object someone created meanwhile is not taken over). Returns the live object."""
        meta = manifest["metadata"]
        live = await self.client.patch(
            _RESOURCES[manifest["kind"]],
            meta["name"],
            manifest,
            namespace=meta["namespace"],
            patch_type=PatchType.APPLY,
            field_manager=self.field_manager,
            force=force,
        )
        return cast(dict[str, Any], live.to_dict())

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The live object, or None when there is none (the store sees only labelled objects:
        this is how an object of the same name that is not ours is found)."""
        try:
            live = await self.client.get(_RESOURCES[kind], name, namespace=namespace)
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise
        return cast(dict[str, Any], live.to_dict())

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            await self.client.delete(_RESOURCES[kind], name, namespace=namespace)
        except ApiError as error:
            if error.status.code != 404:
                raise

    async def replace_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> str | None:
        """Write the whole status (JSON patch `add /status` replaces it, or creates it); returns
        the new resourceVersion. With `resource_version`, only onto that version of the object
        (a patch that sets it is a precondition): a body replaced meanwhile raises Stale, and a
        ModelServer deleted meanwhile raises Gone."""
        patch: list[dict[str, Any]] = [{"op": "add", "path": "/status", "value": status}]
        if resource_version:
            patch.insert(
                0, {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version}
            )
        try:
            live = await self.client.patch(
                ModelServer.Status, name, patch, namespace=namespace, patch_type=PatchType.JSON
            )
        except ApiError as error:
            if error.status.code == 404:
                raise Gone(f"ModelServer {namespace}/{name}") from error
            if error.status.code == 409:
                raise Stale(f"ModelServer {namespace}/{name}") from error
            raise
        version = getattr(getattr(live, "metadata", None), "resourceVersion", None)
        return version if isinstance(version, str) else None

    async def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about a ModelServer, as `kubectl describe ms` shows it."""
        meta = body["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": body.get("apiVersion", API_VERSION),
                "kind": body.get("kind", KIND),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "glowplug-operator"},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": "glowplug-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.client.create(cast(Event, Event.from_dict(event)))


async def list_all(
    client: AsyncClient, kind: str, namespaces: tuple[str, ...], labelled: bool = True
) -> list[dict[str, Any]]:
    """Every object of `kind` ("ModelServer", a child kind or "Pod") in the namespaces (all
    when empty), only the operator's labelled ones unless `labelled` is False."""
    resource: Any = {"ModelServer": ModelServer, "Pod": Pod}.get(kind) or _RESOURCES[kind]
    labels: dict[str, Any] | None = dict(MANAGED_BY) if labelled else None
    out: list[dict[str, Any]] = []
    for namespace in namespaces or ("*",):
        async for item in client.list(resource, namespace=namespace, labels=labels):
            body = cast(dict[str, Any], cast(Any, item).to_dict())
            body.setdefault("kind", kind)  # list items carry neither
            body.setdefault("apiVersion", _API_VERSIONS[kind])
            out.append(body)
    return out


async def list_storage_classes(client: AsyncClient) -> list[dict[str, Any]] | None:
    """Every StorageClass (cluster-scoped), to say why a cache claim is not bound; None when
    they cannot be read (a namespaced install without the permission)."""
    out: list[dict[str, Any]] = []
    try:
        async for item in client.list(StorageClass):
            body = cast(dict[str, Any], cast(Any, item).to_dict())
            out.append({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", **body})
    except ApiError as error:
        if error.status.code == 403:
            return None
        raise
    return out
