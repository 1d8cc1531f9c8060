"""pvc:// and file:// sources: weights already on a mounted volume, copied or used in place.

pvc://claim/path reads <pvc root>/claim/path, where the operator mounts the claim
(GLOWPLUG_PVC_ROOT, default /mnt/pvc). A source directory that is itself a glowplug
destination (it has a completion record) gives sha256 digests, which are verified.
"""

from __future__ import annotations

import os

from glowplug_worker.prefetch.errors import NotFoundError, SourceError, UnsafePathError
from glowplug_worker.prefetch.plan import Plan, RemoteFile
from glowplug_worker.prefetch.safepath import RESERVED_PREFIX, is_archive, safe_relpath
from glowplug_worker.prefetch.store import RECORD_NAME, read_json


class LocalStream:
    def __init__(self, path: str, start: int, end: int | None) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.pos = start
        self.end = end

    def readinto(self, buf: memoryview) -> int:
        want = len(buf) if self.end is None else min(len(buf), self.end - self.pos)
        if want <= 0:
            return 0
        n = os.preadv(self.fd, [buf[:want]], self.pos)
        self.pos += n
        return n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LocalSource:
    def __init__(self, root: str, described_as: str, in_place: bool) -> None:
        self.root = root
        self.described_as = described_as
        self.in_place = in_place

    def plan(self) -> Plan:
        if not os.path.exists(self.root):
            raise NotFoundError(
                f"{self.described_as}: {self.root} does not exist; check the path and that "
                "the volume is mounted"
            )
        if os.path.isfile(self.root):
            name = safe_relpath(os.path.basename(self.root), "file name")
            f = RemoteFile(name, os.path.getsize(self.root), None, self.root)
            return Plan(files=[f], archive=is_archive(name) and not self.in_place)
        real_root = os.path.realpath(self.root)
        record = read_json(os.path.join(self.root, RECORD_NAME)) or {}
        digests = {e["path"]: e.get("sha256") for e in record.get("files", []) if "path" in e}
        files: list[RemoteFile] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(RESERVED_PREFIX))
            for name in sorted(filenames):
                if name.startswith(RESERVED_PREFIX):
                    continue
                full = os.path.join(dirpath, name)
                rel = safe_relpath(os.path.relpath(full, self.root).replace(os.sep, "/"))
                real = os.path.realpath(full)
                if not real.startswith(real_root + os.sep):
                    raise UnsafePathError(
                        f"{self.described_as}: {rel} is a link leading outside the source; refused"
                    )
                if not os.path.isfile(real):
                    continue
                files.append(RemoteFile(rel, os.path.getsize(real), digests.get(rel), real))
        if not files:
            raise NotFoundError(f"{self.described_as}: {self.root} holds no files")
        return Plan(
            files=files,
            resolved_revision=record.get("resolved_revision"),
            in_place_root=real_root if self.in_place else None,
        )

    def open_range(self, f: RemoteFile, start: int, end: int | None) -> LocalStream:
        try:
            return LocalStream(f.locator, start, end)
        except OSError as exc:
            raise SourceError(f"{self.described_as}: cannot read {f.path}: {exc}") from exc

    def close(self) -> None:
        pass
