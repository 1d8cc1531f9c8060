"""The watch streams, against a scripted API server on loopback (real HTTP, aiohttp.web): a
paged list, then a watch from its resourceVersion; every event handed to its handler in order;
a handler's failure logged without ending the stream; 410 Gone lists again; a refusal is logged
and the stream opened again, later each time. The real API server's side is in tests/e2e."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from glowplug_operator.controller import watches
from glowplug_operator.controller.watches import Connection, Event, Watch, watch_tasks
from kubernetes.client import Configuration

POD_PATH = "/api/v1/namespaces/ns/pods"


def _pod(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": version}}


class Server:
    """Answers lists and watches from a script: `lists` are the pages of each list in turn,
    `watches` the events (or an HTTP status) of each watch in turn; a watch past the script
    stays open without events. Every request is recorded."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists, self.watches = lists, watches
        self.requests: list[tuple[str, dict[str, str], str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append((request.path, query, request.headers.get("Authorization", "")))
        if query.get("watch") != "true":
            page = self.lists.pop(0) if self.lists else {"items": [], "metadata": {}}
            if isinstance(page, int):
                return web.json_response({"kind": "Status", "code": page}, status=page)
            return web.json_response(page)
        script = self.watches.pop(0) if self.watches else None
        if isinstance(script, int):
            return web.json_response({"kind": "Status", "code": script}, status=script)
        response = web.StreamResponse()
        await response.prepare(request)
        if script is None:
            await asyncio.Event().wait()
        body = b"".join(json.dumps(e).encode() + b"\n" for e in script)
        for i in range(0, len(body), 7):  # events split across chunks, as TLS records do
            await response.write(body[i : i + 7])
        return response


async def _serve(server: Server) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def _configuration(host: str, token: str = "") -> Configuration:
    configuration = Configuration(host=host)
    if token:
        configuration.api_key = {"authorization": token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
    return configuration


async def _run_until(
    server: Server,
    ws: list[Watch],
    namespaces: tuple[str, ...],
    done: Callable[[], bool],
    configure: Callable[[Configuration], None] = lambda c: None,
    versions: watches.Versions | None = None,
) -> None:
    runner, host = await _serve(server)
    configuration = _configuration(host, "t0")
    configure(configuration)
    connection = Connection(configuration)
    tasks = watch_tasks(ws, namespaces, connection, versions)
    try:
        for _ in range(300):
            if done():
                break
            await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await connection.close()
        await runner.cleanup()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watches, "RETRY_SECONDS", 0.01)
    monkeypatch.setattr(watches, "QUICK_END_PAUSE_SECONDS", 0.01)


def test_a_paged_list_then_the_watch_from_its_version_every_event_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lists = [
        {"items": [_pod("a", "3")], "metadata": {"continue": "next", "resourceVersion": "5"}},
        {"items": [_pod("b", "4")], "metadata": {"resourceVersion": "5"}},
    ]
    events = [
        {"type": "ADDED", "object": _pod("odd", "6")},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}},
        {"type": "MODIFIED", "object": _pod("a", "8")},
        {"type": "DELETED", "object": _pod("b", "9")},
    ]
    server = Server(lists, [events])
    seen: list[tuple[str | None, str, str]] = []

    def handler(event: Event) -> None:
        body = event["object"]
        seen.append((event["type"], body["metadata"]["name"], body.get("kind", "")))
        if body["metadata"]["name"] == "odd":
            raise KeyError("status")

    watch = Watch("Pod", handler, "app.kubernetes.io/managed-by=glowplug")
    with caplog.at_level(logging.ERROR):
        asyncio.run(_run_until(server, [watch], ("ns",), lambda: len(server.requests) >= 4))
    assert seen == [
        (None, "a", "Pod"),  # listed: list items carry no kind, the stream adds it
        (None, "b", "Pod"),
        ("ADDED", "odd", ""),
        ("MODIFIED", "a", ""),
        ("DELETED", "b", ""),
    ]
    assert "Pod ns/odd: the ADDED event was not handled" in caplog.text
    paths = [(path, q.get("continue"), q.get("resourceVersion")) for path, q, _ in server.requests]
    assert paths[:3] == [(POD_PATH, None, None), (POD_PATH, "next", None), (POD_PATH, None, "5")]
    watch_query = server.requests[2][1]
    assert watch_query["labelSelector"] == "app.kubernetes.io/managed-by=glowplug"
    assert watch_query["allowWatchBookmarks"] == "true"
    # the server ended the first watch: the next one goes on from the last version seen
    assert server.requests[3][1]["resourceVersion"] == "9"
    assert {auth for _, _, auth in server.requests} == {"Bearer t0"}


