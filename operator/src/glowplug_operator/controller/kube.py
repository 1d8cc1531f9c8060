"""The operator's API gateway, on the official `kubernetes` client: server-side apply of children,
the status patch, Events, and the initial lists. Nothing else in the operator talks to the API
server (kopf's watches aside; the Lease is `leadership.py`'s, on its own client).

The client is synchronous (urllib3); every call runs in a bounded thread pool
(`GLOWPLUG_API_THREADS`), never on the event loop. Bodies go out and come back as plain dicts
(`_preload_content=False`, JSON parsed here): the reconciler compares dicts, and building the
client's model objects for every answer would cost more than the request.

Every write asks `Leadership.may_write()` first and raises NotLeader when this process does not
hold the Lease, and logs one INFO line naming the ModelServer it was for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from glowplug_operator.contract import (
    API_VERSION,
    GROUP,
    KIND,
    MANAGED_BY,
    PLURAL,
    REPORTING_COMPONENT,
    VERSION,
)
from glowplug_operator.controller.leadership import Leadership

log = logging.getLogger(__name__)
T = TypeVar("T")

# kind -> (API class name in kubernetes.client, the method suffix for one namespaced object,
# the suffix of its all-namespaces list)
_APIS: dict[str, tuple[str, str, str]] = {
    "Deployment": ("AppsV1Api", "namespaced_deployment", "deployment_for_all_namespaces"),
    "Service": ("CoreV1Api", "namespaced_service", "service_for_all_namespaces"),
    "PersistentVolumeClaim": (
        "CoreV1Api",
        "namespaced_persistent_volume_claim",
        "persistent_volume_claim_for_all_namespaces",
    ),
    "PodDisruptionBudget": (
        "PolicyV1Api",
        "namespaced_pod_disruption_budget",
        "pod_disruption_budget_for_all_namespaces",
    ),
    "Pod": ("CoreV1Api", "namespaced_pod", "pod_for_all_namespaces"),
}

_API_VERSIONS = {
    "ModelServer": API_VERSION,
    "Deployment": "apps/v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "PodDisruptionBudget": "policy/v1",
    "Pod": "v1",
}
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
        self._apis: dict[str, Any] | None = None
        self._pool: ThreadPoolExecutor | None = None

    def lease_client(self) -> Any:
        """An API client of its own for the leader election: a renewal never waits for a
        thread or a connection behind the gateway's writes."""
        from kubernetes import client

        return client.ApiClient(load_configuration())

    def _api(self, name: str) -> Any:
        if self._apis is None:
            from kubernetes import client

            configuration = load_configuration()
            configuration.connection_pool_maxsize = self.threads
            api_client = client.ApiClient(configuration)
            self._apis = {
                api: getattr(client, api)(api_client)
                for api in ("AppsV1Api", "CoreV1Api", "PolicyV1Api", "CustomObjectsApi")
            }
        return self._apis[name]

    async def _call(self, call: Callable[[], T]) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="kube")
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def _request(self, api: str, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One call of the client's API `api`, its answer as a dict; errors as ApiError."""
        call = partial(self._sync, api, method, args, kwargs)
        return await self._call(call)

    def _sync(
        self, api: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            response = getattr(self._api(api), method)(
                *args, _preload_content=False, _request_timeout=TIMEOUT, **kwargs
            )
        except ApiException as error:
            raise _api_error(error) from None
        try:
            return dict(json.loads(response.data))
        finally:
            response.release_conn()

    def _writing(self) -> None:
        if not self.leadership.may_write():
            raise NotLeader("this replica does not hold the leader Lease")

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._apis is not None:
            self._apis["CoreV1Api"].api_client.close()
            self._apis = None

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
        api, suffix, _ = _APIS[kind]
        live = await self._request(
            api,
            f"patch_{suffix}",
            meta["name"],
            meta["namespace"],
            body=manifest,
            field_manager=self.field_manager,
            force=force,
            _content_type=APPLY_PATCH,
        )
        version = live["metadata"].get("resourceVersion")
        what = "created" if live_version is None and force is False else "applied"
        if live_version is not None:
            what = "unchanged" if version == live_version else "updated"
        log.info("%s: %s %s %s", _owner(manifest), kind, meta["name"], what)
        return live

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The live object, or None when there is none (the store sees only labelled objects:
        this is how an object of the same name that is not ours is found)."""
        api, suffix, _ = _APIS[kind]
        try:
            return await self._request(api, f"read_{suffix}", name, namespace)
        except ApiError as error:
            if error.code == 404:
                return None
            raise

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        self._writing()
        api, suffix, _ = _APIS[kind]
        try:
            await self._request(api, f"delete_{suffix}", name, namespace)
        except ApiError as error:
            if error.code != 404:
                raise
        log.info("ModelServer %s/%s: %s %s deleted", namespace, name, kind, name)

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
                "CustomObjectsApi",
                "patch_namespaced_custom_object_status",
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body=patch,
                _content_type=JSON_PATCH,
            )
        except ApiError as error:
            if error.code == 404:
                raise Gone(f"ModelServer {namespace}/{name}") from error
            if error.code == 409:
                raise Stale(f"ModelServer {namespace}/{name}") from error
            raise
        log.info("ModelServer %s/%s: status written: %s", namespace, name, _summary(status))
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
        await self._request("CoreV1Api", "create_namespaced_event", meta["namespace"], event)
        log.info(
            "ModelServer %s/%s: Event %s %s: %s",
            meta["namespace"],
            meta["name"],
            type_,
            reason,
            message,
        )

    async def list_all(
        self, kind: str, namespaces: tuple[str, ...], labelled: bool = True
    ) -> list[dict[str, Any]]:
        """Every object of `kind` ("ModelServer", a child kind or "Pod") in the namespaces (all
        when empty), only the operator's labelled ones unless `labelled` is False; paged."""
        selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items()) if labelled else None
        out: list[dict[str, Any]] = []
        for namespace in namespaces or (None,):
            call = self._list_call(kind, namespace)
            token: str | None = None
            while True:
                page = await call(label_selector=selector, limit=LIST_PAGE, _continue=token)
                for body in page.get("items") or []:
                    body.setdefault("kind", kind)  # list items carry neither
                    body.setdefault("apiVersion", _API_VERSIONS[kind])
                    out.append(body)
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break
        return out

    def _list_call(self, kind: str, namespace: str | None) -> Callable[..., Any]:
        if kind == "ModelServer":
            if namespace is None:
                return partial(
                    self._request, "CustomObjectsApi", "list_cluster_custom_object", GROUP,
                    VERSION, PLURAL,
                )  # fmt: skip
            return partial(
                self._request, "CustomObjectsApi", "list_namespaced_custom_object", GROUP,
                VERSION, namespace, PLURAL,
            )  # fmt: skip
        api, suffix, every = _APIS[kind]
        if namespace is None:
            return partial(self._request, api, f"list_{every}")
        return partial(self._request, api, f"list_{suffix}", namespace)


def _api_error(error: Any) -> ApiError:
    """The client's ApiException as ApiError, with the Status message the API server sent."""
    message = str(error.reason or "")
    try:
        status = json.loads(error.body or "")
        message = str(status.get("message") or message)
    except (TypeError, ValueError, AttributeError):
        pass
    return ApiError(int(error.status or 0), message)


def _owner(manifest: Mapping[str, Any]) -> str:
    """`ModelServer ns/name` for a child manifest (its owner reference names it)."""
    meta = manifest["metadata"]
    refs = meta.get("ownerReferences") or [{}]
    return f"ModelServer {meta['namespace']}/{refs[0].get('name', '?')}"


def _summary(status: Mapping[str, Any]) -> str:
    """The conditions of a status as `Type=Status (Reason)`, and the replicas."""
    conditions = ", ".join(
        f"{c.get('type')}={c.get('status')} ({c.get('reason')})"
        for c in status.get("conditions") or []
    )
    replicas = f"{status.get('readyReplicas', 0)}/{status.get('replicas', 0)} ready"
    return f"{conditions or 'no conditions'}; {replicas}"
