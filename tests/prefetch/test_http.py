"""The https/http source against a real nginx: manifests, single files, resume, shared cache."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path

from tests.prefetch.conftest import (
    assert_nothing_published,
    assert_published,
    make_model,
    prefetch_cmd,
    run_prefetch,
)
from tests.prefetch.servers import FaultProxy, Faults, Nginx, env_without_proxy

MB = 1024 * 1024


def test_manifest_download_publishes_verified_files_and_report(
    nginx: Nginx, nginx_root: Path, tmp_path: Path
) -> None:
    model = make_model(
        nginx_root,
        "basic",
        {"model-1.safetensors": 3 * MB + 7, "sub/config.json": 300, "empty.txt": 0},
    )
    dest = tmp_path / "models" / "basic"
    res = run_prefetch(
        ["--source", model.manifest_url(nginx.url), "--dest", str(dest), "--chunk-mib", "1"],
        tmp_path,
    )
    assert res.rc == 0, res.stderr
    record = assert_published(dest, model)
    assert record["resolved_revision"] == "r0"
    report = res.report
    assert report is not None and report["outcome"] == "succeeded"
    assert report["download"]["reused"] is False  # type: ignore[index]
    assert report["download"]["files"] == 3  # type: ignore[index]
    assert report["download"]["bytes"] == model.total  # type: ignore[index]
    assert "download" in report["phases"]  # type: ignore[operator]
    assert "glowplug_prefetch_fetched_bytes" in res.stdout
    # Nothing left beside the destination.
    assert sorted(p.name for p in dest.parent.iterdir()) == ["basic", "basic.glowplug-lock"]
    # Large file fetched in ranges: several requests for it.
    ranged = [r for r in nginx.access_log() if r[0].endswith("basic/model-1.safetensors")]
    assert len(ranged) >= 4


def test_completed_cache_is_reused_without_any_request(
    nginx: Nginx, nginx_root: Path, tmp_path: Path
) -> None:
    model = make_model(nginx_root, "reuse", {"w.safetensors": 2 * MB}, seed=1)
    dest = tmp_path / "reuse"
    args = ["--source", model.manifest_url(nginx.url), "--dest", str(dest)]
    assert run_prefetch(args, tmp_path).rc == 0
    before = len(nginx.access_log())
    res = run_prefetch(args, tmp_path, env={"GLOWPLUG_OPTIMIZATIONS": "prefetch-page-cache"})
    assert res.rc == 0, res.stderr
    assert len(nginx.access_log()) == before, "a reused cache made requests"
    assert res.report is not None
    assert res.report["download"]["reused"] is True  # type: ignore[index]
    assert res.report["optimizations"] == ["prefetch-page-cache"]
    assert "page cache warmed" in res.stderr
    # A different revision label is a different cache: it downloads again and replaces it.
    res = run_prefetch([*args, "--revision", "v2"], tmp_path)
    assert res.rc == 0, res.stderr
    assert res.report["download"]["reused"] is False  # type: ignore[index]
    assert json.loads((dest / ".glowplug-complete.json").read_text())["key"]["revision"] == "v2"


def test_single_file_url_without_manifest(nginx: Nginx, nginx_root: Path, tmp_path: Path) -> None:
    model = make_model(nginx_root, "single", {"model.safetensors": MB + 3}, seed=2)
    dest = tmp_path / "single"
    url = f"{nginx.url}/single/model.safetensors"
    res = run_prefetch(["--source", url, "--dest", str(dest)], tmp_path)
    assert res.rc == 0, res.stderr
    assert (dest / "model.safetensors").read_bytes() == model.files["model.safetensors"]


def test_include_globs_select_files(nginx: Nginx, nginx_root: Path, tmp_path: Path) -> None:
    model = make_model(nginx_root, "incl", {"a.safetensors": 1000, "b.bin": 1000}, seed=3)
    dest = tmp_path / "incl"
    src = model.manifest_url(nginx.url)
    res = run_prefetch(
        ["--source", src, "--dest", str(dest), "--include", "*.safetensors"], tmp_path
    )
    assert res.rc == 0, res.stderr
    assert sorted(p.name for p in dest.iterdir()) == [".glowplug-complete.json", "a.safetensors"]
    res = run_prefetch(
        ["--source", src, "--dest", str(tmp_path / "x"), "--include", "*.gguf"], tmp_path
    )
    assert res.rc == 4 and "matches none" in res.stderr


def test_sigkill_mid_download_then_rerun_resumes(tmp_path: Path) -> None:
    """Kill -9 while every connection is mid-body (a proxy stalls them); the rerun continues the
    partial files. Prints how many bytes were fetched twice."""
    root = tmp_path / "www"
    root.mkdir()
    model = make_model(root, "big", {"a.safetensors": 6 * MB, "b.safetensors": 6 * MB}, seed=4)
    server = Nginx(root, tmp_path / "run")
    # The manifest's connection plus 4 range connections: each stalls after 2.5 MiB.
    proxy = FaultProxy(server.port, Faults(stall_after=5 * MB // 2, stall_times=5))
    try:
        dest = tmp_path / "dest"
        src = f"{proxy.url}/big/manifest.json"
        args = ["--source", src, "--dest", str(dest), "--chunk-mib", "1", "--concurrency", "4"]
        proc = subprocess.Popen(
            prefetch_cmd(args), env=env_without_proxy(), stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while _staged(dest) < 8 * MB or proxy.stalled < 4:
            assert time.monotonic() < deadline, "the first run did not reach the stall"
            assert proc.poll() is None, "the first run ended before it was killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_nothing_published(dest)
        assert (tmp_path / "dest.glowplug-lock").exists(), "the killed run left no lock file"
        first_run = proxy.forwarded_body_bytes()
        res = run_prefetch(args, tmp_path)
        assert res.rc == 0, res.stderr
        assert_published(dest, model)
        assert "resuming" in res.stderr
        assert "waiting for another prefetcher" not in res.stderr  # the dead run's lock is free
        assert res.report is not None
        second_run = res.report["download"]["bytes"]
        refetched = first_run + second_run - model.total  # type: ignore[operator]
        print(f"\nSIGKILL resume: {refetched} of {model.total} bytes fetched twice")
        assert second_run <= model.total - 8 * MB
        # At most the unsaved tail of each in-flight range is fetched again.
        assert refetched <= 4 * MB
    finally:
        proxy.stop()
        server.stop()


def test_sigterm_writes_a_failed_report_and_exits_at_once(tmp_path: Path) -> None:
    """Kubernetes stops an init container with SIGTERM: even with every connection stalled the
    prefetcher reports and exits within a second, and a rerun resumes."""
    root = tmp_path / "www"
    root.mkdir()
    model = make_model(root, "term", {"a.safetensors": 4 * MB}, seed=6)
    server = Nginx(root, tmp_path / "run")
    proxy = FaultProxy(server.port, Faults(stall_after=3 * MB // 2, stall_times=3))
    try:
        dest = tmp_path / "dest"
        report_path = tmp_path / "term.json"
        args = ["--source", f"{proxy.url}/term/manifest.json", "--dest", str(dest)]
        args += ["--chunk-mib", "1", "--concurrency", "2"]
        env = {**env_without_proxy(), "GLOWPLUG_TERMINATION_PATH": str(report_path)}
        proc = subprocess.Popen(prefetch_cmd(args), env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while proxy.stalled < 2:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 143
        assert time.monotonic() - sent < 2.0, "SIGTERM waited for the stalled connections"
        assert "terminated by SIGTERM" in err
        body = json.loads(report_path.read_text())
        assert body["outcome"] == "failed" and body["error"]["type"] == "TerminatedError"
        assert_nothing_published(dest)
        res = run_prefetch(args, tmp_path)
        assert res.rc == 0, res.stderr
        assert_published(dest, model)
    finally:
        proxy.stop()
        server.stop()


def _staged(dest: Path) -> int:
    staging = dest.parent / (dest.name + ".glowplug-staging")
    total = 0
    for p in staging.glob(".glowplug-parts/*.json"):
        with contextlib.suppress(ValueError, OSError):
            total += sum(json.loads(p.read_text())["done"].values())
    return total


def test_four_concurrent_prefetchers_download_once(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    model = make_model(root, "shared", {"a.safetensors": 3 * MB, "b.safetensors": MB}, seed=5)
    server = Nginx(root, tmp_path / "run", rate="8m")
    try:
        dest = tmp_path / "pvc" / "shared"
        args = ["--source", f"{server.url}/slow/shared/manifest.json", "--dest", str(dest)]
        procs = []
        for i in range(4):
            rp = tmp_path / f"r{i}.json"
            env = {**env_without_proxy(), "GLOWPLUG_TERMINATION_PATH": str(rp)}
            procs.append(
                (subprocess.Popen(prefetch_cmd(args), env=env, stderr=subprocess.PIPE), rp)
            )
        reused = []
        for p, rp in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()
            reused.append(json.loads(rp.read_text())["download"]["reused"])
        assert sorted(reused) == [False, True, True, True]
        assert_published(dest, model)
        payload = [r for r in server.access_log() if not r[0].endswith("manifest.json")]
        assert sum(r[2] for r in payload) == model.total, "bytes were downloaded more than once"
        assert sum(1 for r in server.access_log() if r[0].endswith("manifest.json")) == 1
    finally:
        server.stop()
