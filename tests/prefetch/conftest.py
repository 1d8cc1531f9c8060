"""Fixtures: a real nginx, model-like files with a manifest, and a runner for the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.prefetch.servers import Nginx, env_without_proxy

MANIFEST_SCHEMA = "glowplug.dev/prefetch-manifest/v1"


@pytest.fixture(scope="session")
def nginx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("www")
    root.chmod(0o755)
    return root


@pytest.fixture(scope="session")
def nginx(nginx_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    server = Nginx(nginx_root, tmp_path_factory.mktemp("nginx-run"), rate="4m")
    yield server
    server.stop()


@dataclass
class Model:
    """Files served under `prefix` of the nginx root, with their manifest."""

    dir: Path
    prefix: str
    files: dict[str, bytes]

    @property
    def total(self) -> int:
        return sum(len(b) for b in self.files.values())

    def manifest_url(self, base: str) -> str:
        return f"{base}/{self.prefix}/manifest.json"


def make_model(
    root: Path,
    prefix: str,
    sizes: dict[str, int],
    seed: int = 0,
    bad_digest: str | None = None,
    extra_entries: list[dict[str, object]] | None = None,
) -> Model:
    rng = random.Random(seed)
    d = root / prefix
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    entries: list[dict[str, object]] = []
    for name, size in sizes.items():
        data = rng.randbytes(size)
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
        files[name] = data
        digest = hashlib.sha256(data).hexdigest()
        if name == bad_digest:
            digest = hashlib.sha256(b"something else").hexdigest()
        entries.append({"path": name, "size": size, "sha256": digest})
    entries += extra_entries or []
    manifest = {"schema": MANIFEST_SCHEMA, "revision": f"r{seed}", "files": entries}
    (d / "manifest.json").write_text(json.dumps(manifest))
    for p in [d, *d.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return Model(d, prefix, files)


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    report: dict[str, object] | None


def run_prefetch(
    args: list[str],
    tmp: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Result:
    """Run the real command in a subprocess; returns exit code, output and termination report."""
    report_path = tmp / f"report-{os.urandom(4).hex()}.json"
    full_env = env_without_proxy()
    full_env["GLOWPLUG_TERMINATION_PATH"] = str(report_path)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "glowplug_worker.cli", "prefetch", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return Result(proc.returncode, proc.stdout, proc.stderr, report)


def prefetch_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "glowplug_worker.cli", "prefetch", *args]


def corrupt_byte(path: Path, offset: int) -> None:
    """Invert one byte in place: the file always changes, whatever it held there."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        old = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([old ^ 0xFF]))


def assert_published(dest: Path, model: Model) -> dict[str, object]:
    """dest holds exactly the model's files with the right bytes, plus the record."""
    for name, data in model.files.items():
        assert (dest / name).read_bytes() == data, f"{name} differs from the source"
    record = json.loads((dest / ".glowplug-complete.json").read_text())
    assert {e["path"] for e in record["files"]} == set(model.files)
    for e in record["files"]:
        assert e["sha256"] == hashlib.sha256(model.files[e["path"]]).hexdigest()
    return record  # type: ignore[no-any-return]


def assert_nothing_published(dest: Path) -> None:
    assert not (dest / ".glowplug-complete.json").exists(), "a completion record was published"
    if dest.exists():
        assert not any(dest.iterdir()), f"files were published: {list(dest.iterdir())}"
