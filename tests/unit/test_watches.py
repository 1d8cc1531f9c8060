"""The watch streams: one per kind and namespace, every event handed to its handler in order,
a handler's failure logged without ending the stream, child kinds filtered by the API server.

kopf's stream is replaced here by a scripted one (the API server's side is in tests/e2e)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from glowplug_operator.contract import GROUP, PLURAL, VERSION
from glowplug_operator.controller import watches
from glowplug_operator.controller.watches import Watch, watch_tasks
from kopf._cogs.clients.watching import Bookmark
from kopf._cogs.structs.references import Resource

PODS = Resource("", "v1", "pods", kind="Pod", namespaced=True)
MODELSERVERS = Resource(GROUP, VERSION, PLURAL, kind="ModelServer", namespaced=True)
CLASSES = Resource("storage.k8s.io", "v1", "storageclasses", kind="StorageClass")


def _event(type_: str | None, name: str) -> dict[str, Any]:
    return {"type": type_, "object": {"metadata": {"namespace": "ns", "name": name}}}


class Streams:
    """Stands in for kopf's `infinite_watch`: each stream yields `script`, then waits."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.opened: list[tuple[str | None, str | None]] = []
        self.closed: list[tuple[str | None, str | None]] = []

    def __call__(
        self, *, settings: kopf.OperatorSettings, resource: Resource, namespace: str | None
    ) -> AsyncIterator[Any]:
        return self._stream(resource, namespace)

    async def _stream(self, resource: Resource, namespace: str | None) -> AsyncIterator[Any]:
        where = (resource.kind, namespace)
        self.opened.append(where)
        try:
            for event in self.script:
                yield event
            await asyncio.Event().wait()
        finally:
            self.closed.append(where)


async def _run(streams: Streams, ws: list[Watch], namespaces: tuple[str, ...]) -> None:
    tasks = watch_tasks(ws, namespaces, kopf.OperatorSettings())
    for _ in range(10):
        await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_one_stream_per_namespace_for_namespaced_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    streams = Streams([])
    monkeypatch.setattr(watches, "infinite_watch", streams)
    ws = [Watch(PODS, lambda e: None), Watch(CLASSES, lambda e: None)]
    asyncio.run(_run(streams, ws, ("a", "b")))
    assert sorted(streams.opened, key=str) == [("Pod", "a"), ("Pod", "b"), ("StorageClass", None)]
    assert sorted(streams.closed, key=str) == sorted(streams.opened, key=str)
    streams.opened.clear()
    asyncio.run(_run(streams, [Watch(PODS, lambda e: None)], ()))
    assert streams.opened == [("Pod", None)]  # cluster-wide


def test_events_reach_the_handler_in_order_and_a_failure_is_only_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    script = [
        _event(None, "listed"),
        Bookmark.LISTED,
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}},
        _event("ADDED", "odd"),
        _event("MODIFIED", "listed"),
        _event("DELETED", "listed"),
    ]
    streams = Streams(script)
    monkeypatch.setattr(watches, "infinite_watch", streams)
    seen: list[tuple[str | None, str]] = []

    def handler(event: kopf.RawEvent) -> None:
        name = event["object"]["metadata"]["name"]
        seen.append((event["type"], name))
        if name == "odd":
            raise KeyError("status")

    with caplog.at_level(logging.ERROR):
        asyncio.run(_run(streams, [Watch(PODS, handler)], ("ns",)))
    assert seen == [
        (None, "listed"),
        ("ADDED", "odd"),
        ("MODIFIED", "listed"),
        ("DELETED", "listed"),
    ]
    assert "Pod ns/odd: the ADDED event was not handled" in caplog.text


def test_the_server_filters_the_kinds_given_a_selector() -> None:
    settings = kopf.OperatorSettings()

    async def start() -> None:
        ws = [Watch(PODS, lambda e: None, "app.kubernetes.io/managed-by=glowplug")]
        ws.append(Watch(MODELSERVERS, lambda e: None))
        for task in watch_tasks(ws, ("ns",), settings):
            task.cancel()

    asyncio.run(start())
    # What kopf's watch request puts in its labelSelector parameter.
    assert list(settings.watching.label_selectors.collect(PODS)) == [
        "app.kubernetes.io/managed-by=glowplug"
    ]
    assert list(settings.watching.label_selectors.collect(MODELSERVERS)) == []


def test_a_failed_stream_is_logged_and_opened_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """kopf gives up on a refusal (403) or an ERROR event other than 410 Gone: the stream is
    opened again, later after each failure in a row, and what it lists then reaches the
    handler."""
    opened: list[str | None] = []

    async def flaky(
        *, settings: kopf.OperatorSettings, resource: Resource, namespace: str | None
    ) -> AsyncIterator[Any]:
        opened.append(namespace)
        if len(opened) <= 2:
            raise RuntimeError("Error in the watch-stream: 403 Forbidden")
        yield _event(None, "listed")
        await asyncio.Event().wait()

    monkeypatch.setattr(watches, "infinite_watch", flaky)
    seen: list[str] = []

    async def run() -> None:
        watch = Watch(PODS, lambda e: seen.append(e["object"]["metadata"]["name"]))
        task = asyncio.create_task(
            watches.stream(watch, "ns", kopf.OperatorSettings(), retry_seconds=0.01)
        )
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.ERROR):
        asyncio.run(run())
    assert opened == ["ns", "ns", "ns"]
    assert seen == ["listed"]
    assert "the Pod watch in ns failed; opening it again in 0.01 s" in caplog.text
    assert "the Pod watch in ns failed; opening it again in 0.02 s" in caplog.text
