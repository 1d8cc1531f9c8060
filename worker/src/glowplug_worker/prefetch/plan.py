"""What a source resolves to: files with sizes and digests, and how to read byte ranges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch. `path` is a validated relative path inside the destination.

    size: bytes, or None when the source does not say (then fetched in one stream, no resume).
    sha256: lowercase hex digest when the source gives one; verified before publishing.
    locator: what the source needs to read it (a URL, an S3 key, a local path).
    version: an ETag or similar; a partial file from a different version is discarded.
    ranges: whether the source serves byte ranges for it.
    """

    path: str
    size: int | None
    sha256: str | None
    locator: str
    version: str = ""
    ranges: bool = True


@dataclass
class Plan:
    """The resolved source: files plus what the completion record keeps about it."""

    files: list[RemoteFile]
    resolved_revision: str | None = None
    # An archive is fetched as one file and unpacked in staging.
    archive: bool = False
    # pvc:// and file:// in in-place mode: nothing is fetched, files are linked.
    in_place_root: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)


class RangeStream(Protocol):
    """An open response body for one byte range."""

    def readinto(self, buf: memoryview) -> int: ...

    def close(self) -> None: ...


class Source(Protocol):
    """A scheme's implementation: resolve to a Plan, then serve byte ranges of its files."""

    def plan(self) -> Plan: ...

    def open_range(self, f: RemoteFile, start: int, end: int | None) -> RangeStream:
        """Open bytes [start, end) of f (end None: to the end). Raises a PrefetchError subclass;
        TransientError means the engine may retry."""
        ...

    def close(self) -> None: ...
