"""`overlap-download`: `serve --download` fetches the model itself while it imports torch, and
fails phase `download` with the prefetcher's own error."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from glowplug_operator.rollback.reports import parse_report

from tests.serve.servers import Server

pytestmark = pytest.mark.worker


def download_args(source: str, dest: Path) -> list[str]:
    return ["--download", shlex.join(["--source", source, "--dest", str(dest)])]


def test_the_worker_downloads_the_model_then_serves_it(tiny_model: Path, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "model"
    server = Server(
        dest,
        tmp_path / "run",
        flags="overlap-download,native-model,hf-offline",
        extra=download_args(f"file://{tiny_model}", dest),
    )
    try:
        server.wait_ready()
        startup = server.client.get("/startup").json()
        answer = server.complete("Hello", max_tokens=4)
    finally:
        server.stop()
    assert answer["choices"][0]["text"]
    # The download ran beside the import phase, and is timed on its own.
    assert list(startup["phases"])[:2] == ["download", "import"]
    assert startup["details"]["download"]["files"] >= 3
    assert startup["details"]["native_model"]["used"] is True
    # Published as the prefetcher publishes: the files, and its completion record.
    assert (dest / "config.json").is_file() and (dest / "model.safetensors").is_file()
    assert not any(p.name.startswith(".glowplug-staging") for p in dest.parent.iterdir())


def test_a_missing_source_fails_phase_download_with_the_prefetchers_error(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "cache" / "model"
    server = Server(
        dest,
        tmp_path / "run",
        flags="overlap-download",
        extra=download_args(f"file://{tmp_path / 'nowhere'}", dest),
    )
    try:
        assert server.wait_exit() == 1
    finally:
        server.stop()
    report = parse_report(server.report_path.read_text())  # what the operator reads
    assert report is not None and report.failed
    assert report.phase == "download" and report.flag is None
    assert report.error is not None and report.error.type == "NotFoundError"
    assert "download" not in report.phases and not (dest / "config.json").exists()


def test_a_download_that_publishes_elsewhere_is_refused_before_any_import(
    tiny_model: Path, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable, "-X", "importtime", "-m", "glowplug_worker.cli", "serve",
            "--model", str(tmp_path / "model"),
            *download_args(f"file://{tiny_model}", tmp_path / "elsewhere"),
        ],
        capture_output=True, text=True, timeout=60,
        env={"GLOWPLUG_TERMINATION_PATH": str(report_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout
    assert f"--download publishes to {tmp_path / 'elsewhere'}" in proc.stdout
    assert "| torch\n" not in proc.stderr
    report = parse_report(report_path.read_text())
    assert report is not None and report.failed and report.phase is None
