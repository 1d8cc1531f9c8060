"""kopf registration: wires watch events to the cache and the work queue, nothing else.

All handlers are `on.event`: kopf stores no state on the ModelServer (no annotations, no
finalizers), so the operator never writes to the user's object outside its status.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from glowplug_operator.cache import Cache, Key, key_of, owner_of
from glowplug_operator.contract import GROUP, MANAGED_BY, PLURAL, VERSION
from glowplug_operator.kube import Kube
from glowplug_operator.metrics import Metrics
from glowplug_operator.reconcile import Reconciler
from glowplug_operator.settings import Settings
from glowplug_operator.workqueue import WorkQueue

log = logging.getLogger("glowplug")


class Runtime:
    """The operator's one set of collaborators, made at startup."""

    settings: Settings
    cache: Cache
    queue: WorkQueue[Key]
    reconciler: Reconciler
    workers: list[asyncio.Task[None]]


runtime = Runtime()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    config = Settings.from_env()
    logging.getLogger().setLevel(config.log_level)
    settings.posting.loggers = False  # only the Events the reconciler posts on purpose
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    if config.metrics_port:
        start_http_server(config.metrics_port, registry=(metrics := Metrics()).registry)
    else:
        metrics = Metrics()
    runtime.settings = config
    runtime.cache = Cache()
    runtime.queue = WorkQueue()
    runtime.reconciler = Reconciler(config, Kube(config.field_manager), runtime.cache, metrics)
    runtime.workers = [asyncio.create_task(_worker()) for _ in range(config.reconcile_workers)]


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for task in runtime.workers:
        task.cancel()
    await asyncio.gather(*runtime.workers, return_exceptions=True)
    await runtime.reconciler.kube.close()


async def _worker() -> None:
    queue, reconciler = runtime.queue, runtime.reconciler
    failures: dict[Key, int] = {}
    while True:
        key = await queue.get()
        try:
            with reconciler.metrics.reconcile_seconds.time():
                delay = await reconciler.reconcile(key)
            failures.pop(key, None)
        except asyncio.CancelledError:
            raise
        except Exception:  # a reconcile must never take the operator down: retry with backoff
            failures[key] = failures.get(key, 0) + 1
            delay = min(60.0, 0.5 * 2 ** failures[key])
            reconciler.metrics.reconcile_errors.inc()
            log.exception("reconcile of %s/%s failed; retrying in %.1fs", *key, delay)
        finally:
            queue.done(key)
        if delay is not None:
            queue.add_after(key, delay)


def _body(event: kopf.RawEvent) -> dict[str, Any]:
    return cast(dict[str, Any], event["object"])


@kopf.on.event(GROUP, VERSION, PLURAL)
def modelserver_event(event: kopf.RawEvent, **_: Any) -> None:
    body = _body(event)
    key = key_of(body)
    if event["type"] == "DELETED":
        runtime.cache.drop_modelserver(key)
        runtime.queue.forget(key)
        runtime.reconciler.metrics.forget(*key)
        return
    runtime.cache.put_modelserver(body)
    runtime.queue.add(key)


def _child_event(kind: str, event: kopf.RawEvent) -> None:
    body = _body(event)
    if event["type"] == "DELETED":
        runtime.cache.drop_child(kind, body)
    else:
        runtime.cache.put_child(kind, body)
    owner = owner_of(body)
    if owner is not None and owner in runtime.cache.modelservers:
        runtime.queue.add(owner)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED_BY)
def deployment_event(event: kopf.RawEvent, **_: Any) -> None:
    _child_event("Deployment", event)


@kopf.on.event("", "v1", "services", labels=MANAGED_BY)
def service_event(event: kopf.RawEvent, **_: Any) -> None:
    _child_event("Service", event)


@kopf.on.event("", "v1", "persistentvolumeclaims", labels=MANAGED_BY)
def claim_event(event: kopf.RawEvent, **_: Any) -> None:
    _child_event("PersistentVolumeClaim", event)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED_BY)
def disruption_budget_event(event: kopf.RawEvent, **_: Any) -> None:
    _child_event("PodDisruptionBudget", event)


@kopf.on.event("", "v1", "pods", labels=MANAGED_BY)
def pod_event(event: kopf.RawEvent, **_: Any) -> None:
    body = _body(event)
    owner = owner_of(body)
    if owner is None:
        return
    if event["type"] == "DELETED":
        runtime.cache.drop_pod(owner, body)
    else:
        runtime.cache.put_pod(owner, body)
    if owner in runtime.cache.modelservers:
        runtime.queue.add(owner)
