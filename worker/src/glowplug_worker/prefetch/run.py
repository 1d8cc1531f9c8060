"""One prefetch, start to finish: reuse a completed cache, or lock, plan, fetch, verify, publish."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from glowplug_worker.prefetch.errors import IntegrityError, NotFoundError, UsageError
from glowplug_worker.prefetch.fetch import FetchSettings, fetch_files
from glowplug_worker.prefetch.options import Options, SourceURI, effective_revision
from glowplug_worker.prefetch.plan import Plan, RemoteFile, Source
from glowplug_worker.prefetch.progress import Progress, human_bytes, log
from glowplug_worker.prefetch.retry import with_retries
from glowplug_worker.prefetch.safepath import extract_archive
from glowplug_worker.prefetch.store import CacheKey, Destination, write_json
from glowplug_worker.prefetch.warm import verify, warm

ARCHIVE_DIR = ".glowplug-archive"


@dataclass
class Outcome:
    reused: bool
    fetched_bytes: int
    resumed_bytes: int
    total_bytes: int
    files: int
    seconds: float
    resolved_revision: str | None

    @property
    def throughput(self) -> float:
        return self.fetched_bytes / self.seconds if self.seconds > 0 else 0.0


def make_source(opts: Options, revision: str | None, env: Mapping[str, str]) -> Source:
    """The scheme's implementation; boto3 and huggingface_hub are imported only here."""
    src: SourceURI = opts.source
    if src.scheme in ("http", "https"):
        from glowplug_worker.prefetch.httpclient import HttpClient
        from glowplug_worker.prefetch.httpsrc import HttpSource

        return HttpSource(src.location, HttpClient(None, opts.stall_timeout_s), opts.sha256)
    if src.scheme == "s3":
        from glowplug_worker.prefetch.s3src import S3Source

        return S3Source(src.location, opts, env)
    if src.scheme == "hf":
        from glowplug_worker.prefetch.hfsrc import HfSource

        return HfSource(src.location, revision, opts, env)
    from glowplug_worker.prefetch.localsrc import LocalSource

    if src.scheme == "pvc":
        root = os.path.join(opts.pvc_root, *src.location.split("/"))
    else:
        root = src.location
    return LocalSource(root, src.raw, in_place=opts.local_mode == "in-place")


def select(plan: Plan, includes: tuple[str, ...]) -> list[RemoteFile]:
    if not includes or plan.archive:
        return plan.files
    return [f for f in plan.files if any(fnmatch.fnmatch(f.path, g) for g in includes)]


def prefetch(opts: Options, env: Mapping[str, str]) -> Outcome:
    started = time.monotonic()
    deadline = started + opts.timeout_s
    revision = effective_revision(opts.source, opts.revision)
    key = CacheKey(opts.source.canonical, revision, tuple(sorted(opts.includes)), opts.sha256)
    dest = Destination(opts.dest)

    record = dest.completed(key)
    if record is not None and opts.verify_reuse and not _intact(dest, record, opts):
        record = None
    if record is None:
        record = dest.acquire(key, deadline)
        if record is None:
            try:
                record = dest.completed(key)
                if record is not None and opts.verify_reuse and not _intact(dest, record, opts):
                    _distrust(dest, record)
                    record = None
                if record is None:
                    return _download(opts, env, key, revision, dest, started, deadline)
            finally:
                dest.release()
        elif opts.verify_reuse and not _intact(dest, record, opts):
            raise IntegrityError(
                f"{dest.dest}: the completed cache failed its recorded sha256s while another "
                "prefetcher holds it; try again"
            )
    return _reuse(opts, dest, record, started)


def _intact(dest: Destination, record: dict[str, Any], opts: Options) -> bool:
    """Every file of the record has a recorded sha256 and still matches it."""
    files = record.get("files", [])
    if any(not e.get("sha256") for e in files):
        log(f"{dest.dest}: the completed cache has files without a recorded sha256; not reused")
        return False
    paths = {
        e["path"]: (os.path.join(dest.dest, *e["path"].split("/")), e["sha256"]) for e in files
    }
    log(f"verifying {len(paths)} cached files against their recorded sha256 before reuse")
    try:
        verify(paths, threads=min(8, opts.concurrency))
    except IntegrityError as error:
        log(f"{dest.dest}: {error}; fetching again")
        return False
    return True


def _distrust(dest: Destination, record: dict[str, Any]) -> None:
    """Mark the record as matching no key: the files are fetched again and replace it."""
    write_json(dest.record_path, {**record, "key": None, "distrusted": True}, durable=True)


def _reuse(opts: Options, dest: Destination, record: dict[str, Any], started: float) -> Outcome:
    files = record.get("files", [])
    total = sum(int(e["size"]) for e in files)
    log(
        f"reusing the completed cache at {dest.dest} ({len(files)} files, {human_bytes(total)}, "
        f"revision {record.get('resolved_revision')}); nothing to download"
    )
    if opts.warm_page_cache:
        _warm([os.path.join(dest.dest, *e["path"].split("/")) for e in files], opts)
    return Outcome(
        True, 0, 0, total, len(files), time.monotonic() - started, record.get("resolved_revision")
    )


