"""kopf registration: the operator's startup and cleanup, and what each watch event does to the
store and the work queue, nothing else.

No kopf resource handler is registered: the startup handler starts the watch streams
(watches.py), which call the handlers below directly, on the event loop. kopf stores no state on
the ModelServer (no annotations, no finalizers), so the operator never writes to the user's
object outside its status. The operator's collaborators live in kopf's `memo`
(`memo.controller`), made once at startup from the settings `__main__` put in `memo.settings`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from glowplug_operator.contract import MANAGED_BY_SELECTOR
from glowplug_operator.controller.kube import Kube, load_configuration
from glowplug_operator.controller.leadership import Leadership, LeaseConfig, start_election
from glowplug_operator.controller.loop import reconcile_loop
from glowplug_operator.controller.metrics import Metrics
from glowplug_operator.controller.reconciler import Reconciler
from glowplug_operator.controller.startup_reports import StartupReports
from glowplug_operator.controller.store import (
    Key,
    Store,
    fill,
    key_of,
    managed,
    named_for,
    owner_of,
    resync,
)
from glowplug_operator.controller.watches import Connection, Event, Versions, Watch, watch_tasks
from glowplug_operator.controller.workqueue import WorkQueue
from glowplug_operator.memory import release_memory_loop
from glowplug_operator.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Controller:
    """The operator's one set of collaborators, made at startup."""

    store: Store
    queue: WorkQueue[Key]
    reconciler: Reconciler
    loops: list[asyncio.Task[None]]
    connection: Connection
    release_lease: Callable[[], None] | None = None


