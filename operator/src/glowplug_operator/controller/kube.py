"""The operator's API gateway, on the official `kubernetes` client: server-side apply of children,
the status patch, Events, and the initial lists. Nothing else in the operator talks to the API
server (the watch streams aside, watches.py, on this client's configuration; the Lease is
`leadership.py`'s, on its own client).

The client is synchronous (urllib3); every call runs in a bounded thread pool
(`GLOWPLUG_API_THREADS`), never on the event loop. Requests go through the client's `ApiClient`
(its configuration, authentication, TLS, serialization and errors) by path, and bodies go out
and come back as plain dicts: the reconciler compares dicts, and the generated typed API classes
would import their hundreds of pydantic models (CoreV1Api alone: 60 MB of the operator's
memory) and validate every call, to produce objects the operator would turn back into dicts.

Every write asks `Leadership.may_write()` first and raises NotLeader when this process does not
hold the Lease, and logs one INFO line naming the ModelServer it was for
(`modelserver ns/name: ...`, with `namespace` and `modelserver` fields for JSON logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson

from glowplug_operator.contract import (
    API_VERSION,
    GROUP,
    KIND,
    MANAGED_BY_SELECTOR,
    PLURAL,
    REPORTING_COMPONENT,
    VERSION,
)
from glowplug_operator.controller.leadership import Leadership

log = logging.getLogger(__name__)

# kind -> the collection's path (namespaced; without the namespace part for all namespaces)
_PATHS: dict[str, tuple[str, str]] = {
    "ModelServer": (f"/apis/{GROUP}/{VERSION}", PLURAL),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "StorageClass": ("/apis/storage.k8s.io/v1", "storageclasses"),
}


def _path(kind: str, namespace: str | None, name: str = "", sub: str = "") -> str:
    group, plural = _PATHS[kind]
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"{group}{where}/{plural}" + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def collection_path(kind: str, namespace: str | None) -> str:
    """The path to list or watch `kind` in `namespace` (in all namespaces when None)."""
    return _path(kind, namespace)


_API_VERSIONS = {
    "ModelServer": API_VERSION,
    "Deployment": "apps/v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "PodDisruptionBudget": "policy/v1",
    "Pod": "v1",
    "StorageClass": "storage.k8s.io/v1",
}


def listed_item(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """An item of a list of `kind`, with the kind and apiVersion that list items lack."""
    body.setdefault("kind", kind)
    body.setdefault("apiVersion", _API_VERSIONS[kind])
    return body


APPLY_PATCH = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
LIST_PAGE = 500
# Generous: under load (a thousand ModelServers at once) an apply can take seconds.
TIMEOUT = (10.0, 30.0)


class ApiError(Exception):
    """The API server answered a request with an error status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class Gone(Exception):
    """The object was deleted (a 404 on a write)."""


class Stale(Exception):
    """The object changed since the version a write was computed from (a 409)."""


class NotLeader(Exception):
    """This process does not hold the leader Lease (now): it must not write."""


