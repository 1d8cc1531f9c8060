"""Two ModelServers, one source, different `model.include` globs, one shared claim (issue 16,
item 3): the prefetch command lines the operator renders keep each one's files in its own
directory, so neither replaces the other's under its running workers."""

from __future__ import annotations

from pathlib import Path

from glowplug_operator.builders import Owner, build_deployment
from glowplug_operator.settings import Settings
from glowplug_operator.spec import parse_spec

from tests.prefetch.conftest import Model, assert_published, run_prefetch


def _prefetch_args(name: str, source: str, include: list[str], claim: Path) -> list[str]:
    body = {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}"},
        "spec": {"model": {"source": source, "include": include}},
    }
    spec = parse_spec(body)
    deployment = build_deployment(
        Owner(name, "ml", f"uid-{name}"), spec, Settings(cache_mount_path=str(claim)), [], "h"
    )
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert init["args"][0] == "prefetch"
    return list(init["args"][1:])


def test_different_globs_on_one_claim_keep_their_own_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = {"config.json": b'{"a": 1}', "model.safetensors": b"w" * 4096, "extra.bin": b"x" * 99}
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    claim = tmp_path / "claim"
    claim.mkdir()
    a = _prefetch_args("a", f"file://{src}", ["*.json", "*.safetensors"], claim)
    b = _prefetch_args("b", f"file://{src}", ["*.bin"], claim)
    dest = {name: Path(args[args.index("--dest") + 1]) for name, args in (("a", a), ("b", b))}
    assert dest["a"] != dest["b"]

    wanted_a = {k: v for k, v in files.items() if not k.endswith(".bin")}
    assert run_prefetch(a, tmp_path).rc == 0
    first = (dest["a"] / "model.safetensors").stat().st_ino
    assert run_prefetch(b, tmp_path).rc == 0
    assert_published(dest["b"], Model(src, "", {"extra.bin": files["extra.bin"]}))
    # a's files are still a's, the same inodes a running worker holds, and a's next start reuses
    assert_published(dest["a"], Model(src, "", wanted_a))
    assert (dest["a"] / "model.safetensors").stat().st_ino == first
    again = run_prefetch(a, tmp_path)
    assert again.rc == 0 and again.report is not None
    assert again.report["download"]["bytes"] == 0  # type: ignore[index]
