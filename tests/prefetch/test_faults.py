"""Real faults between the prefetcher and nginx. Whatever happens, nothing corrupt is published."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.prefetch.conftest import (
    MANIFEST_SCHEMA,
    Model,
    assert_nothing_published,
    assert_published,
    make_model,
    run_prefetch,
)
from tests.prefetch.servers import FaultProxy, Faults, Nginx

MB = 1024 * 1024


@pytest.fixture(scope="module")
def model(nginx_root: Path) -> Model:
    return make_model(nginx_root, "faults", {"a.safetensors": 3 * MB, "b.json": 500}, seed=10)


@pytest.fixture
def proxy(nginx: Nginx) -> Iterator[FaultProxy]:
    p = FaultProxy(nginx.port, Faults())
    yield p
    p.stop()


def _args(url: str, dest: Path, *extra: str) -> list[str]:
    return ["--source", url, "--dest", str(dest), "--chunk-mib", "1", "--concurrency", "2", *extra]


def test_5xx_then_recovery_retries_and_succeeds(
    proxy: FaultProxy, model: Model, tmp_path: Path
) -> None:
    proxy.faults.status_503 = 3
    res = run_prefetch(_args(model.manifest_url(proxy.url), tmp_path / "d"), tmp_path)
    assert res.rc == 0, res.stderr
    assert "HTTP 503" in res.stderr and "retrying" in res.stderr
    assert_published(tmp_path / "d", model)


def test_persistent_5xx_fails_clearly_after_retries(nginx: Nginx, tmp_path: Path) -> None:
    res = run_prefetch(_args(f"{nginx.url}/status/503", tmp_path / "d", "--retries", "2"), tmp_path)
    assert res.rc == 10
    assert "HTTP 503" in res.stderr and "gave up after 2 attempts" in res.stderr
    assert res.stderr.count("error:") == 1
    assert res.report is not None and res.report["outcome"] == "failed"
    assert res.report["phase"] == "download"
    assert_nothing_published(tmp_path / "d")


@pytest.mark.parametrize("fault", ["cut", "truncate"])
def test_connection_cut_or_truncated_mid_body_is_resumed(
    fault: str, proxy: FaultProxy, model: Model, tmp_path: Path
) -> None:
    setattr(proxy.faults, f"{fault}_after", MB + MB // 2)
    setattr(proxy.faults, f"{fault}_times", 3)
    res = run_prefetch(_args(model.manifest_url(proxy.url), tmp_path / "d"), tmp_path)
    assert res.rc == 0, res.stderr
    assert "retrying a.safetensors from byte" in res.stderr
    assert_published(tmp_path / "d", model)
    # The retries continued the ranges: far less than a second copy was downloaded.
    assert proxy.forwarded_body_bytes() < model.total + MB


def test_stalled_server_is_abandoned_and_resumed(
    proxy: FaultProxy, model: Model, tmp_path: Path
) -> None:
    proxy.faults.stall_after = MB // 2
    proxy.faults.stall_times = 2
    args = _args(model.manifest_url(proxy.url), tmp_path / "d", "--stall-timeout", "0.5")
    res = run_prefetch(args, tmp_path)
    assert res.rc == 0, res.stderr
    assert "timed out" in res.stderr
    assert_published(tmp_path / "d", model)


def test_server_stalling_forever_hits_the_deadline(
    proxy: FaultProxy, model: Model, tmp_path: Path
) -> None:
    proxy.faults.stall_after = 1000
    proxy.faults.stall_times = 1000
    args = _args(model.manifest_url(proxy.url), tmp_path / "d", "--stall-timeout", "0.3")
    res = run_prefetch([*args, "--timeout", "2"], tmp_path)
    assert res.rc == 8, res.stderr
    assert "deadline" in res.stderr
    assert_nothing_published(tmp_path / "d")


def test_wrong_digest_is_refused_and_discarded(
    nginx: Nginx, nginx_root: Path, tmp_path: Path
) -> None:
    bad = make_model(
        nginx_root, "baddigest", {"w.safetensors": MB, "ok.json": 10}, bad_digest="w.safetensors"
    )
    dest = tmp_path / "d"
    res = run_prefetch(_args(bad.manifest_url(nginx.url), dest), tmp_path)
    assert res.rc == 6, res.stderr
    assert "w.safetensors: sha256" in res.stderr and "does not match" in res.stderr
    assert_nothing_published(dest)
    staging = tmp_path / "d.glowplug-staging"
    assert not (staging / "w.safetensors").exists(), "the corrupt file was kept for a resume"


def test_file_shorter_than_promised_is_never_published(
    nginx: Nginx, nginx_root: Path, tmp_path: Path
) -> None:
    m = make_model(nginx_root, "short", {"w.safetensors": MB}, seed=11)
    manifest = json.loads((m.dir / "manifest.json").read_text())
    manifest["files"][0]["size"] = MB + 100  # the server's file is truncated
    (m.dir / "manifest.json").write_text(json.dumps(manifest))
    args = _args(m.manifest_url(nginx.url), tmp_path / "d", "--chunk-mib", "2")
    res = run_prefetch(args, tmp_path)
    # The body ends early; the retry from there is refused by the server (HTTP 416).
    assert res.rc == 9, res.stderr
    assert f"the body ended at byte {MB}, expected {MB + 100}" in res.stderr
    assert "shorter than the 1048676 bytes the source lists" in res.stderr
    assert_nothing_published(tmp_path / "d")


@pytest.mark.parametrize(
    ("path", "code", "words"),
    [
        ("/status/401", 3, "credentials were refused"),
        ("/status/403", 3, "HTTP 403"),
        ("/nope/model.safetensors", 4, "not found"),
    ],
)
def test_http_errors_users_can_fix(
    nginx: Nginx, tmp_path: Path, path: str, code: int, words: str
) -> None:
    res = run_prefetch(_args(nginx.url + path, tmp_path / "d"), tmp_path)
    assert res.rc == code, res.stderr
    assert words in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.report is not None and res.report["error"]["message"]  # type: ignore[index]


@pytest.mark.parametrize(
    "evil", ["../../etc/evil", "/etc/evil", "a/../../evil", ".glowplug-complete.json"]
)
def test_manifest_path_traversal_is_refused_before_any_download(
    nginx: Nginx, nginx_root: Path, tmp_path: Path, evil: str
) -> None:
    d = nginx_root / "evil"
    d.mkdir(exist_ok=True)
    (d / "x").write_bytes(b"x")
    name = f"manifest-{abs(hash(evil))}.json"
    entry = {"path": evil, "size": 1, "sha256": "0" * 64, "url": "x"}
    (d / name).write_text(json.dumps({"schema": MANIFEST_SCHEMA, "files": [entry]}))
    res = run_prefetch(_args(f"{nginx.url}/evil/{name}", tmp_path / "m" / "d"), tmp_path)
    assert res.rc == 7, res.stderr
    assert "refused" in res.stderr
    assert not any(r[0] == "/evil/x" for r in nginx.access_log())
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()
    assert_nothing_published(tmp_path / "m" / "d")


def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes], gz: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(data[m.name]) if m.name in data else None)
    return buf.getvalue()


def _file(name: str, content: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def test_tar_gz_archive_is_unpacked(nginx: Nginx, nginx_root: Path, tmp_path: Path) -> None:
    files = {"model.safetensors": b"w" * 5000, "cfg/config.json": b"{}"}
    infos = [_file(n, c)[0] for n, c in files.items()]
    (nginx_root / "model.tar.gz").write_bytes(_tar(infos, files, gz=True))
    (nginx_root / "model.tar.gz").chmod(0o644)
    dest = tmp_path / "d"
    res = run_prefetch(_args(f"{nginx.url}/model.tar.gz", dest), tmp_path)
    assert res.rc == 0, res.stderr
    for name, content in files.items():
        assert (dest / name).read_bytes() == content
    assert not (dest / "model.tar.gz").exists()
    assert not (dest / ".glowplug-archive").exists()


def _evil_tar(kind: str) -> bytes:
    if kind == "dotdot":
        info, c = _file("../../evil.txt", b"pwned")
        return _tar([info], {info.name: c}, gz=False)
    if kind == "absolute":
        info, c = _file("/tmp/evil-abs.txt", b"pwned")
        return _tar([info], {info.name: c}, gz=False)
    link = tarfile.TarInfo("escape")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc"
    info, c = _file("escape/passwd", b"pwned")
    return _tar([link, info], {info.name: c}, gz=False)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_hostile_tar_is_refused(nginx: Nginx, nginx_root: Path, tmp_path: Path, kind: str) -> None:
    name = f"evil-{kind}.tar"
    (nginx_root / name).write_bytes(_evil_tar(kind))
    (nginx_root / name).chmod(0o644)
    dest = tmp_path / "m" / "d"
    res = run_prefetch(_args(f"{nginx.url}/{name}", dest), tmp_path)
    assert res.rc == 7, res.stderr
    assert "refused" in res.stderr
    assert_nothing_published(dest)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil-abs.txt").exists()


def test_hostile_zip_is_refused(nginx: Nginx, nginx_root: Path, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr("../../evil-zip.txt", b"pwned")
    (nginx_root / "evil.zip").write_bytes(buf.getvalue())
    (nginx_root / "evil.zip").chmod(0o644)
    dest = tmp_path / "m" / "d"
    res = run_prefetch(_args(f"{nginx.url}/evil.zip", dest), tmp_path)
    assert res.rc == 7, res.stderr
    assert_nothing_published(dest)
    assert not (tmp_path / "evil-zip.txt").exists()


def test_destination_too_small_fails_before_downloading(
    nginx: Nginx, nginx_root: Path, tmp_path: Path
) -> None:
    d = nginx_root / "huge"
    d.mkdir(exist_ok=True)
    (d / "x").write_bytes(b"x")
    (d / "x").chmod(0o644)
    entry = {"path": "huge.safetensors", "size": 2**60, "sha256": "0" * 64, "url": "x"}
    (d / "manifest.json").write_text(json.dumps({"schema": MANIFEST_SCHEMA, "files": [entry]}))
    res = run_prefetch(_args(f"{nginx.url}/huge/manifest.json", tmp_path / "d"), tmp_path)
    assert res.rc == 5, res.stderr
    assert "needs 1024.0 PiB" in res.stderr or "free" in res.stderr
    assert "spec.cache.size" in res.stderr
    assert not any(r[0] == "/huge/x" for r in nginx.access_log()), "downloaded before checking"
    assert_nothing_published(tmp_path / "d")