def load_configuration() -> Any:
    """The client configuration: in a pod, its ServiceAccount at KUBERNETES_SERVICE_HOST/PORT
    (no cluster DNS needed); elsewhere the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    return configuration


class Kube:
    """The async gateway; one instance per operator process."""

    def __init__(
        self,
        field_manager: str,
        threads: int = 16,
        leadership: Leadership | None = None,
        instance: str = "glowplug-operator",
    ) -> None:
        self.field_manager = field_manager
        self.threads = threads
        self.leadership = leadership or Leadership.always()
        self.instance = instance  # an Event's reportingInstance: which replica wrote it
        self._api_client: Any = None
        self._pool: ThreadPoolExecutor | None = None

    def lease_client(self) -> Any:
        """An API client of its own for the leader election: a renewal never waits for a
        thread or a connection behind the gateway's writes."""
        from kubernetes import client

        return client.ApiClient(load_configuration())

    def _client(self) -> Any:
        if self._api_client is None:
            from kubernetes.client import ApiClient

            configuration = load_configuration()
            configuration.connection_pool_maxsize = self.threads
            self._api_client = ApiClient(configuration)
        return self._api_client

    async def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str | None] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        """One request in the thread pool; its answer as a dict, an error status as ApiError."""
        self._client()  # made here, on the event loop: never twice by two threads
        call = partial(self._sync, method, path, query or {}, body, content_type)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="kube")
        data = await asyncio.get_running_loop().run_in_executor(self._pool, call)
        # Parsed here, on the event loop's thread: what the store keeps is not allocated in the
        # pool threads' own malloc arenas (which then stay mapped, fragmented). With orjson, as
        # the watch streams: one object per key (store.compact counts on it).
        return dict(orjson.loads(data))

    async def read_log(self, namespace: str, pod: str, container: str, limit: int) -> str:
        """The last `limit` bytes (about) of a container's log: an engine's own start phases."""
        self._client()
        query = {"container": container, "limitBytes": str(limit)}
        call = partial(
            self._sync, "GET", _path("Pod", namespace, pod, "log"), query, None, None, "*/*"
        )
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="kube")
        data = await asyncio.get_running_loop().run_in_executor(self._pool, call)
        return data.decode(errors="replace")

    def _sync(
        self,
        method: str,
        path: str,
        query: Mapping[str, str | None],
        body: Any,
        content_type: str | None,
        accept: str = "application/json",
    ) -> bytes:
        client = self._client()
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        request = client.param_serialize(
            method=method,
            resource_path=path,
            query_params=[(k, v) for k, v in query.items() if v is not None],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = client.call_api(*request, _request_timeout=TIMEOUT)
        try:
            data = response.read()
        finally:
            response.response.release_conn()
        if not 200 <= response.status <= 299:
            raise _api_error(response.status, response.reason, data)
        return bytes(data)

    def _writing(self) -> None:
        if not self.leadership.may_write():
            raise NotLeader("this replica does not hold the leader Lease")

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None

    async def apply(
        self, manifest: dict[str, Any], force: bool = True, live_version: str | None = None
    ) -> dict[str, Any]:
        """Server-side apply (`application/apply-patch+yaml`) with the operator's one field
        manager; with `force`, taking over conflicting fields (a hand edit of a field the
        operator owns is undone). Without it, a field another manager set to another value is
        a 409 (the first apply of a new child: an object someone created meanwhile is not taken
        over). Returns the live object. `live_version`, the resourceVersion the caller saw,
        only tells the log whether the apply changed anything."""
        self._writing()
        kind, meta = manifest["kind"], manifest["metadata"]
        live = await self._request(
            "PATCH",
            _path(kind, meta["namespace"], meta["name"]),
            {"fieldManager": self.field_manager, "force": "true" if force else "false"},
            manifest,
            APPLY_PATCH,
        )
        version = live["metadata"].get("resourceVersion")
        what = "created" if live_version is None and force is False else "applied"
        if live_version is not None:
            what = "unchanged" if version == live_version else "updated"
        _wrote(meta["namespace"], _owner(manifest), f"{kind} {meta['name']} {what}")
        return live

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        self._writing()
        try:
            await self._request("DELETE", _path(kind, namespace, name))
        except ApiError as error:
            if error.code != 404:
                raise
        _wrote(namespace, name, f"{kind} {name} deleted")

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
        self._writing()
        patch: list[dict[str, Any]] = [{"op": "add", "path": "/status", "value": status}]
        if resource_version:
            patch.insert(
                0, {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version}
            )
        try:
            live = await self._request(
                "PATCH", _path("ModelServer", namespace, name, "status"), None, patch, JSON_PATCH
            )
        except ApiError as error:
            if error.code == 404:
                raise Gone(f"ModelServer {namespace}/{name}") from error
            if error.code == 409:
                raise Stale(f"ModelServer {namespace}/{name}") from error
            raise
        _wrote(namespace, name, f"status written: {_summary(status)}")
        version = (live.get("metadata") or {}).get("resourceVersion")
        return version if isinstance(version, str) else None

    async def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about a ModelServer, as `kubectl describe ms` shows it."""
        self._writing()
        meta = body["metadata"]
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
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
            "reportingInstance": self.instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self._request("POST", _path("Event", meta["namespace"]), None, event)
        _wrote(meta["namespace"], meta["name"], f"Event {type_} {reason} posted")

    async def list_all(
        self,
        kind: str,
        namespaces: tuple[str, ...],
        labelled: bool = True,
        versions: dict[tuple[str, str | None], str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every object of `kind` ("ModelServer", a child kind or "Pod") in the namespaces (all
        when empty), only the operator's labelled ones unless `labelled` is False; paged. Each
        list's resourceVersion goes into `versions`, by (kind, namespace or None), for a watch
        to start from."""
        selector = MANAGED_BY_SELECTOR if labelled else None
        out: list[dict[str, Any]] = []
        for namespace in namespaces or (None,):
            token: str | None = None
            while True:
                query = {"labelSelector": selector, "limit": str(LIST_PAGE), "continue": token}
                page = await self._request("GET", _path(kind, namespace), query)
                out += (listed_item(kind, body) for body in page.get("items") or [])
                meta = page.get("metadata") or {}
                token = meta.get("continue")
                if not token:
                    if versions is not None and meta.get("resourceVersion"):
                        versions[kind, namespace] = str(meta["resourceVersion"])
                    break
        return out

    async def list_storage_classes(
        self, versions: dict[tuple[str, str | None], str] | None = None
    ) -> list[dict[str, Any]] | None:
        """Every StorageClass (cluster-scoped), to say why a cache claim is not bound; None when
        they cannot be read (a namespaced install without the permission)."""
        try:
            return await self.list_all("StorageClass", (), False, versions)
        except ApiError as error:
            if error.code == 403:
                return None
            raise


def _api_error(code: int, reason: str | None, data: bytes | None) -> ApiError:
    """An error answer as ApiError, with the message of the Status the API server sent."""
    message = str(reason or "")
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        message = str(json.loads(data or b"").get("message") or message)
    return ApiError(int(code), message)


def _wrote(namespace: str, name: str, what: str) -> None:
    """The one INFO line of a write: `modelserver ns/name: what`, and the ModelServer as fields
    (`namespace`, `modelserver`) for JSON logs, as the reconciler's decision lines have them."""
    log.info(
        "modelserver %s/%s: %s", namespace, name, what,
        extra={"namespace": namespace, "modelserver": name, "write": what.split(" ")[0]},
    )  # fmt: skip


def _owner(manifest: Mapping[str, Any]) -> str:
    """The ModelServer's name for a child manifest (its owner reference names it)."""
    refs = manifest["metadata"].get("ownerReferences") or [{}]
    return str(refs[0].get("name", "?"))


def _summary(status: Mapping[str, Any]) -> str:
    """The conditions of a status as `Type=Status (Reason)`, and the replicas."""
    conditions = ", ".join(
        f"{c.get('type')}={c.get('status')} ({c.get('reason')})"
        for c in status.get("conditions") or []
    )
    replicas = f"{status.get('readyReplicas', 0)}/{status.get('replicas', 0)} ready"
    return f"{conditions or 'no conditions'}; {replicas}"
