"""https:// and http:// sources: one file (unpacked if it is an archive) or a JSON manifest.

Manifest (any URL ending in .json whose body carries the schema below):

    {"schema": "glowplug.dev/prefetch-manifest/v1",
     "revision": "optional label recorded in the completion record",
     "files": [{"path": "model.safetensors", "size": 123, "sha256": "<64 hex>",
                "url": "optional, absolute or relative to the manifest; default: path"}]}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
from urllib.parse import quote, unquote, urljoin, urlsplit

from glowplug_worker.prefetch.errors import IntegrityError, SourceError, TransientError
from glowplug_worker.prefetch.httpclient import HttpClient, HttpStream, redact
from glowplug_worker.prefetch.plan import Plan, RemoteFile
from glowplug_worker.prefetch.safepath import is_archive, safe_relpath

MANIFEST_SCHEMA = "glowplug.dev/prefetch-manifest/v1"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")


class HttpSource:
    """`sha256` (the --sha256 option) pins the body at the URL: a single file is verified
    against it before it is published; a manifest's own body is checked before it is trusted
    (its files then carry their own digests)."""

    def __init__(self, url: str, client: HttpClient, sha256: str | None = None) -> None:
        self.url = url
        self.client = client
        self.sha256 = sha256

    def plan(self) -> Plan:
        name = posixpath.basename(unquote(urlsplit(self.url).path)) or "download"
        if name.lower().endswith(".json"):
            body = self._read_small(self.url)
            manifest = _parse_json(body)
            if isinstance(manifest, dict) and manifest.get("schema") == MANIFEST_SCHEMA:
                self._check_manifest_digest(body)
                return parse_manifest(manifest, self.url)
        f = self.probe(self.url, safe_relpath(name, "URL file name"))
        if self.sha256:
            f = dataclasses.replace(f, sha256=self.sha256)
        return Plan(files=[f], archive=is_archive(name))

    def _check_manifest_digest(self, body: bytes) -> None:
        if self.sha256 is None:
            return
        got = hashlib.sha256(body).hexdigest()
        if got != self.sha256:
            raise IntegrityError(
                f"manifest {redact(self.url)}: sha256 {got} does not match the "
                f"spec.model.sha256 {self.sha256}; nothing was fetched"
            )

    def probe(self, url: str, path: str) -> RemoteFile:
        """Ask for byte 0 to learn the size, range support and ETag in one round trip."""
        stream = self.client.get(url, {"Range": "bytes=0-0"})
        resp = stream.resp
        etag = resp.getheader("ETag") or resp.getheader("Last-Modified") or ""
        try:
            if resp.status == 206:
                m = _CONTENT_RANGE.match(resp.getheader("Content-Range") or "")
                resp.read()
                if m and m.group(3) != "*":
                    return RemoteFile(path, int(m.group(3)), None, url, etag, ranges=True)
                return RemoteFile(path, None, None, url, etag, ranges=False)
            length = resp.getheader("Content-Length")
            return RemoteFile(path, int(length) if length else None, None, url, etag, False)
        finally:
            stream.close()

    def _read_small(self, url: str) -> bytes:
        stream = self.client.get(url)
        try:
            data = stream.resp.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise TransientError(f"{redact(url)}: {exc}") from exc
        finally:
            stream.close()
        if len(data) > MAX_MANIFEST_BYTES:
            raise SourceError(f"{redact(url)}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        return data

    def open_range(self, f: RemoteFile, start: int, end: int | None) -> HttpStream:
        if not f.ranges:
            if start:
                raise SourceError(f"{redact(f.locator)}: server does not serve byte ranges")
            return self.client.get(f.locator)
        headers = {"Range": f"bytes={start}-{'' if end is None else end - 1}"}
        if f.version:
            headers["If-Range"] = f.version
        try:
            stream = self.client.get(f.locator, headers)
        except SourceError as exc:
            if "HTTP 416" in str(exc):
                raise SourceError(
                    f"{f.path}: the server's file is shorter than the {f.size} bytes the source "
                    f"lists (HTTP 416 for byte {start}); fix the manifest or the file"
                ) from exc
            raise
        if stream.resp.status != 206 and start > 0:
            stream.close()
            # The ETag changed under If-Range, or the server stopped honouring ranges.
            raise SourceError(
                f"{redact(f.locator)}: the file changed on the server during the download "
                "(ETag differs); run again to fetch the new version"
            )
        return stream

    def close(self) -> None:
        self.client.close()


def _parse_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return None


def parse_manifest(manifest: dict[str, object], manifest_url: str) -> Plan:
    """Validate a manifest; each mistake names the entry and field to fix."""
    where = redact(manifest_url)
    entries = manifest.get("files")
    if not isinstance(entries, list) or not entries:
        raise SourceError(f"manifest {where}: 'files' must be a non-empty list")
    files: list[RemoteFile] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise SourceError(f"manifest {where}: files[{i}] must be an object")
        raw_path = entry.get("path")
        if not isinstance(raw_path, str):
            raise SourceError(f"manifest {where}: files[{i}].path must be a string")
        path = safe_relpath(raw_path, f"manifest files[{i}].path")
        if path in seen:
            raise SourceError(f"manifest {where}: files[{i}].path {path!r} appears twice")
        seen.add(path)
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise SourceError(f"manifest {where}: files[{i}].size must be a non-negative integer")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _SHA256.match(digest.lower()):
            raise SourceError(f"manifest {where}: files[{i}].sha256 must be 64 hex digits")
        url = entry.get("url", quote(path))
        if not isinstance(url, str):
            raise SourceError(f"manifest {where}: files[{i}].url must be a string")
        files.append(RemoteFile(path, size, digest.lower(), urljoin(manifest_url, url)))
    revision = manifest.get("revision")
    return Plan(files=files, resolved_revision=revision if isinstance(revision, str) else None)