def _warm(paths: list[str], opts: Options) -> None:
    t = time.monotonic()
    n = warm(paths, threads=min(8, opts.concurrency))
    log(f"page cache warmed: {human_bytes(n)} read in {time.monotonic() - t:.1f}s")


def _download(
    opts: Options,
    env: Mapping[str, str],
    key: CacheKey,
    revision: str | None,
    dest: Destination,
    started: float,
    deadline: float,
) -> Outcome:
    source = make_source(opts, revision, env)
    try:
        plan = with_retries(
            source.plan, f"listing {opts.source.canonical}", deadline, opts.max_attempts
        )
        files = select(plan, opts.includes)
        if not files:
            raise NotFoundError(
                f"--include {' '.join(opts.includes)} matches none of the source's "
                f"{len(plan.files)} files (e.g. {', '.join(f.path for f in plan.files[:3])})"
            )
        total = sum(f.size or 0 for f in files)
        log(
            f"fetching {len(files)} files, {human_bytes(total)} from {opts.source.canonical}"
            + (f" at revision {plan.resolved_revision}" if plan.resolved_revision else "")
        )
        dest.prepare_staging(key)
        fetch_root = os.path.join(dest.staging, ARCHIVE_DIR) if plan.archive else dest.staging
        resumed_bytes = 0
        if plan.in_place_root is None:
            needed = sum(max(0, (f.size or 0) - _size(fetch_root, f.path)) for f in files)
            dest.check_space(needed)
        progress = Progress(total, len(files), opts.progress_interval_s)
        progress.start()
        try:
            if plan.in_place_root is not None:
                digests = _link_in_place(files, dest.staging)
            else:
                settings = FetchSettings(
                    concurrency=opts.concurrency,
                    chunk_bytes=opts.chunk_bytes,
                    deadline=deadline,
                    max_attempts=opts.max_attempts,
                )
                result = fetch_files(source, files, fetch_root, settings, progress)
                digests, resumed_bytes = result.digests, result.resumed_bytes
        finally:
            progress.stop()
        fetched = progress.fetched
        entries: list[dict[str, Any]] = [
            {"path": f.path, "size": f.size, "sha256": digests.get(f.path)} for f in files
        ]
        if plan.archive:
            entries = _unpack(fetch_root, files[0].path, dest.staging)
        seconds = time.monotonic() - started
        total = sum(int(e["size"] or 0) for e in entries)
        record: dict[str, Any] = {
            "key": key.as_dict(),
            "source": opts.source.canonical,
            "requested_revision": revision,
            "resolved_revision": plan.resolved_revision,
            "files": entries,
            "total_bytes": total,
            "in_place_root": plan.in_place_root,
            "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "download_seconds": round(seconds, 3),
        }
        dest.publish(record, [e["path"] for e in entries])
        log(
            f"published {len(entries)} files ({human_bytes(total)}) at "
            f"{dest.dest}: {human_bytes(fetched)} fetched, {human_bytes(resumed_bytes)} resumed, "
            f"{seconds:.1f}s, {human_bytes(fetched / seconds if seconds else 0)}/s"
        )
        if opts.warm_page_cache and plan.in_place_root is not None:
            _warm([os.path.join(dest.dest, *e["path"].split("/")) for e in entries], opts)
        return Outcome(
            False,
            fetched,
            resumed_bytes,
            total,
            len(entries),
            time.monotonic() - started,
            plan.resolved_revision,
        )
    finally:
        source.close()


def _size(root: str, rel: str) -> int:
    try:
        return os.path.getsize(os.path.join(root, *rel.split("/")))
    except OSError:
        return 0


def _link_in_place(files: list[RemoteFile], staging: str) -> dict[str, str]:
    """Verify source files with known digests, then publish symlinks to them."""
    known = {f.path: (f.locator, f.sha256) for f in files if f.sha256}
    if known:
        log(f"verifying {len(known)} files in place against their recorded sha256")
        verify({k: (path, digest) for k, (path, digest) in known.items() if digest})
    for f in files:
        link = os.path.join(staging, *f.path.split("/"))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            os.unlink(link)
        if not os.access(f.locator, os.R_OK):
            raise UsageError(f"{f.locator}: not readable by the prefetcher")
        os.symlink(f.locator, link)
    return {f.path: f.sha256 for f in files if f.sha256}


def _unpack(archive_root: str, name: str, staging: str) -> list[dict[str, Any]]:
    archive = os.path.join(archive_root, *name.split("/"))
    log(f"unpacking {name}")
    names = extract_archive(archive, staging)
    shutil.rmtree(archive_root)
    entries = []
    for rel in names:
        path = os.path.join(staging, *rel.split("/"))
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(4 * 1024 * 1024):
                h.update(block)
        entries.append({"path": rel, "size": os.path.getsize(path), "sha256": h.hexdigest()})
    return entries
