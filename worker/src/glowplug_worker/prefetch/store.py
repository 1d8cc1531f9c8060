"""The destination: a staging area, a lock shared by every prefetcher pointed at the same path,
and publication by atomic rename together with a completion record.

Layout for `--dest /models/m` (staging and lock sit beside it, on the same filesystem):

    /models/m.glowplug-staging/    files being assembled, resume state in .glowplug-parts/
    /models/m.glowplug-lock        flock()ed by the prefetcher that downloads
    /models/m/.glowplug-complete.json   the completion record, published with the files

When /models/m is itself a mount point (nothing beside it is shared), staging and lock move
inside it and files are renamed in one by one; the record, written last, is the commit point.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from typing import Any

from glowplug_worker.prefetch.errors import DeadlineError, NoSpaceError, UsageError
from glowplug_worker.prefetch.progress import human_bytes, log

RECORD_NAME = ".glowplug-complete.json"
RECORD_SCHEMA = "glowplug.dev/prefetch-record/v1"
STAGING_KEY = ".glowplug-staging.json"


@dataclass(frozen=True)
class CacheKey:
    """What makes two prefetches the same: the source, requested revision and include globs."""

    source: str
    revision: str | None
    includes: tuple[str, ...]
    sha256: str | None = None  # --sha256: files fetched under another digest are never reused

    def as_dict(self) -> dict[str, Any]:
        key: dict[str, Any] = {
            "source": self.source,
            "revision": self.revision,
            "includes": list(self.includes),
        }
        if self.sha256:  # without one, the key of earlier records: their caches stay reusable
            key["sha256"] = self.sha256
        return key


class Destination:
    def __init__(self, dest: str) -> None:
        self.dest = os.path.abspath(dest)
        parent = os.path.dirname(self.dest)
        if self.dest == parent:
            raise UsageError(f"--dest {dest!r}: cannot publish onto a filesystem root")
        self.inside = os.path.isdir(self.dest) and os.path.ismount(self.dest)
        base = self.dest + "/" if self.inside else self.dest
        self.staging = base + ".glowplug-staging"
        self.lock_path = base + ".glowplug-lock"
        self.record_path = os.path.join(self.dest, RECORD_NAME)
        self._lock_fd = -1

    # -- the completion record ------------------------------------------------------------
    def completed(self, key: CacheKey) -> dict[str, Any] | None:
        """The record when dest holds a complete fetch of `key` whose files are all present."""
        record = read_json(self.record_path)
        if record is None or record.get("schema") != RECORD_SCHEMA:
            return None
        if record.get("key") != key.as_dict():
            return None
        for entry in record.get("files", []):
            path = os.path.join(self.dest, *entry["path"].split("/"))
            try:
                if os.stat(path).st_size != entry["size"]:
                    return None
            except OSError:
                return None
        return record

    # -- the lock shared by prefetchers ---------------------------------------------------
    def acquire(self, key: CacheKey, deadline: float, poll_s: float = 0.2) -> dict[str, Any] | None:
        """Take the lock; returns a completion record instead if another prefetcher finished
        `key` meanwhile. A lock whose holder died is free: the kernel drops flock()s of dead
        processes, so a crashed prefetcher never blocks the next one."""
        os.makedirs(os.path.dirname(self.lock_path), exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        last_log = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                        raise UsageError(
                            f"{self.lock_path}: the destination's filesystem does not support "
                            "file locks (flock), which keep prefetchers sharing it apart; use a "
                            "volume that does (ext4, xfs, NFSv4, CephFS, ...)"
                        ) from exc
                    raise
            record = self.completed(key)
            if record is not None:
                os.close(fd)
                return record
            now = time.monotonic()
            if now > deadline:
                os.close(fd)
                raise DeadlineError(
                    f"the deadline passed waiting for another prefetcher ({self._holder()}) "
                    f"to finish {self.dest}"
                )
            if now - last_log >= 10.0:
                log(f"waiting for another prefetcher ({self._holder()}) to finish {self.dest}")
                last_log = now
            time.sleep(poll_s)
        self._lock_fd = fd
        holder = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder, 0)
        return None

    def _holder(self) -> str:
        try:
            with open(self.lock_path, encoding="utf-8") as fh:
                return fh.read().strip() or "unknown holder"
        except OSError:
            return "unknown holder"

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = -1

    # -- staging ---------------------------------------------------------------------------
    def prepare_staging(self, key: CacheKey) -> None:
        """Keep a staging area left by the same fetch (to resume it); wipe any other."""
        marker = os.path.join(self.staging, STAGING_KEY)
        if os.path.isdir(self.staging) and read_json(marker) != key.as_dict():
            log(f"discarding a staging area left by a different source: {self.staging}")
            shutil.rmtree(self.staging)
        os.makedirs(self.staging, exist_ok=True)
        write_json(marker, key.as_dict())

    def check_space(self, needed: int) -> None:
        """Raise NoSpaceError before downloading when the volume cannot hold `needed` bytes."""
        st = os.statvfs(self.staging)
        free = st.f_bavail * st.f_frsize
        if needed > free:
            raise NoSpaceError(
                f"{self.dest}: needs {human_bytes(needed)} more but the volume has "
                f"{human_bytes(free)} free; enlarge the cache volume (spec.cache.size) "
                "or narrow --include"
            )

    # -- publication -----------------------------------------------------------------------
    def publish(self, record: dict[str, Any], files: list[str]) -> None:
        """fsync the staged files, add the record, and make them visible at dest atomically."""
        shutil.rmtree(os.path.join(self.staging, ".glowplug-parts"), ignore_errors=True)
        os.unlink(os.path.join(self.staging, STAGING_KEY))
        for rel in files:
            path = os.path.join(self.staging, *rel.split("/"))
            if not os.path.islink(path):
                _fsync_path(path)
        body = {"schema": RECORD_SCHEMA, **record}
        if self.inside:
            self._publish_inside(body, files)
            return
        write_json(os.path.join(self.staging, RECORD_NAME), body, durable=True)
        _fsync_tree_dirs(self.staging)
        old = None
        if os.path.lexists(self.dest):
            if not os.path.isdir(self.dest) or os.path.islink(self.dest):
                raise UsageError(f"--dest {self.dest}: exists and is not a directory")
            if os.listdir(self.dest) and not os.path.exists(self.record_path):
                raise UsageError(
                    f"--dest {self.dest}: holds files that glowplug did not write; "
                    "point --dest at a new or empty directory"
                )
            old = f"{self.dest}.glowplug-old-{os.getpid()}"
            os.rename(self.dest, old)
        os.rename(self.staging, self.dest)
        _fsync_path(os.path.dirname(self.dest))
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def _publish_inside(self, body: dict[str, Any], files: list[str]) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path)
        for rel in files:
            target = os.path.join(self.dest, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(self.staging, *rel.split("/")), target)
        _fsync_tree_dirs(self.dest)
        write_json(self.record_path, body, durable=True)
        _fsync_path(self.dest)
        shutil.rmtree(self.staging, ignore_errors=True)


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            body = json.load(fh)
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def write_json(path: str, body: dict[str, Any], durable: bool = False) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(body, fh, indent=1, sort_keys=True)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree_dirs(root: str) -> None:
    for dirpath, _dirs, _files in os.walk(root):
        _fsync_path(dirpath)
