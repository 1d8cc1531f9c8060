"""The hf:// source through huggingface_hub: a pre-populated cache in offline mode, and the
online path against a static mirror of the Hub's API served by nginx (no real Hub is reachable)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.prefetch.conftest import (
    Model,
    assert_nothing_published,
    assert_published,
    corrupt_byte,
    run_prefetch,
)
from tests.prefetch.servers import Nginx

MB = 1024 * 1024
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "acme/tiny-llm"


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def populate_cache(cache: Path, files: dict[str, bytes], lfs: set[str]) -> None:
    """The layout huggingface_hub writes: blobs named by LFS sha256 (or git sha1), snapshot
    symlinks per commit, and refs/main."""
    repo = cache / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        blob_id = hashlib.sha256(data).hexdigest() if name in lfs else _git_sha1(data)
        blob = repo / "blobs" / blob_id
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


FILES = {
    "model.safetensors": os.urandom(2 * MB + 1),
    "config.json": b'{"model_type": "tiny"}',
    "tokenizer/tokenizer.json": b'{"version": "1.0"}',
}


def _offline_env(cache: Path) -> dict[str, str]:
    # The endpoint is a closed port: any network access would fail the run.
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}


def test_offline_cache_is_used_and_revision_recorded(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    populate_cache(cache, FILES, lfs={"model.safetensors"})
    dest = tmp_path / "d"
    res = run_prefetch(
        ["--source", f"hf://{REPO}", "--dest", str(dest)], tmp_path, env=_offline_env(cache)
    )
    assert res.rc == 0, res.stderr
    record = assert_published(dest, Model(dest, "", FILES))
    assert record["resolved_revision"] == COMMIT
    assert record["key"]["revision"] is None


def test_offline_pinned_commit_with_include(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    populate_cache(cache, FILES, lfs={"model.safetensors"})
    dest = tmp_path / "d"
    args = ["--source", f"hf://{REPO}@{COMMIT}", "--dest", str(dest), "--include", "*.json"]
    res = run_prefetch(args, tmp_path, env=_offline_env(cache))
    assert res.rc == 0, res.stderr
    published = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert published == [".glowplug-complete.json", "config.json", "tokenizer/tokenizer.json"]


def test_offline_corrupt_lfs_blob_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    populate_cache(cache, FILES, lfs={"model.safetensors"})
    blob = next((cache / f"models--{REPO.replace('/', '--')}" / "blobs").glob("?" * 64))
    corrupt_byte(blob, 0)
    dest = tmp_path / "d"
    res = run_prefetch(
        ["--source", f"hf://{REPO}", "--dest", str(dest)], tmp_path, env=_offline_env(cache)
    )
    assert res.rc == 6, res.stderr
    assert "model.safetensors: sha256" in res.stderr
    assert_nothing_published(dest)


def test_offline_without_cache_says_so(tmp_path: Path) -> None:
    dest = tmp_path / "d"
    res = run_prefetch(
        ["--source", f"hf://{REPO}@v9", "--dest", str(dest)],
        tmp_path,
        env=_offline_env(tmp_path / "empty"),
    )
    assert res.rc == 4, res.stderr
    assert "not in the Hugging Face cache" in res.stderr and "HF_HUB_OFFLINE" in res.stderr


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Nginx]:
    """A static Hub: /api/models/<repo>/revision/main (JSON) and /<repo>/resolve/<commit>/<file>;
    acme/private answers 401 as the Hub does without a token."""
    root = tmp_path / "hubroot"
    api = root / "api" / "models" / REPO / "revision"
    api.mkdir(parents=True)
    siblings = []
    for name, data in FILES.items():
        entry: dict[str, object] = {"rfilename": name, "size": len(data), "blobId": _git_sha1(data)}
        if name == "model.safetensors":
            entry["lfs"] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "pointerSize": 134,
            }
        siblings.append(entry)
        path = root / REPO / "resolve" / COMMIT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    body = {"id": REPO, "modelId": REPO, "sha": COMMIT, "siblings": siblings, "private": False}
    (api / "main").write_text(json.dumps(body))
    bad = json.loads(json.dumps(body))
    bad["siblings"][0]["lfs"]["sha256"] = "f" * 64
    (api / "badlfs").write_text(json.dumps(bad))
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    server = Nginx(
        root,
        tmp_path / "hubrun",
        locations="location /api/models/acme/private { return 401; }",
    )
    yield server
    server.stop()


def test_online_resolves_commit_downloads_in_ranges_and_reuses_cached_files(
    hub: Nginx, tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    populate_cache(cache, {"config.json": FILES["config.json"]}, lfs=set())
    dest = tmp_path / "d"
    env = {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test"}
    res = run_prefetch(
        ["--source", f"hf://{REPO}", "--dest", str(dest), "--chunk-mib", "1"], tmp_path, env=env
    )
    assert res.rc == 0, res.stderr
    record = assert_published(dest, Model(dest, "", FILES))
    assert record["resolved_revision"] == COMMIT
    uris = [r[0] for r in hub.access_log()]
    assert sum(1 for u in uris if u.endswith("model.safetensors")) >= 3, "not fetched in ranges"
    assert not any(u.endswith("config.json") for u in uris), "a cached file was downloaded"


def test_online_wrong_lfs_digest_is_refused(hub: Nginx, tmp_path: Path) -> None:
    env = {"HF_HUB_CACHE": str(tmp_path / "c"), "HF_ENDPOINT": hub.url}
    dest = tmp_path / "d"
    res = run_prefetch(["--source", f"hf://{REPO}@badlfs", "--dest", str(dest)], tmp_path, env=env)
    assert res.rc == 6, res.stderr
    assert_nothing_published(dest)


@pytest.mark.parametrize(
    ("repo", "code", "words"),
    [("acme/private", 3, "set HF_TOKEN"), ("acme/missing", 4, "not found")],
)
def test_online_errors_users_can_fix(
    hub: Nginx, tmp_path: Path, repo: str, code: int, words: str
) -> None:
    env = {"HF_HUB_CACHE": str(tmp_path / "c"), "HF_ENDPOINT": hub.url}
    res = run_prefetch(
        ["--source", f"hf://{repo}", "--dest", str(tmp_path / "d"), "--retries", "2"],
        tmp_path,
        env=env,
    )
    assert res.rc == code, res.stderr
    assert words in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 or "error:" in res.stderr.splitlines()[-1]
