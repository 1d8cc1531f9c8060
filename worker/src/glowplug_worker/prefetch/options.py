"""The prefetcher's inputs: the parsed source URI and the options, validated once at the edge."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from glowplug_worker.prefetch.errors import UsageError

Scheme = Literal["hf", "http", "https", "s3", "pvc", "file"]
SCHEMES: tuple[str, ...] = ("hf", "http", "https", "s3", "pvc", "file")
DEFAULT_PVC_ROOT = "/mnt/pvc"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class SourceURI:
    """A parsed `--source`. `location` is the part after the scheme, without `@revision`."""

    raw: str
    scheme: Scheme
    location: str
    revision: str | None = None

    @property
    def canonical(self) -> str:
        """The source without its revision: what the completion record keys on."""
        if self.scheme in ("http", "https"):
            return self.location
        return f"{self.scheme}://{self.location}"


@dataclass(frozen=True)
class Options:
    source: SourceURI
    dest: str
    revision: str | None = None
    includes: tuple[str, ...] = ()
    concurrency: int = 16
    chunk_bytes: int = 32 * 1024 * 1024
    timeout_s: float = 6 * 3600.0
    stall_timeout_s: float = 30.0
    max_attempts: int = 8
    progress_interval_s: float = 10.0
    local_mode: Literal["copy", "in-place"] = "copy"
    pvc_root: str = DEFAULT_PVC_ROOT
    optimizations: tuple[str, ...] = field(default_factory=tuple)
    verify_reuse: bool = False  # a completed cache is reused only after its sha256s check out
    sha256: str | None = None  # http(s) sources: the digest of the body at the URL

    @property
    def warm_page_cache(self) -> bool:
        return "prefetch-page-cache" in self.optimizations


def parse_source(raw: str) -> SourceURI:
    """Parse `--source`; a URI we cannot use raises UsageError naming the accepted forms."""
    text = raw.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise UsageError(
            f"--source {raw!r}: expected hf://org/name[@revision], https://..., http://..., "
            "s3://bucket/prefix, pvc://claim/path or file:///path"
        )
    if scheme == "hf":
        repo, at, rev = rest.partition("@")
        repo = repo.strip("/")
        if not _HF_REPO.match(repo):
            raise UsageError(f"--source {raw!r}: a Hugging Face source is hf://org/name[@revision]")
        if at and not rev:
            raise UsageError(f"--source {raw!r}: empty revision after '@'")
        return SourceURI(raw, "hf", repo, rev or None)
    if scheme in ("http", "https"):
        parts = urlsplit(text)
        if not parts.hostname:
            raise UsageError(f"--source {raw!r}: the URL has no host")
        return SourceURI(raw, scheme, text)  # type: ignore[arg-type]
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UsageError(f"--source {raw!r}: an S3 source is s3://bucket/prefix")
        return SourceURI(raw, "s3", f"{bucket}/{prefix}")
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        if not claim:
            raise UsageError(f"--source {raw!r}: a volume source is pvc://claim/path")
        if ".." in path.split("/"):
            raise UsageError(f"--source {raw!r}: a pvc:// path must not contain '..'")
        return SourceURI(raw, "pvc", f"{claim}/{path}".rstrip("/"))
    parts = urlsplit(text)
    path = unquote(parts.path)
    if parts.netloc not in ("", "localhost") or not path.startswith("/"):
        raise UsageError(f"--source {raw!r}: a local source is file:///absolute/path")
    return SourceURI(raw, "file", path)


def parse_sha256(value: str | None, source: SourceURI) -> str | None:
    """`--sha256`: 64 hex digits, for http(s):// sources only (the body at the URL: the single
    file, or the manifest that lists the files with their own digests)."""
    if value is None:
        return None
    digest = value.strip().lower()
    if not _SHA256.match(digest):
        raise UsageError(f"--sha256 {value!r}: expected 64 hexadecimal digits")
    if source.scheme not in ("http", "https"):
        raise UsageError(
            f"--sha256 applies to http:// and https:// sources only, not {source.scheme}://"
        )
    return digest


def effective_revision(source: SourceURI, revision: str | None) -> str | None:
    """`--revision` and `@revision` must agree when both are given."""
    if source.revision and revision and source.revision != revision:
        raise UsageError(
            f"--revision {revision!r} contradicts the @{source.revision} in --source; give one"
        )
    return revision or source.revision


def parse_optimizations(value: str | None) -> tuple[str, ...]:
    """GLOWPLUG_OPTIMIZATIONS: comma-separated flag names."""
    if not value:
        return ()
    return tuple(name.strip() for name in value.split(",") if name.strip())
