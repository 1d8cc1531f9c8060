"""--sha256 (spec.model.sha256) for http(s) sources, against a real nginx: a single file is
verified against it before anything is published, a manifest's own body is pinned by it, and a
changed digest never reuses what was fetched under another one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.prefetch.conftest import (
    assert_nothing_published,
    assert_published,
    make_model,
    run_prefetch,
)
from tests.prefetch.servers import Nginx

MB = 1024 * 1024
WRONG = hashlib.sha256(b"not the model").hexdigest()


def _record(dest: Path) -> dict[str, object]:
    return json.loads((dest / ".glowplug-complete.json").read_text())  # type: ignore[no-any-return]


def test_single_file_with_its_digest_is_published_and_keyed_by_it(
    nginx: Nginx, nginx_root: Path, tmp_path: Path
) -> None:
    model = make_model(nginx_root, "pinned", {"model.safetensors": MB + 5}, seed=40)
    digest = hashlib.sha256(model.files["model.safetensors"]).hexdigest()
    dest = tmp_path / "pinned"
    url = f"{nginx.url}/pinned/model.safetensors"
    res = run_prefetch(["--source", url, "--dest", str(dest), "--sha256", digest.upper()], tmp_path)
    assert res.rc == 0, res.stderr
    assert (dest / "model.safetensors").read_bytes() == model.files["model.safetensors"]
    record = _record(dest)
    assert record["key"]["sha256"] == digest  # type: ignore[index]
    assert record["files"][0]["sha256"] == digest  # type: ignore[index]


def test_single_file_with_a_wrong_digest_is_an_integrity_error_and_nothing_is_published(
    nginx: Nginx, nginx_root: Path, tmp_path: Path
) -> None:
    make_model(nginx_root, "wrongpin", {"model.safetensors": MB}, seed=41)
    dest = tmp_path / "wrongpin"
    url = f"{nginx.url}/wrongpin/model.safetensors"
    res = run_prefetch(["--source", url, "--dest", str(dest), "--sha256", WRONG], tmp_path)
    assert res.rc == 6, res.stderr
    assert f"does not match the source's {WRONG}" in res.stderr
    assert res.report is not None and res.report["outcome"] == "failed"
    assert_nothing_published(dest)
    assert not (tmp_path / "wrongpin.glowplug-staging" / "model.safetensors").exists()


def test_a_changed_digest_never_reuses_what_was_fetched_under_another(
    nginx: Nginx, nginx_root: Path, tmp_path: Path
) -> None:
    model = make_model(nginx_root, "rekey", {"model.safetensors": MB}, seed=42)
    digest = hashlib.sha256(model.files["model.safetensors"]).hexdigest()
    dest = tmp_path / "rekey"
    args = ["--source", f"{nginx.url}/rekey/model.safetensors", "--dest", str(dest)]
    assert run_prefetch(args, tmp_path).rc == 0
    assert "sha256" not in _record(dest)["key"]  # type: ignore[operator]  # the old key, unchanged

    # A digest now set (and wrong): the cache fetched without one is not trusted for it.
    before = len(nginx.access_log())
    res = run_prefetch([*args, "--sha256", WRONG], tmp_path)
    assert res.rc == 6, res.stderr
    assert len(nginx.access_log()) > before, "the digest was not checked against a fresh download"

    # The right digest: fetched again, recorded under it, then reused without a request.
    res = run_prefetch([*args, "--sha256", digest], tmp_path)
    assert res.rc == 0, res.stderr
    assert res.report is not None and res.report["download"]["reused"] is False  # type: ignore[index]
    assert _record(dest)["key"]["sha256"] == digest  # type: ignore[index]
    before = len(nginx.access_log())
    res = run_prefetch([*args, "--sha256", digest], tmp_path)
    assert res.rc == 0 and res.report["download"]["reused"] is True  # type: ignore[index]
    assert len(nginx.access_log()) == before
    # Changed again: not reused.
    res = run_prefetch([*args, "--sha256", WRONG], tmp_path)
    assert res.rc == 6, res.stderr


def test_the_digest_of_a_manifest_pins_the_manifest_body(
    nginx: Nginx, nginx_root: Path, tmp_path: Path
) -> None:
    model = make_model(nginx_root, "pinnedmanifest", {"w.safetensors": MB, "c.json": 30}, seed=43)
    digest = hashlib.sha256((model.dir / "manifest.json").read_bytes()).hexdigest()
    url = model.manifest_url(nginx.url)
    dest = tmp_path / "ok"
    res = run_prefetch(["--source", url, "--dest", str(dest), "--sha256", digest], tmp_path)
    assert res.rc == 0, res.stderr
    assert_published(dest, model)

    dest = tmp_path / "bad"
    before = len(nginx.access_log())
    res = run_prefetch(["--source", url, "--dest", str(dest), "--sha256", WRONG], tmp_path)
    assert res.rc == 6, res.stderr
    assert "manifest" in res.stderr and f"spec.model.sha256 {WRONG}" in res.stderr
    assert_nothing_published(dest)
    fetched = [r[0] for r in nginx.access_log()[before:]]
    assert not any("w.safetensors" in r for r in fetched), "files listed by a bad manifest fetched"


def test_the_digest_is_refused_where_it_cannot_apply(tmp_path: Path) -> None:
    res = run_prefetch(
        ["--source", "s3://bucket/model", "--dest", str(tmp_path / "d"), "--sha256", WRONG],
        tmp_path,
    )
    assert res.rc == 2 and "http:// and https:// sources only" in res.stderr
    url = "https://example.invalid/m.bin"
    res = run_prefetch(
        ["--source", url, "--dest", str(tmp_path / "d"), "--sha256", "abc"], tmp_path
    )
    assert res.rc == 2 and "64 hexadecimal digits" in res.stderr
