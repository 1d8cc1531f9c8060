"""The operator reads a Ready worker's /startup once, in the background, with a short timeout:
against a real HTTP server on 127.0.0.1 (aiohttp's), answering, hanging or talking nonsense."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import pytest
from aiohttp import web
from glowplug_operator.controller.startup_reports import StartupReports, worker_phases

KEY = ("ml", "llama")
STARTUP = {
    "ready": True,
    "phases": {"import": 3.21234, "config": 0.01, "load": 0.5, "warmup": 0.25, "serve": 1.0},
    "time_to_ready_seconds": 4.1,
}


class Recorder:
    def __init__(self) -> None:
        self.requeued: list[tuple[str, str]] = []
        self.observed: list[dict[str, float]] = []
        self.changed = asyncio.Event()

    def requeue(self, key: tuple[str, str]) -> None:
        self.requeued.append(key)
        self.changed.set()

    def observe(self, phases: Mapping[str, float]) -> None:
        self.observed.append(dict(phases))


async def serve(handler: web.RequestHandler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/startup", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/startup"


def test_reads_once_and_asks_for_a_reconcile() -> None:
    async def run() -> None:
        calls = 0

        async def startup(_: web.Request) -> web.Response:
            nonlocal calls
            calls += 1
            return web.json_response(STARTUP)

        runner, url = await serve(startup)
        seen = Recorder()
        reports = StartupReports(seen.requeue, seen.observe)
        assert reports.phases("pod-1") is None
        reports.request(KEY, "pod-1", url, download=41.0)
        reports.request(KEY, "pod-1", url, download=41.0)  # in flight: not read twice
        await asyncio.wait_for(seen.changed.wait(), 5)
        reports.request(KEY, "pod-1", url, download=41.0)  # read: not again
        await asyncio.sleep(0.1)
        await runner.cleanup()
        assert calls == 1
        assert reports.phases("pod-1") == {
            "import": 3.212,
            "config": 0.01,
            "load": 0.5,
            "warmup": 0.25,
        }
        assert seen.requeued == [KEY]
        assert seen.observed == [{"download": 41.0, **(reports.phases("pod-1") or {})}]

    asyncio.run(run())


@pytest.mark.parametrize("answer", ["hangs", "500", "not json", "no phases"])
def test_a_worker_that_does_not_answer_well_leaves_no_phases(answer: str) -> None:
    async def run() -> None:
        async def startup(_: web.Request) -> web.Response:
            if answer == "hangs":
                await asyncio.sleep(2)
            if answer == "500":
                return web.Response(status=500)
            body = "{" if answer == "not json" else json.dumps({"ready": True})
            return web.Response(text=body, content_type="application/json")

        runner, url = await serve(startup)
        seen = Recorder()
        reports = StartupReports(seen.requeue, seen.observe, timeout_seconds=0.5)
        started = asyncio.get_running_loop().time()
        reports.request(KEY, "pod-1", url)
        await asyncio.wait_for(seen.changed.wait(), 5)
        assert asyncio.get_running_loop().time() - started < 2
        await reports.close()
        await runner.cleanup()
        assert reports.phases("pod-1") == {}
        assert seen.observed == []
        assert seen.requeued == [KEY]

    asyncio.run(run())


def test_only_numeric_worker_phases_are_taken() -> None:
    got = worker_phases({"phases": {"import": 1, "load": "fast", "warmup": True, "x": 2.0}})
    assert got == {"import": 1.0}
    with pytest.raises(ValueError):
        worker_phases(["not", "a", "dict"])


def test_an_engines_phases_come_from_its_log_once() -> None:
    """vLLM writes no /startup: its own log lines (read through the API) give its phases."""
    from pathlib import Path

    log = (Path(__file__).parents[1] / "data" / "engine-logs" / "vllm-startup.txt").read_text()

    async def run() -> None:
        reads = 0

        async def read_log() -> str:
            nonlocal reads
            reads += 1
            return log

        seen = Recorder()
        reports = StartupReports(seen.requeue, seen.observe)
        reports.request_log(KEY, "pod-1", "vllm", read_log, download=12.0)
        reports.request_log(KEY, "pod-1", "vllm", read_log, download=12.0)
        await asyncio.wait_for(seen.changed.wait(), 5)
        reports.request_log(KEY, "pod-1", "vllm", read_log, download=12.0)
        assert reads == 1
        assert reports.phases("pod-1") == {
            "load": 5.384,
            "compile": 21.13,
            "graphCapture": 8.0,
            "engineInit": 39.86,
        }
        assert seen.observed == [{"download": 12.0, **(reports.phases("pod-1") or {})}]

    asyncio.run(run())
