"""The operator's watch streams, each event handed straight to a handler.

A stream lists its kind (paged), hands each listed object to the handler (event type None),
then watches from the list's resourceVersion, with bookmarks. A stream given the version of a
list made before it (the operator's startup lists) watches from there at once: what changed
since that list, deletions included, arrives as events. When the server ends a watch
(`timeoutSeconds`) it is opened again from the last version seen; 410 Gone (that version is too
old) lists again at once. Any other failure (a refusal such as 403, an ERROR event, a dropped
connection) is logged and the stream opens again with a fresh list after RETRY_SECONDS, doubled
after each failure in a row up to RETRY_MAX_SECONDS.

A stream's events reach its handler one at a time, in the order the API server sent them, on
the event loop. The server filters pods by the `managed-by` label: the operator never receives
the pods of other workloads.

Why not kopf's resource handlers, nor its watch stream: at 1000 ModelServers an `on.event`
handler's path (a task and a queue per object, a cause, a logger, keyword arguments, an empty
patch) cost about 390 us for each of some 15000 events, more than the handlers; kopf's stream
(a private API) decoded every event with the standard library's `json`, three times slower than
`orjson`, through four generators (bench/README.md). A stream is a single coroutine: cancelled,
it closes its connection on the way out.

The connection is an aiohttp session (kopf's HTTP client) made from the `kubernetes` client's
configuration (kube.load_configuration): the same server, CA, client certificate and bearer
token as the API gateway; the token is read again at each (re)connection, so a rotated
ServiceAccount token is picked up.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from glowplug_operator.controller.kube import LIST_PAGE, collection_path, listed_item

log = logging.getLogger(__name__)

Event = dict[str, Any]  # {"type": "ADDED" | "MODIFIED" | "DELETED" | None (listed), "object": ...}
Handler = Callable[[Event], None]
RETRY_SECONDS = 5.0
RETRY_MAX_SECONDS = 60.0
SERVER_TIMEOUT_SECONDS = 300  # the server ends each watch after this; it is opened again
QUICK_END_PAUSE_SECONDS = 1.0  # after a watch the server ended this soon
READ_TIMEOUT_SECONDS = 330.0  # silence longer than this (bookmarks come every minute) fails it
CLUSTER_SCOPED = frozenset({"StorageClass"})


@dataclass(frozen=True)
class Watch:
    """One kind to watch, what to do with each event, and the label selector the server
    applies."""

    kind: str
    handler: Handler
    label_selector: str | None = None


class WatchFailed(Exception):
    """The API server refused a list or watch, or sent an ERROR event other than 410 Gone."""


class Gone(Exception):
    """410: the resourceVersion to watch from is too old; list again."""


class Connection:
    """The HTTP side of the streams: one aiohttp session, authenticated as the API gateway is."""

    def __init__(self, configuration: Any) -> None:
        self._configuration = configuration
        self._server = str(configuration.host).rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext:
        c = self._configuration
        context = ssl.create_default_context(cafile=c.ssl_ca_cert)
        if c.cert_file:
            context.load_cert_chain(c.cert_file, c.key_file)
        if not c.verify_ssl:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        elif c.assert_hostname is False:
            context.check_hostname = False
        return context

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made inside the running event loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl()),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=30, sock_read=READ_TIMEOUT_SECONDS
                ),
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        """The bearer token, read again each time (the client's refresh hook runs here)."""
        token = self._configuration.auth_settings().get("BearerToken", {}).get("value")
        return {"Accept": "application/json", **({"Authorization": token} if token else {})}

    async def get(self, path: str, params: dict[str, str]) -> aiohttp.ClientResponse:
        """The open response of a GET that the server answered with 200 (the caller reads and
        releases it); 410 raises Gone, any other status WatchFailed."""
        response = await self._client().get(
            self._server + path,
            params=params,
            headers=self._headers(),
            server_hostname=getattr(self._configuration, "tls_server_name", None),
        )
        if response.status == 410:
            response.release()
            raise Gone(path)
        if response.status != 200:
            text = (await response.text())[:300]
            response.release()
            raise WatchFailed(f"{response.status} {response.reason}: {text}")
        return response

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


Versions = dict[tuple[str, str | None], str]  # (kind, namespace or None) -> resourceVersion


def watch_tasks(
    watches: list[Watch],
    namespaces: tuple[str, ...],
    connection: Connection,
    versions: Versions | None = None,
) -> list[asyncio.Task[None]]:
    """One task per kind and namespace (one per kind when cluster-wide or cluster-scoped); each
    watches from its entry in `versions`, where there is one, without listing first."""
    tasks = []
    for w in watches:
        cluster_wide = w.kind in CLUSTER_SCOPED or not namespaces
        for namespace in (None,) if cluster_wide else namespaces:
            version = (versions or {}).get((w.kind, namespace), "")
            tasks.append(asyncio.create_task(stream(w, namespace, connection, version)))
    return tasks


async def stream(
    watch: Watch, namespace: str | None, connection: Connection, version: str = ""
) -> None:
    """Hand every event of one stream to its handler, until cancelled; with `version`, watch
    from it first (the handler has that list already), else list first.

    A handler's failure is logged and the stream goes on: one odd object must not stop the
    operator's view of the rest. The watch has no deadline, the operator needs it for as long as
    it runs: a failed stream opens again, later each time it fails in a row."""
    path = collection_path(watch.kind, namespace)
    selector = {"labelSelector": watch.label_selector} if watch.label_selector else {}
    where = f"in {namespace}" if namespace else "cluster-wide"
    delay = RETRY_SECONDS
    while True:
        try:
            if not version:
                version = await _list(watch, connection, path, selector)
                delay = RETRY_SECONDS  # it works: the next failure starts over
            while True:
                began = time.monotonic()
                try:
                    version = await _watch(watch, connection, path, selector, version)
                except Gone:
                    version = ""
                    break  # list again, at once
                if time.monotonic() - began < QUICK_END_PAUSE_SECONDS:
                    await asyncio.sleep(QUICK_END_PAUSE_SECONDS)  # not a busy loop
        except Exception:
            version = ""
            log.exception(
                "the %s watch %s failed; opening it again in %g s", watch.kind, where, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)


async def _list(watch: Watch, connection: Connection, path: str, selector: dict[str, str]) -> str:
    """Every object, paged, to the handler as listed; the list's resourceVersion."""
    token = ""
    while True:
        params = {**selector, "limit": str(LIST_PAGE), **({"continue": token} if token else {})}
        response = await connection.get(path, params)
        async with response:
            page = orjson.loads(await response.read())
        for body in page.get("items") or []:
            _handle(watch, {"type": None, "object": listed_item(watch.kind, body)})
        meta = page.get("metadata") or {}
        token = meta.get("continue") or ""
        if not token:
            return str(meta.get("resourceVersion") or "")


async def _watch(
    watch: Watch, connection: Connection, path: str, selector: dict[str, str], version: str
) -> str:
    """One watch request, from `version` until the server ends it; the last version seen."""
    params = {
        **selector,
        "watch": "true",
        "resourceVersion": version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": str(SERVER_TIMEOUT_SECONDS),
    }
    response = await connection.get(path, params)
    async with response:
        rest = b""
        async for chunk in response.content.iter_any():
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    version = _event(watch, orjson.loads(line), version)
    return version


def _event(watch: Watch, event: Event, version: str) -> str:
    """Hand one watch event to the handler; the resourceVersion to go on from."""
    kind, body = event.get("type"), event.get("object") or {}
    if kind == "ERROR":
        if body.get("code") == 410:
            raise Gone(body.get("message", ""))
        raise WatchFailed(f"{body.get('code')} {body.get('reason')}: {body.get('message')}")
    version = str((body.get("metadata") or {}).get("resourceVersion") or version)
    if kind != "BOOKMARK":
        _handle(watch, event)
    return version


def _handle(watch: Watch, event: Event) -> None:
    try:
        watch.handler(event)
    except Exception:
        meta = (event.get("object") or {}).get("metadata") or {}
        log.exception(
            "%s %s/%s: the %s event was not handled",
            watch.kind,
            meta.get("namespace", ""),
            meta.get("name", "?"),
            event.get("type") or "listed",
        )
