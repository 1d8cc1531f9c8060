"""s3://bucket/prefix: any S3-compatible store through boto3 (imported only for this scheme).

Endpoint: AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for MinIO, Ceph, R2, GCS interop...;
credentials: boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
web identity, instance roles). GLOWPLUG_S3_ADDRESSING=path|virtual|auto picks the URL style.
A SHA-256 checksum stored with an object (uploaded with ChecksumAlgorithm=SHA256) is verified.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from glowplug_worker.prefetch.errors import (
    CredentialsError,
    NotFoundError,
    PrefetchError,
    SourceError,
    TransientError,
    UsageError,
)
from glowplug_worker.prefetch.options import Options
from glowplug_worker.prefetch.plan import Plan, RemoteFile
from glowplug_worker.prefetch.safepath import RESERVED_PREFIX, is_archive, safe_relpath

AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "401",
    "403",
}
MISSING_CODES = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}


class S3Stream:
    def __init__(self, body: Any, where: str) -> None:
        self.body, self.where = body, where

    def readinto(self, buf: memoryview) -> int:
        try:
            data = self.body.read(len(buf))
        except Exception as exc:  # botocore/urllib3 raise many types for a broken body
            raise TransientError(f"{self.where}: {type(exc).__name__}: {exc}") from exc
        n = len(data)
        buf[:n] = data
        return n

    def close(self) -> None:
        self.body.close()


class S3Source:
    def __init__(self, location: str, opts: Options, env: Mapping[str, str]) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, _, prefix = location.partition("/")
        self.prefix = prefix
        self.concurrency = opts.concurrency
        addressing = env.get("GLOWPLUG_S3_ADDRESSING", "auto")
        if addressing not in ("auto", "path", "virtual"):
            raise UsageError("GLOWPLUG_S3_ADDRESSING must be auto, path or virtual")
        config = Config(
            max_pool_connections=opts.concurrency + 4,
            connect_timeout=min(opts.stall_timeout_s, 30.0),
            read_timeout=opts.stall_timeout_s,
            retries={"max_attempts": 1},  # the engine retries, resuming ranges
            s3={"addressing_style": addressing},
        )
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:
            raise map_error(exc, what) from exc

    def plan(self) -> Plan:
        where = f"s3://{self.bucket}/{self.prefix}"
        objects = self._list(self.prefix.rstrip("/") + "/" if self.prefix else "")
        base = self.prefix.rstrip("/") + "/" if self.prefix else ""
        if not objects and self.prefix and not self.prefix.endswith("/"):
            objects = self._list(self.prefix)  # a single object?
            objects = [o for o in objects if o["Key"] == self.prefix]
            base = self.prefix.rsplit("/", 1)[0] + "/" if "/" in self.prefix else ""
        if not objects:
            raise NotFoundError(f"{where}: no objects under this prefix; check bucket and prefix")
        with ThreadPoolExecutor(min(16, self.concurrency)) as pool:
            found = list(pool.map(lambda o: self._file(o, base), objects))
        files = [f for f in found if f is not None]
        single = len(files) == 1 and is_archive(files[0].path)
        return Plan(files=files, archive=single)

    def _list(self, prefix: str) -> list[dict[str, Any]]:
        where = f"s3://{self.bucket}/{prefix}"
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(where, self.client.list_objects_v2, **kwargs)
            out += [o for o in page.get("Contents", []) if not o["Key"].endswith("/")]
            if not page.get("IsTruncated"):
                return out
            token = page.get("NextContinuationToken")

    def _file(self, obj: dict[str, Any], base: str) -> RemoteFile | None:
        key = obj["Key"]
        rel = safe_relpath(key[len(base) :], f"S3 key {key!r}")
        if rel.split("/")[-1].startswith(RESERVED_PREFIX):
            return None
        head = self._call(
            f"s3://{self.bucket}/{key}",
            self.client.head_object,
            Bucket=self.bucket,
            Key=key,
            ChecksumMode="ENABLED",
        )
        digest = None
        checksum = head.get("ChecksumSHA256")
        if (
            checksum
            and "-" not in checksum
            and head.get("ChecksumType", "FULL_OBJECT") != "COMPOSITE"
        ):
            digest = base64.b64decode(checksum).hex()
        return RemoteFile(rel, int(head["ContentLength"]), digest, key, head.get("ETag", ""))

    def open_range(self, f: RemoteFile, start: int, end: int | None) -> S3Stream:
        where = f"s3://{self.bucket}/{f.locator}"
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": f.locator}
        if end is not None:
            if end <= start:
                raise SourceError(f"{where}: empty range {start}-{end}")
            kwargs["Range"] = f"bytes={start}-{end - 1}"
        if f.version:
            kwargs["IfMatch"] = f.version
        resp = self._call(where, self.client.get_object, **kwargs)
        return S3Stream(resp["Body"], where)

    def close(self) -> None:
        self.client.close()


def map_error(exc: Exception, where: str) -> PrefetchError:
    """botocore's exceptions to ours: credentials, not found, retryable, or a source error."""
    from botocore import exceptions as bx

    if isinstance(exc, PrefetchError):
        return exc
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return CredentialsError(
            f"{where}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(spec.model.credentialsSecretRef) or give the pod an IAM role"
        )
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in AUTH_CODES or status in (401, 403):
            return CredentialsError(
                f"{where}: S3 refused the credentials ({code}); check AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY and the bucket policy"
            )
        if code in MISSING_CODES or status == 404:
            return NotFoundError(f"{where}: {code or 'not found'}; check the bucket and prefix")
        if code in ("PreconditionFailed", "412") or status == 412:
            return SourceError(f"{where}: the object changed during the download; run again")
        if status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout"):
            return TransientError(f"{where}: S3 {code or status}")
        return SourceError(f"{where}: S3 error {code} (HTTP {status})")
    if isinstance(exc, (bx.BotoCoreError, OSError)):
        return TransientError(f"{where}: {type(exc).__name__}: {exc}")
    return SourceError(f"{where}: {type(exc).__name__}: {exc}")
