"""The command line: clear one-line errors, no torch, lazy heavy imports, the report contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from glowplug_worker import report

from tests.prefetch.conftest import make_model, run_prefetch
from tests.prefetch.servers import Nginx, env_without_proxy


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--source", "ftp://x/y", "--dest", "d"], "expected hf://org/name[@revision]"),
        (["--source", "hf://", "--dest", "d"], "hf://org/name[@revision]"),
        (["--source", "file://relative", "--dest", "d"], "file:///absolute/path"),
        (["--dest", "d"], "the following arguments are required: --source"),
        (["--source", "hf://a/b@v1", "--revision", "v2", "--dest", "d"], "contradicts the @v1"),
        (["--source", "hf://a/b", "--dest", "d", "--concurrency", "0"], "--concurrency"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    tmp_path: Path, args: list[str], words: str
) -> None:
    res = run_prefetch(args, tmp_path)
    assert res.rc == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("glowplug-worker prefetch: error:")
    assert words in lines[0]
    assert res.report is not None and res.report["outcome"] == "failed"


def test_help_exits_zero(tmp_path: Path) -> None:
    res = run_prefetch(["--help"], tmp_path)
    assert res.rc == 0 and "--source" in res.stdout


PROBE = """
import json, sys
from glowplug_worker.prefetch.cli import main
rc = main(sys.argv[1:])
heavy = ("torch", "transformers", "safetensors", "boto3", "botocore", "huggingface_hub")
print(json.dumps({"rc": rc, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_prefetch_never_imports_torch_nor_unused_clients(
    nginx: Nginx, nginx_root: Path, tmp_path: Path
) -> None:
    model = make_model(nginx_root, "imports", {"w.safetensors": 4096}, seed=20)
    args = ["--source", model.manifest_url(nginx.url), "--dest", str(tmp_path / "d")]
    env = {**env_without_proxy(), "GLOWPLUG_TERMINATION_PATH": str(tmp_path / "r.json")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"rc": 0, "loaded": []}


def test_reports_parse_with_the_shared_schema(
    nginx: Nginx, nginx_root: Path, tmp_path: Path
) -> None:
    model = make_model(nginx_root, "schema", {"w.safetensors": 1000}, seed=21)
    ok = run_prefetch(
        ["--source", model.manifest_url(nginx.url), "--dest", str(tmp_path / "d")], tmp_path
    )
    bad = run_prefetch(
        ["--source", f"{nginx.url}/missing.bin", "--dest", str(tmp_path / "e")], tmp_path
    )
    for res in (ok, bad):
        body = res.report
        assert body is not None
        assert body["schema"] == report.SCHEMA and body["command"] == "prefetch"
        assert set(body["download"]) == {  # type: ignore[arg-type]
            "bytes",
            "files",
            "seconds",
            "throughput_bytes_per_second",
            "reused",
        }
        assert len(json.dumps(body)) <= report.MAX_BYTES
    assert ok.report["phase"] is None and ok.report["error"] is None  # type: ignore[index]
    assert bad.report["phase"] == "download"  # type: ignore[index]
    assert bad.report["error"]["type"] == "NotFoundError"  # type: ignore[index]
    from glowplug_operator.rollback.reports import parse_report  # the operator's reader

    parsed = parse_report(json.dumps(ok.report))
    assert parsed is not None and parsed.download is not None
    assert parsed.download.reused is False and parsed.download.files == 1
    assert parsed.phases["download"] > 0
    failed = parse_report(json.dumps(bad.report))
    assert failed is not None and failed.failed and failed.phase == "download"
