"""pvc:// and file:// sources: weights already on a mounted volume, copied or used in place."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

from tests.prefetch.conftest import (
    Model,
    assert_nothing_published,
    assert_published,
    corrupt_byte,
    prefetch_cmd,
    run_prefetch,
)
from tests.prefetch.servers import env_without_proxy

MB = 1024 * 1024


def _volume(root: Path) -> Model:
    files = {"model.safetensors": os.urandom(2 * MB + 5), "tok/tokenizer.json": b'{"v": 1}'}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return Model(root, "", files)


def test_file_source_is_copied_and_recorded(tmp_path: Path) -> None:
    model = _volume(tmp_path / "src")
    dest = tmp_path / "d"
    res = run_prefetch(["--source", f"file://{model.dir}", "--dest", str(dest)], tmp_path)
    assert res.rc == 0, res.stderr
    assert_published(dest, model)
    assert not (dest / "model.safetensors").is_symlink()


def test_pvc_source_in_place_links_verified_files(tmp_path: Path) -> None:
    claims = tmp_path / "pvc"
    model = _volume(claims / "weights" / "llama")
    first = tmp_path / "first"
    # A volume filled by an earlier prefetch carries digests in its completion record.
    res = run_prefetch(["--source", f"file://{model.dir}", "--dest", str(first)], tmp_path)
    assert res.rc == 0, res.stderr
    dest = tmp_path / "d"
    args = ["--source", "pvc://weights/first", "--dest", str(dest), "--local-mode", "in-place"]
    os.rename(first, claims / "weights" / "first")
    res = run_prefetch([*args, "--pvc-root", str(claims)], tmp_path)
    assert res.rc == 0, res.stderr
    assert (dest / "model.safetensors").is_symlink()
    assert_published(dest, model)
    assert res.report is not None and res.report["download"]["bytes"] == 0  # type: ignore[index]


def test_in_place_source_with_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    model = _volume(tmp_path / "src")
    vol = tmp_path / "vol"
    assert run_prefetch(["--source", f"file://{model.dir}", "--dest", str(vol)], tmp_path).rc == 0
    corrupt_byte(vol / "model.safetensors", MB)
    for mode in ("in-place", "copy"):
        dest = tmp_path / f"d-{mode}"
        args = ["--source", f"file://{vol}", "--dest", str(dest), "--local-mode", mode]
        res = run_prefetch(args, tmp_path)
        assert res.rc == 6, res.stderr
        assert "model.safetensors: sha256" in res.stderr
        assert_nothing_published(dest)


def test_link_escaping_the_source_is_refused(tmp_path: Path) -> None:
    model = _volume(tmp_path / "src")
    (model.dir / "secret").symlink_to("/etc/hostname")
    res = run_prefetch(["--source", f"file://{model.dir}", "--dest", str(tmp_path / "d")], tmp_path)
    assert res.rc == 7 and "outside the source" in res.stderr


def test_missing_volume_path_is_not_found(tmp_path: Path) -> None:
    args = ["--source", "pvc://nope/x", "--dest", str(tmp_path / "d"), "--pvc-root", str(tmp_path)]
    res = run_prefetch(args, tmp_path)
    assert res.rc == 4 and "the volume is mounted" in res.stderr


def test_dest_holding_foreign_files_is_not_overwritten(tmp_path: Path) -> None:
    model = _volume(tmp_path / "src")
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    res = run_prefetch(["--source", f"file://{model.dir}", "--dest", str(dest)], tmp_path)
    assert res.rc == 2 and "did not write" in res.stderr
    assert (dest / "notes.txt").read_text() == "mine"


def test_many_files_need_few_descriptors(tmp_path: Path) -> None:
    """400 files under a 64-descriptor limit: files are open only while a worker uses them."""
    src = tmp_path / "src"
    files = {f"shard/{i:04d}.bin": os.urandom(200) for i in range(400)}
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    dest = tmp_path / "d"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = subprocess.run(
        prefetch_cmd(["--source", f"file://{src}", "--dest", str(dest)]),
        capture_output=True,
        text=True,
        preexec_fn=limit,
        env={**env_without_proxy(), "GLOWPLUG_TERMINATION_PATH": str(tmp_path / "r.json")},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert_published(dest, Model(src, "", files))


def test_unwritable_destination_is_explained(tmp_path: Path) -> None:
    model = _volume(tmp_path / "src")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    env = {"GLOWPLUG_TERMINATION_PATH": str(tmp_path / "r.json")}
    cmd = ["--source", f"file://{model.dir}", "--dest", str(ro / "d")]
    # Root ignores directory permissions through two capabilities: drop them for this run (it
    # stays root, so it can still run a Python that lives under /root).
    without_override = (
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.getuid() == 0 else []
    )
    proc = subprocess.run(
        [*without_override, *prefetch_cmd(cmd)],
        capture_output=True,
        text=True,
        env={**env_without_proxy(), **env},
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Permission denied" in proc.stderr and "cannot write there" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_verify_reuse_refetches_a_cache_whose_files_were_replaced(tmp_path: Path) -> None:
    # A shared host-path cache: someone with write access plants same-size forged weights.
    model = _volume(tmp_path / "src")
    dest = tmp_path / "d"
    args = ["--source", f"file://{model.dir}", "--dest", str(dest)]
    assert run_prefetch(args, tmp_path).rc == 0
    forged = os.urandom(len(model.files["model.safetensors"]))
    (dest / "model.safetensors").write_bytes(forged)

    trusting = run_prefetch(args, tmp_path)  # sizes match: reused as it is
    assert trusting.rc == 0 and (dest / "model.safetensors").read_bytes() == forged

    checked = run_prefetch([*args, "--verify-reuse"], tmp_path)
    assert checked.rc == 0, checked.stderr
    assert "model.safetensors: sha256" in checked.stderr and "fetching again" in checked.stderr
    assert_published(dest, model)
    assert checked.report is not None
    assert checked.report["download"]["bytes"] > 0  # type: ignore[index]

    intact = run_prefetch([*args, "--verify-reuse"], tmp_path)  # now intact: reused
    assert intact.rc == 0 and intact.report is not None
    assert intact.report["download"]["bytes"] == 0  # type: ignore[index]