def _controller(memo: kopf.Memo) -> Controller:
    return cast(Controller, memo.controller)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the API server is where KUBERNETES_SERVICE_HOST/PORT say, as client-go finds it:
    kopf's own service-account login names `kubernetes.default.svc`, which needs cluster DNS.
    Elsewhere, the kubeconfig."""
    info = kopf.login_with_service_account(**kwargs)
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if info is None or not host:
        return info or kopf.login_with_kubeconfig(**kwargs)
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    return replace(
        info, server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = cast(Settings, memo.settings)
    logging.getLogger().setLevel(config.log_level)
    settings.posting.loggers = False  # only the Events the reconciler posts on purpose
    settings.networking.request_timeout = 60
    metrics = Metrics()
    if config.metrics_port:
        start_http_server(config.metrics_port, registry=metrics.registry)
    store: Store = Store()
    queue: WorkQueue[Key] = WorkQueue()
    leadership = cast(Leadership, memo.leadership)
    identity = cast(str, memo.identity)
    kube = Kube(config.field_manager, config.api_threads, leadership, identity)
    reports = StartupReports(requeue=queue.add, observe=metrics.observe_phases)
    reconciler = Reconciler(config, kube, store, metrics, reports)
    # The initial lists, before any reconcile: a first reconcile after a restart must see the
    # pods and children that exist, not an empty store (Ready=False and a Warning for nothing).
    # The watches start from these lists' versions: what changes meanwhile comes as events.
    versions: Versions = {}
    for key in fill(store, await _lists(kube, config.namespaces, versions)):
        queue.add(key)
    loops = [asyncio.create_task(_relist_loop(kube, store, queue, config))]
    loops.append(asyncio.create_task(release_memory_loop()))
    loops.append(
        asyncio.create_task(_reconcile_when_leading(leadership, queue, reconciler, config))
    )
    connection = Connection(load_configuration())
    memo.controller = Controller(store, queue, reconciler, loops, connection)
    loops += watch_tasks(_watches(memo.controller), config.namespaces, connection, versions)
    if config.leader_election:
        # A standby watches and keeps its store (reads) and writes nothing until it holds the
        # Lease; then the loops start at once on a warm store. Losing it stops the operator.
        lease = LeaseConfig(
            config.lease_name, config.lease_namespace, identity, config.lease_seconds
        )
        stop, lost = cast(asyncio.Event, memo.stop), cast(asyncio.Event, memo.lost)
        loop = asyncio.get_running_loop()

        def stop_lost() -> None:
            lost.set()
            stop.set()

        memo.controller.release_lease = start_election(
            lease, leadership, kube.lease_client(), lambda: loop.call_soon_threadsafe(stop_lost)
        )


async def _reconcile_when_leading(
    leadership: Leadership, queue: WorkQueue[Key], reconciler: Reconciler, config: Settings
) -> None:
    """The reconcile loops, once this replica may write (at once without an election)."""
    await leadership.acquired()
    loops = [reconcile_loop(queue, reconciler) for _ in range(config.reconcile_workers)]
    await asyncio.gather(*loops)


KINDS: tuple[str, ...] = ("ModelServer", "Deployment", "Service", "PersistentVolumeClaim")
KINDS += ("PodDisruptionBudget", "Pod")


async def _lists(
    kube: Kube, namespaces: tuple[str, ...], versions: Versions | None = None
) -> dict[str, list[dict[str, Any]]]:
    # Pods: the operator's only. The child kinds: all, to know the names others took.
    lists = await asyncio.gather(
        *(kube.list_all(k, namespaces, k == "Pod", versions) for k in KINDS)
    )
    listed = dict(zip(KINDS, lists, strict=True))
    classes = await kube.list_storage_classes(versions)
    if classes is not None:
        listed["StorageClass"] = classes
    return listed


async def _relist_loop(kube: Kube, store: Store, queue: WorkQueue[Key], config: Settings) -> None:
    """Every resync period, the store is checked against fresh lists: after a watch relist
    (410 Gone) a stream lists again but reports no DELETED for what went in the gap."""
    while True:
        await asyncio.sleep(config.resync_seconds)
        started = time.monotonic()
        try:
            listed = await _lists(kube, config.namespaces)
        except asyncio.CancelledError:
            raise
        except Exception:  # the watches still run; the next period tries again
            log.warning("relisting for the store failed", exc_info=True)
            continue
        for key in resync(store, listed, started):
            queue.add(key)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    controller = _controller(memo)
    if controller.release_lease is not None:
        # Writes stop first, then the Lease goes to a standby (a rolling update: at once).
        await asyncio.to_thread(controller.release_lease)
    for task in controller.loops:
        task.cancel()
    await asyncio.gather(*controller.loops, return_exceptions=True)
    if controller.reconciler.startup_reports is not None:
        await controller.reconciler.startup_reports.close()
    await controller.reconciler.kube.close()
    await controller.connection.close()


def _body(event: Event) -> dict[str, Any]:
    return cast(dict[str, Any], event["object"])


def modelserver_event(controller: Controller, event: Event) -> None:
    body = _body(event)
    key = key_of(body)
    if event["type"] == "DELETED":
        controller.store.drop_modelserver(key)
        controller.queue.forget(key)
        controller.reconciler.forget(key)
        return
    if _known(controller.store.modelservers.get(key), body):
        return  # our own status write coming back: the store has it already
    controller.store.put_modelserver(body)
    controller.queue.add(key)


def _known(stored: dict[str, Any] | None, body: dict[str, Any]) -> bool:
    """The store holds this very version already (the echo of a write of ours)."""
    version = body["metadata"].get("resourceVersion")
    return (
        stored is not None
        and version is not None
        and (stored["metadata"].get("resourceVersion") == version)
    )


def child_event(controller: Controller, kind: str, event: Event) -> None:
    """An object of a child kind, the operator's or not: one that is not its own matters only
    for its name (a ModelServer that wants that name is blocked, or free once it is gone)."""
    body = _body(event)
    if event["type"] == "DELETED":
        controller.store.drop_child(kind, body)
    else:
        meta = body["metadata"]
        if _known(controller.store.child(kind, meta["namespace"], meta["name"]), body):
            return  # the echo of our own apply
        controller.store.put_child(kind, body)
    owner = owner_of(body) if managed(body) else named_for(kind, *key_of(body))
    if owner is not None and owner in controller.store.modelservers:
        controller.queue.add(owner)


def storage_class_event(controller: Controller, event: Event) -> None:
    """StorageClasses say why a cache claim is not bound; a new or changed one may be the
    answer for the ModelServers whose claim waits."""
    body = _body(event)
    if event["type"] == "DELETED":
        controller.store.drop_storage_class(body)
    else:
        controller.store.put_storage_class(body)
    for owner in controller.store.claims_of_class(body["metadata"]["name"]):
        if owner in controller.store.modelservers:
            controller.queue.add(owner)


def pod_event(controller: Controller, event: Event) -> None:
    body = _body(event)
    owner = owner_of(body)
    if owner is None:
        return
    if event["type"] == "DELETED":
        controller.store.drop_pod(owner, body)
    else:
        controller.store.put_pod(owner, body)
    if owner in controller.store.modelservers:
        controller.queue.add(owner)


def _watches(controller: Controller) -> list[Watch]:
    """What the operator watches, and what each event does to the store and the queue."""

    def child(kind: str) -> Watch:
        return Watch(kind, partial(child_event, controller, kind))

    return [
        Watch("ModelServer", partial(modelserver_event, controller)),
        child("Deployment"),
        child("Service"),
        child("PersistentVolumeClaim"),
        child("PodDisruptionBudget"),
        Watch("Pod", partial(pod_event, controller), MANAGED_BY_SELECTOR),
        Watch("StorageClass", partial(storage_class_event, controller)),
    ]
