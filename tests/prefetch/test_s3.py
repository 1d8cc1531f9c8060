"""The s3:// source against a real S3-compatible server (moto in server mode, over HTTP)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.prefetch.conftest import Model, assert_nothing_published, assert_published, run_prefetch
from tests.prefetch.servers import free_port

MB = 1024 * 1024
CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**CREDS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    yield env
    server.stop()


def _client(env: dict[str, str]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _upload(env: dict[str, str], bucket: str, files: dict[str, bytes], checksum: bool) -> None:
    s3 = _client(env)
    s3.create_bucket(Bucket=bucket)
    for key, data in files.items():
        extra = {"ChecksumAlgorithm": "SHA256"} if checksum else {}
        s3.put_object(Bucket=bucket, Key=key, Body=data, **extra)


def test_prefix_is_downloaded_in_ranges_and_verified(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    files = {
        "models/llama/model.safetensors": os.urandom(3 * MB + 11),
        "models/llama/config.json": b'{"a": 1}',
        "models/llama-other/x.bin": b"not mine",
    }
    _upload(s3_env, "weights", files, checksum=True)
    dest = tmp_path / "d"
    args = ["--source", "s3://weights/models/llama", "--dest", str(dest), "--chunk-mib", "1"]
    res = run_prefetch(args, tmp_path, env=s3_env)
    assert res.rc == 0, res.stderr
    model = Model(dest, "", {k.split("/", 2)[2]: v for k, v in files.items() if "llama/" in k})
    record = assert_published(dest, model)
    assert record["source"] == "s3://weights/models/llama"
    # The second run is a reuse; boto3 is not even needed for it.
    res = run_prefetch(args, tmp_path, env=s3_env)
    assert res.rc == 0 and res.report["download"]["reused"] is True  # type: ignore[index]


def test_stored_sha256_checksums_become_the_digests_to_verify(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects uploaded with ChecksumAlgorithm=SHA256 carry a digest the engine verifies;
    objects without one are hashed for the record only."""
    with_sum, without = os.urandom(MB), os.urandom(1000)
    _upload(s3_env, "sums", {"m/a.safetensors": with_sum}, checksum=True)
    _client(s3_env).put_object(Bucket="sums", Key="m/b.json", Body=without)
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    from glowplug_worker.prefetch.options import Options, parse_source
    from glowplug_worker.prefetch.s3src import S3Source

    opts = Options(source=parse_source("s3://sums/m"), dest="unused")
    source = S3Source("sums/m", opts, dict(os.environ))
    try:
        files = {f.path: f for f in source.plan().files}
    finally:
        source.close()
    assert files["a.safetensors"].sha256 == hashlib.sha256(with_sum).hexdigest()
    assert files["b.json"].sha256 is None
    assert files["a.safetensors"].size == MB


def test_single_object_source(s3_env: dict[str, str], tmp_path: Path) -> None:
    data = os.urandom(100_000)
    _upload(s3_env, "single", {"a/b/model.safetensors": data}, checksum=False)
    dest = tmp_path / "d"
    res = run_prefetch(
        ["--source", "s3://single/a/b/model.safetensors", "--dest", str(dest)], tmp_path, env=s3_env
    )
    assert res.rc == 0, res.stderr
    assert (dest / "model.safetensors").read_bytes() == data


def test_missing_bucket_and_empty_prefix_are_not_found(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    res = run_prefetch(
        ["--source", "s3://no-such-bucket/x", "--dest", str(tmp_path / "a")], tmp_path, env=s3_env
    )
    assert res.rc == 4 and "NoSuchBucket" in res.stderr
    _upload(s3_env, "emptyish", {"other/x": b"x"}, checksum=False)
    res = run_prefetch(
        ["--source", "s3://emptyish/models", "--dest", str(tmp_path / "b")], tmp_path, env=s3_env
    )
    assert res.rc == 4 and "no objects under this prefix" in res.stderr


def test_missing_credentials_are_named(s3_env: dict[str, str], tmp_path: Path) -> None:
    env = {
        "AWS_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    res = run_prefetch(
        ["--source", "s3://weights/models", "--dest", str(tmp_path / "d")], tmp_path, env=env
    )
    assert res.rc == 3, res.stderr
    assert "AWS_ACCESS_KEY_ID" in res.stderr


def test_hostile_key_is_refused(s3_env: dict[str, str], tmp_path: Path) -> None:
    _upload(s3_env, "hostile", {"m/../../evil": b"x", "m/ok": b"y"}, checksum=False)
    res = run_prefetch(
        ["--source", "s3://hostile/m", "--dest", str(tmp_path / "x" / "d")], tmp_path, env=s3_env
    )
    assert res.rc == 7 and "refused" in res.stderr
    assert_nothing_published(tmp_path / "x" / "d")
    assert not (tmp_path / "evil").exists()
    json.dumps(res.report)
