"""Archives as real tools pack them: GNU tar with and without `./`, Python's tarfile, `zip -r`,
a Hugging Face `snapshot_download(local_dir=...)` directory; and the limits on hostile ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from glowplug_worker.prefetch.errors import NoSpaceError, SourceError
from glowplug_worker.prefetch.safepath import extract_archive

from tests.ci import cannot_run
from tests.prefetch.conftest import Model, assert_nothing_published, assert_published, run_prefetch

FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": os.urandom(300_000),
    "tokenizer/tokenizer.json": b'{"v": 1}',
}
# What huggingface_hub's snapshot_download(local_dir=...) leaves beside the weights.
HF_LOCAL_DIR = {
    **FILES,
    ".gitattributes": b"*.safetensors filter=lfs\n",
    ".cache/huggingface/download/config.json.metadata": b"abc\n123\n1.0\n",
    ".cache/huggingface/.gitignore": b"*\n",
}


def _model_dir(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _gnu_tar_dot(src: Path, out: Path) -> Path:
    archive = out / "model.tar"
    subprocess.run(["tar", "-C", str(src), "-cf", str(archive), "."], check=True)
    return archive


def _gnu_tar_names(src: Path, out: Path) -> Path:
    archive = out / "model.tar.gz"
    names = sorted(os.listdir(src))
    subprocess.run(["tar", "-C", str(src), "-czf", str(archive), *names], check=True)
    return archive


def _python_tarfile_dot(src: Path, out: Path) -> Path:
    archive = out / "model.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=".")
    return archive


def _python_tarfile_root_name(src: Path, out: Path) -> Path:
    archive = out / "model.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname="")  # members "config.json", ... and a root entry named ""
    return archive


def _zip_r(src: Path, out: Path) -> Path:
    archive = out / "model.zip"
    subprocess.run(["zip", "-qr", str(archive), "."], cwd=src, check=True)
    return archive


def _zip_r_dot_slash(src: Path, out: Path) -> Path:
    archive = out / "model.zip"
    names = ["./" + n for n in sorted(os.listdir(src))]
    subprocess.run(["zip", "-qr", str(archive), *names], cwd=src, check=True)
    return archive


PACKERS: dict[str, Callable[[Path, Path], Path]] = {
    "gnu-tar-dot": _gnu_tar_dot,
    "gnu-tar-names-gz": _gnu_tar_names,
    "python-tarfile-dot-gz": _python_tarfile_dot,
    "python-tarfile-root": _python_tarfile_root_name,
    "zip-r": _zip_r,
    "zip-r-dot-slash": _zip_r_dot_slash,
}


@pytest.mark.parametrize("packer", sorted(PACKERS))
@pytest.mark.parametrize("layout", ["plain", "hf-local-dir"])
def test_archive_packed_the_usual_way_is_unpacked(packer: str, layout: str, tmp_path: Path) -> None:
    missing = [tool for tool in ("tar", "zip") if not shutil.which(tool)]
    if missing:
        cannot_run(f"{' and '.join(missing)} not on PATH (`make packages` installs them)")
    files = FILES if layout == "plain" else HF_LOCAL_DIR
    src = _model_dir(tmp_path / "model", files)
    (tmp_path / "out").mkdir()
    archive = PACKERS[packer](src, tmp_path / "out")
    dest = tmp_path / "d"
    res = run_prefetch(["--source", f"file://{archive}", "--dest", str(dest)], tmp_path)
    assert res.rc == 0, res.stderr
    assert_published(dest, Model(src, "", files))


def test_archive_with_a_link_is_refused_with_a_hint(tmp_path: Path) -> None:
    # A Hugging Face cache snapshot (snapshots/<rev>/x -> ../../blobs/<hash>) packed without -h.
    src = _model_dir(tmp_path / "snap", {"blobs/abc": b"w"})
    (src / "config.json").symlink_to("blobs/abc")
    (tmp_path / "out").mkdir()
    archive = _gnu_tar_dot(src, tmp_path / "out")
    dest = tmp_path / "d"
    res = run_prefetch(["--source", f"file://{archive}", "--dest", str(dest)], tmp_path)
    assert res.rc == 7, res.stderr
    assert "config.json" in res.stderr and "--dereference" in res.stderr
    assert_nothing_published(dest)


def _tar_of(tmp_path: Path, members: int, size: int) -> Path:
    src = tmp_path / "bomb"
    src.mkdir()
    for i in range(members):
        (src / f"f{i}").write_bytes(b"\0" * size)
    archive = tmp_path / "bomb.tar.gz"
    subprocess.run(["tar", "-C", str(src), "-czf", str(archive), "."], check=True)
    return archive


def test_archive_with_too_many_members_writes_nothing(tmp_path: Path) -> None:
    archive = _tar_of(tmp_path, 30, 1)
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(SourceError, match="more than 20 members"):
        extract_archive(str(archive), str(dest), max_members=20)
    assert not any(dest.iterdir())
    assert len(extract_archive(str(archive), str(dest), max_members=31)) == 30


def test_archive_larger_than_the_space_writes_nothing(tmp_path: Path) -> None:
    archive = _tar_of(tmp_path, 4, 1_000_000)  # compresses to a few kB, unpacks to 4 MB
    assert archive.stat().st_size < 100_000
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(NoSpaceError, match="unpacks to 4000000 bytes"):
        extract_archive(str(archive), str(dest), max_bytes=3_000_000)
    assert not any(dest.iterdir())
    zsrc = tmp_path / "bomb"
    zarchive = tmp_path / "bomb.zip"
    subprocess.run(["zip", "-qr", str(zarchive), "."], cwd=zsrc, check=True)
    with pytest.raises(NoSpaceError, match="unpacks to 4000000 bytes"):
        extract_archive(str(zarchive), str(dest), max_bytes=3_000_000)
    assert not any(dest.iterdir())