def test_one_stream_per_namespace_for_namespaced_kinds_one_for_cluster_scoped() -> None:
    server = Server([], [])
    ws = [Watch("Pod", lambda e: None), Watch("StorageClass", lambda e: None)]

    def listed() -> bool:
        return len({p for p, q, _ in server.requests if "watch" in q}) == 3

    asyncio.run(_run_until(server, ws, ("a", "b"), listed))
    assert sorted({p for p, _, _ in server.requests}) == [
        "/api/v1/namespaces/a/pods",
        "/api/v1/namespaces/b/pods",
        "/apis/storage.k8s.io/v1/storageclasses",
    ]
    server = Server([], [])
    pods = [Watch("Pod", lambda e: None)]
    asyncio.run(_run_until(server, pods, (), lambda: bool(server.requests)))
    assert server.requests[0][0] == "/api/v1/pods"  # cluster-wide


def test_a_stream_given_a_lists_version_watches_from_it_without_listing() -> None:
    """The operator's startup lists filled the store: the stream goes on from their version, so
    an object deleted since then arrives as DELETED (a second list would just lack it)."""
    events = [{"type": "DELETED", "object": _pod("a", "6")}]
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    lists = [{"items": [_pod("b", "9")], "metadata": {"resourceVersion": "9"}}]
    server = Server(lists, [[*events, gone]])
    seen: list[tuple[str | None, str]] = []
    watch = Watch("Pod", lambda e: seen.append((e["type"], e["object"]["metadata"]["name"])))
    asyncio.run(
        _run_until(server, [watch], ("ns",), lambda: len(seen) == 2, versions={("Pod", "ns"): "5"})
    )
    assert seen == [("DELETED", "a"), (None, "b")]  # after 410 Gone: a list, as always
    first = server.requests[0][1]
    assert (first.get("watch"), first.get("resourceVersion")) == ("true", "5")


def test_410_gone_lists_again_at_once() -> None:
    lists = [
        {"items": [_pod("a", "3")], "metadata": {"resourceVersion": "3"}},
        {"items": [_pod("a", "12")], "metadata": {"resourceVersion": "12"}},
        {"items": [_pod("a", "12")], "metadata": {"resourceVersion": "12"}},
    ]
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    server = Server(lists, [[gone], 410])
    seen: list[str] = []

    def handler(event: Event) -> None:
        seen.append(event["object"]["metadata"]["resourceVersion"])

    # the ERROR event, then 410 as the answer to a watch: each time, a list
    asyncio.run(_run_until(server, [Watch("Pod", handler)], ("ns",), lambda: len(seen) == 3))
    assert seen == ["3", "12", "12"]
    assert not server.lists  # three lists
    watches_at = [q.get("resourceVersion") for _, q, _ in server.requests if "watch" in q]
    assert watches_at[:3] == ["3", "12", "12"]


def test_a_refused_stream_is_logged_and_opened_again_later_each_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server([403, 403, {"items": [_pod("a", "3")], "metadata": {}}], [])
    seen: list[str] = []
    watch = Watch("Pod", lambda e: seen.append(e["object"]["metadata"]["name"]))
    with caplog.at_level(logging.ERROR):
        asyncio.run(_run_until(server, [watch], ("ns",), lambda: bool(seen)))
    assert seen == ["a"]
    assert "the Pod watch in ns failed; opening it again in 0.01 s" in caplog.text
    assert "the Pod watch in ns failed; opening it again in 0.02 s" in caplog.text
    assert "403" in caplog.text


def test_the_token_is_read_again_at_each_connection() -> None:
    """A rotated ServiceAccount token: the client's refresh hook runs before each request."""
    tokens = iter(["t1", "t2", "t3", "t4", "t5", "t6"])

    def refresh(configuration: Configuration) -> None:
        configuration.api_key["authorization"] = next(tokens)

    server = Server([], [[], []])
    asyncio.run(
        _run_until(
            server,
            [Watch("Pod", lambda e: None)],
            ("ns",),
            lambda: len(server.requests) >= 3,
            lambda c: setattr(c, "refresh_api_key_hook", refresh),
        )
    )
    assert [auth for _, _, auth in server.requests][:3] == ["Bearer t1", "Bearer t2", "Bearer t3"]
