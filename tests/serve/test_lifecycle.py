"""Start, fail, overload and stop: the process-level behaviour the operator and the kubelet see."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from glowplug_operator.rollback.reports import parse_report

from tests.serve.servers import Server
from tests.serve.test_flags_outputs import outputs

pytestmark = pytest.mark.worker


def corrupt_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\x00garbage, not a JSON header...."[:32]
    weights.write_bytes(bytes(data))
    return dst


def test_corrupt_weights_fail_the_load_phase_with_a_report(
    tiny_model: Path, tmp_path: Path
) -> None:
    model = corrupt_copy(tiny_model, tmp_path / "model")
    server = Server(model, tmp_path, flags="fast-load,hf-offline")
    try:
        assert server.wait_exit() == 1
    finally:
        server.stop()
    raw = server.report_path.read_text()
    report = parse_report(raw)  # the operator reads exactly this
    assert report is not None and report.failed, raw
    assert report.command == "serve" and report.phase == "load"
    assert list(report.optimizations) == ["hf-offline", "fast-load"]
    assert report.flag is None  # corrupt weights are no flag's fault
    assert set(report.phases) == {"import", "config"}
    assert report.error is not None and "re-download" in report.error.message
    assert "startup failed in phase load" in server.log()


def test_bad_arguments_exit_2_before_importing_torch(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "glowplug_worker.cli",
            "serve",
            "--model",
            str(tmp_path / "missing"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"GLOWPLUG_TERMINATION_PATH": str(report_path), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "no such directory" in proc.stdout
    assert "| torch\n" not in proc.stderr and "transformers" not in proc.stderr
    report = parse_report(report_path.read_text())
    assert report is not None and report.failed and report.phase is None


@pytest.fixture(scope="module")
def narrow(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One request at a time, no queue, a long drain; `background-import` alone."""
    server = Server(
        tiny_model,
        tmp_path_factory.mktemp("narrow"),
        flags="background-import",
        extra=["--max-concurrency", "1", "--max-queue", "0", "--drain-seconds", "60"],
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()  # normally already stopped by the drain test


LONG = {"prompt": "Hello", "max_tokens": 1000, "temperature": 0, "ignore_eos": True}


def test_background_import_alone_gives_the_outputs_of_no_flags(
    narrow: Server, baseline: Server
) -> None:
    startup = narrow.client.get("/startup").json()
    assert startup["optimizations"] == ["background-import"]
    assert startup["details"]["background_import_seconds"] > 0
    assert outputs(narrow) == outputs(baseline)


def test_overload_answers_429_and_recovers(narrow: Server) -> None:
    events = narrow.stream("/v1/completions", LONG)
    first = next(events)  # the long request now holds the only slot
    assert isinstance(first, dict)
    r = narrow.client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    assert r.status_code == 429, r.text
    assert r.json()["error"]["type"] == "rate_limit_error"
    rest = list(events)
    assert rest[-1] == "[DONE]"
    assert narrow.complete("hi", max_tokens=2)["usage"]["completion_tokens"] == 2


def test_sigterm_turns_readiness_off_and_drains(narrow: Server) -> None:
    """Runs last in this module: it stops the server."""
    tokens: list[str] = []
    finish: list[str | None] = []
    first_token = threading.Event()

    def long_request() -> None:
        with (
            httpx.Client(base_url=narrow.url, timeout=120) as c,
            c.stream(
                "POST",
                "/v1/completions",
                json={**LONG, "stream": True, "stream_options": {"include_usage": True}},
            ) as r,
        ):
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    ev = json.loads(line[6:])
                    if ev["choices"]:
                        tokens.append(ev["choices"][0]["text"])
                        finish.append(ev["choices"][0]["finish_reason"])
                        first_token.set()
                    else:
                        finish.append(f"usage:{ev['usage']['completion_tokens']}")

    t = threading.Thread(target=long_request)
    t.start()
    assert first_token.wait(60)
    narrow.terminate()
    deadline = time.monotonic() + 10
    while narrow.client.get("/ready").status_code != 503:
        assert time.monotonic() < deadline, "readiness still on after SIGTERM"
        time.sleep(0.02)
    r = narrow.client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    assert r.status_code == 503 and "shutting down" in r.json()["error"]["message"]
    assert narrow.client.get("/health").status_code == 200
    t.join(120)
    assert finish[-2:] == ["length", "usage:1000"]  # the in-flight request finished in full
    assert narrow.wait_exit(60) == 0
    report = parse_report(narrow.report_path.read_text())
    assert report is not None and report.outcome == "succeeded"
    assert set(report.phases) == {"import", "config", "load", "warmup"}
    narrow.stop()


def test_a_held_ready_answers_the_moment_the_model_is_ready(
    tiny_model: Path, tmp_path: Path
) -> None:
    """The startup probe's `/ready?wait=`: a not-ready answer is held, not given at once."""
    server = Server(tiny_model, tmp_path)
    try:
        not_yet = None
        while not_yet is None:
            if server.proc.poll() is not None:
                raise AssertionError(server.log())
            try:
                response = server.client.get("/ready", timeout=2.0)
                not_yet = response if response.status_code == 503 else None
            except httpx.TransportError:
                time.sleep(0.02)
        held = server.client.get("/ready", params={"wait": "10"}, timeout=15.0)
        assert held.status_code == 200 and held.json()["ready"] is True
        assert server.client.get("/startup").json()["ready"] is True
        # Ready: answered at once; a bad wait names the parameter.
        began = time.monotonic()
        assert server.client.get("/ready", params={"wait": "5"}).status_code == 200
        assert time.monotonic() - began < 1.0
        for bad in ("soon", "-1", "11", "nan"):
            refused = server.client.get("/ready", params={"wait": bad})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "wait"
    finally:
        server.stop()
