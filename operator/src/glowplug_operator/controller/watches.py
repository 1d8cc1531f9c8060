"""The operator's watch streams, each event handed straight to a handler.

Each stream is kopf's own (`infinite_watch`: a list, then a watch from the list's
resourceVersion, reconnected when the server ends it, listed again after 410 Gone; kopf's
credentials and its `settings.watching` timeouts). What kopf does with an event after that, an
`on.event` handler's path, is skipped: a task and a queue per object, a cause, a logger, the
handler's keyword arguments and an empty patch. The handlers here only update the store and
queue keys; at 1000 ModelServers that path cost the operator more CPU than the handlers, about
390 us for each of some 15000 events (bench/README.md).

A stream's events reach its handler one at a time, in the order the API server sent them, on
the event loop. The server filters child kinds by the `managed-by` label: the operator never
receives the pods, Deployments or Services of other workloads.

kopf 1.45's watch stream is not part of its public API; tests/e2e runs every stream against a
real API server, so a kopf release that changes it fails there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import cast

import kopf
from kopf._cogs.clients.watching import Bookmark, infinite_watch
from kopf._cogs.structs.references import NamespaceName, Resource

log = logging.getLogger(__name__)

Handler = Callable[[kopf.RawEvent], None]
RETRY_SECONDS = 5.0
RETRY_MAX_SECONDS = 60.0


@dataclass(frozen=True)
class Watch:
    """One kind to watch: its API resource, and the label selector the server applies."""

    resource: Resource
    handler: Handler
    label_selector: str | None = None


def watch_tasks(
    watches: list[Watch], namespaces: tuple[str, ...], settings: kopf.OperatorSettings
) -> list[asyncio.Task[None]]:
    """One task per kind and namespace (one per kind when cluster-wide or cluster-scoped)."""
    for w in watches:
        if w.label_selector:
            key = (w.resource.group, w.resource.version, w.resource.plural)
            settings.watching.label_selectors[key] = w.label_selector
    tasks = []
    for w in watches:
        cluster_wide = not (w.resource.namespaced and namespaces)
        for namespace in (None,) if cluster_wide else namespaces:
            tasks.append(asyncio.create_task(stream(w, namespace, settings)))
    return tasks


async def stream(
    watch: Watch,
    namespace: str | None,
    settings: kopf.OperatorSettings,
    retry_seconds: float = RETRY_SECONDS,
) -> None:
    """Hand every event of one stream to its handler, until cancelled.

    A handler's failure is logged and the stream goes on: one odd object must not stop the
    operator's view of the rest. A stream that fails (kopf reconnects by itself, but gives up
    on a refusal such as 403 or an ERROR event other than 410 Gone) is logged and opened again,
    with a fresh list, after `retry_seconds`, doubled after each failure in a row up to
    RETRY_MAX_SECONDS; the watch has no deadline, the operator needs it for as long as it runs.
    Cancelled, the stream is closed here, before the event loop ends (stopping.py)."""
    scope = NamespaceName(namespace) if namespace is not None else None
    where = f"in {namespace}" if namespace else "cluster-wide"
    delay = retry_seconds
    while True:
        events = cast(
            AsyncGenerator[Bookmark | kopf.RawEvent, None],
            infinite_watch(settings=settings, resource=watch.resource, namespace=scope),
        )
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    delay = retry_seconds  # it works: the next failure starts over
                    if not isinstance(event, Bookmark) and event.get("type") != "BOOKMARK":
                        _handle(watch, event)
        except Exception:
            log.exception(
                "the %s watch %s failed; opening it again in %g s",
                watch.resource.kind,
                where,
                delay,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_SECONDS)


def _handle(watch: Watch, event: kopf.RawEvent) -> None:
    try:
        watch.handler(event)
    except Exception:
        meta = (event.get("object") or {}).get("metadata") or {}
        log.exception(
            "%s %s/%s: the %s event was not handled",
            watch.resource.kind,
            meta.get("namespace", ""),
            meta.get("name", "?"),
            event.get("type") or "listed",
        )
