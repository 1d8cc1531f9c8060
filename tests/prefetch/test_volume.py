"""Volumes as a pod has them: a destination that is itself a mount point, a volume too small,
and what the pod log and metrics show. Mounting a tmpfs needs root with CAP_SYS_ADMIN; those
tests skip (saying so) where the machine does not allow it, and fail under CI=true."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ci import cannot_run
from tests.prefetch.conftest import (
    assert_nothing_published,
    assert_published,
    make_model,
    run_prefetch,
)
from tests.prefetch.servers import Nginx

MB = 1024 * 1024


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "vol"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "glowplug-test", str(mnt)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        cannot_run(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_volume_too_small_fails_before_downloading(
    nginx: Nginx, nginx_root: Path, tmp_path: Path, small_volume: Path
) -> None:
    model = make_model(
        nginx_root, "toobig", {"a.safetensors": 3 * MB, "b.safetensors": 3 * MB}, seed=30
    )
    dest = small_volume / "model"
    res = run_prefetch(["--source", model.manifest_url(nginx.url), "--dest", str(dest)], tmp_path)
    assert res.rc == 5, res.stderr
    assert "needs 6.0 MiB more but the volume has" in res.stderr
    assert not any("/toobig/" in r[0] and "safetensors" in r[0] for r in nginx.access_log())
    assert_nothing_published(dest)


def test_dest_that_is_a_mount_point_is_published_in_place(
    nginx: Nginx, nginx_root: Path, tmp_path: Path, small_volume: Path
) -> None:
    model = make_model(
        nginx_root, "mountdest", {"a.safetensors": MB, "c/config.json": 100}, seed=31
    )
    args = ["--source", model.manifest_url(nginx.url), "--dest", str(small_volume)]
    res = run_prefetch(args, tmp_path)
    assert res.rc == 0, res.stderr
    assert_published(small_volume, model)
    assert not (small_volume / ".glowplug-staging").exists()
    res = run_prefetch(args, tmp_path)
    assert res.rc == 0 and res.report["download"]["reused"] is True  # type: ignore[index]


def test_progress_lines_and_metrics_file(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    model = make_model(root, "p", {"a.safetensors": 2 * MB}, seed=32)
    server = Nginx(root, tmp_path / "run", rate="1m")
    try:
        metrics = tmp_path / "metrics.prom"
        args = [
            "--source",
            f"{server.url}/slow/p/manifest.json",
            "--dest",
            str(tmp_path / "d"),
            "--chunk-mib",
            "2",
            "--concurrency",
            "1",
            "--progress-interval",
            "0.3",
            "--metrics-file",
            str(metrics),
        ]
        res = run_prefetch(args, tmp_path)
        assert res.rc == 0, res.stderr
        lines = [
            ln for ln in res.stderr.splitlines() if " files" in ln and "/s" in ln and "%" in ln
        ]
        assert len(lines) >= 2, res.stderr
        pattern = (
            r"prefetch: [\d.]+ [KMG]?i?B / 2\.0 MiB \([\d.]+%\), "
            r"[\d.]+ [KMG]?i?B/s(, ETA \d+s)?, \d/1 files$"
        )
        assert all(re.search(pattern, ln) for ln in lines), lines
        text = metrics.read_text()
        assert "glowplug_prefetch_success 1" in text
        assert f"glowplug_prefetch_fetched_bytes {model.total}" in text
    finally:
        server.stop()


def test_server_without_range_support_gets_one_stream(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    model = make_model(root, "nr", {"w.safetensors": 3 * MB}, seed=33)
    server = Nginx(
        root, tmp_path / "run", locations=f"location /norange/ {{ alias {root}/; max_ranges 0; }}"
    )
    try:
        dest = tmp_path / "d"
        url = f"{server.url}/norange/nr/w.safetensors"
        res = run_prefetch(["--source", url, "--dest", str(dest), "--chunk-mib", "1"], tmp_path)
        assert res.rc == 0, res.stderr
        assert (dest / "w.safetensors").read_bytes() == model.files["w.safetensors"]
        gets = [r for r in server.access_log() if r[0].endswith("w.safetensors")]
        assert [r[1] for r in gets] == [200, 200], gets  # the probe, then one full stream
    finally:
        server.stop()
