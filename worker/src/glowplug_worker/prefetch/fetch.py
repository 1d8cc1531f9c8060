"""The download engine: files in parallel, large files in concurrent byte ranges, bounded memory
(one buffer per worker), resumable partial files, retries with backoff under one deadline, and
sha256 computed as the contiguous prefix of each file grows (overlapping the download)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from glowplug_worker.prefetch.errors import (
    DeadlineError,
    IntegrityError,
    NoSpaceError,
    TransientError,
)
from glowplug_worker.prefetch.plan import RemoteFile, Source
from glowplug_worker.prefetch.progress import Progress, log
from glowplug_worker.prefetch.retry import sleep_before_retry
from glowplug_worker.prefetch.safepath import join_inside
from glowplug_worker.prefetch.store import read_json, write_json

BUFFER_BYTES = 1024 * 1024
CHECKPOINT_S = 0.5  # how often resume state is made durable (off the download threads)
PARTS_DIR = ".glowplug-parts"


@dataclass
class FetchSettings:
    concurrency: int
    chunk_bytes: int
    deadline: float  # time.monotonic() value
    max_attempts: int


@dataclass
class FetchResult:
    digests: dict[str, str]
    resumed_bytes: int
    fetched_bytes: int


class _Aborted(Exception):
    pass


class PartFile:
    """A file being assembled in staging plus its resume state (bytes done per chunk)."""

    def __init__(self, staging: str, f: RemoteFile, chunk: int) -> None:
        self.f = f
        self.chunk = chunk
        self.path = join_inside(_mkparents(staging, f.path), f.path)
        self.state_path = os.path.join(
            staging, PARTS_DIR, hashlib.sha1(f.path.encode()).hexdigest() + ".json"
        )
        self.lock = threading.Lock()
        self._save_lock = threading.Lock()
        self.identity = {"size": f.size, "version": f.version, "sha256": f.sha256, "chunk": chunk}
        self.done: dict[int, int] = {}
        self.digest: str | None = None
        # hash follower
        self._hash = hashlib.sha256()
        self._complete: set[int] = set()
        self._next = 0
        self._hashing = False
        self.fd = -1
        self._users = 0
        self._dirty = False

    @property
    def nchunks(self) -> int:
        if self.f.size is None or not self.f.ranges:
            return 1
        return max(1, -(-self.f.size // self.chunk))

    def bounds(self, i: int) -> tuple[int, int | None]:
        if self.f.size is None:
            return 0, None
        if not self.f.ranges:
            return 0, self.f.size
        return i * self.chunk, min(self.f.size, (i + 1) * self.chunk)

    def prepare(self) -> int:
        """Create or resume the staged file; returns bytes already present. The file is closed
        again: it is open only while a worker uses it, so a repository with thousands of files
        holds at most `concurrency` descriptors."""
        state = read_json(self.state_path)
        resumable = (
            state is not None
            and state.get("identity") == self.identity
            and self.f.size is not None
            and self.f.ranges
            and os.path.exists(self.path)
            and os.path.getsize(self.path) == self.f.size
        )
        if resumable and state is not None:
            digest, done = state.get("digest"), state.get("done")
            self.digest = digest if isinstance(digest, str) else None
            self.done = {int(k): int(v) for k, v in done.items()} if isinstance(done, dict) else {}
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if self.f.size:
                    _reserve(fd, self.f.size, self.f.path)
            finally:
                os.close(fd)
            self.save()
        return sum(self.done.values())

    @contextlib.contextmanager
    def use(self) -> Iterator[None]:
        """Hold the file open (shared by the workers on it) for the duration."""
        with self.lock:
            if self._users == 0:
                self.fd = os.open(self.path, os.O_RDWR)
            self._users += 1
        try:
            yield
        finally:
            with self.lock:
                self._users -= 1
                if self._users == 0:
                    os.close(self.fd)
                    self.fd = -1

    def save(self, done: dict[int, int] | None = None) -> None:
        with self.lock:
            body = {
                "identity": self.identity,
                "done": dict(self.done) if done is None else done,
                "digest": self.digest,
            }
        with self._save_lock:
            write_json(self.state_path, body)

    def record(self, i: int, done: int) -> None:
        """Note progress in memory; checkpoint() makes it durable."""
        with self.lock:
            self.done[i] = done
            self._dirty = True

    def checkpoint(self) -> None:
        """fdatasync the bytes behind the progress noted so far, then save that progress: the
        saved state never vouches for bytes that are not on disk."""
        with self.lock:
            if not self._dirty:
                return
            snapshot, self._dirty = dict(self.done), False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:  # discarded meanwhile
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self.save(snapshot)

    def chunk_complete(self, i: int) -> None:
        """Mark chunk i done and hash every newly contiguous chunk (one hashing thread a file)."""
        with self.lock:
            self._complete.add(i)
            if self._hashing:
                return
            self._hashing = True
        view = memoryview(bytearray(4 * BUFFER_BYTES))  # one per hashing thread: bounded
        while True:
            with self.lock:
                if self._next not in self._complete:
                    self._hashing = False
                    return
                c = self._next
                self._next += 1
            start, end = self.bounds(c)
            pos, stop = start, end if end is not None else os.fstat(self.fd).st_size
            while pos < stop:
                n = os.preadv(self.fd, [view[: min(len(view), stop - pos)]], pos)
                if not n:
                    break
                self._hash.update(view[:n])
                pos += n

    def finish(self) -> str:
        """All chunks done: check size and digest; returns the sha256."""
        if self.digest is None:
            self.digest = self._hash.hexdigest()
        size = os.fstat(self.fd).st_size
        if self.f.size is not None and size != self.f.size:
            self.discard()
            raise IntegrityError(f"{self.f.path}: {size} bytes received, expected {self.f.size}")
        if self.f.sha256 and self.digest != self.f.sha256:
            got = self.digest
            self.discard()
            raise IntegrityError(
                f"{self.f.path}: sha256 {got} does not match the source's {self.f.sha256}; "
                "the partial file was discarded (the source or the network corrupted it)"
            )
        os.fdatasync(self.fd)  # a resumed run trusts a recorded digest: the bytes must be on disk
        self.save()
        return self.digest

    def discard(self) -> None:
        for p in (self.path, self.state_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        self.digest = None


def fetch_files(
    source: Source,
    files: list[RemoteFile],
    staging: str,
    settings: FetchSettings,
    progress: Progress,
) -> FetchResult:
    """Fetch `files` into `staging`; raises a PrefetchError. Partial files stay for a rerun."""
    os.makedirs(os.path.join(staging, PARTS_DIR), exist_ok=True)
    parts = [PartFile(staging, f, settings.chunk_bytes) for f in files]
    resumed = 0
    abort = threading.Event()
    tasks: list[tuple[PartFile, int]] = []
    remaining = dict.fromkeys(parts, 0)
    for p in parts:
        got = p.prepare()
        resumed += got
        progress.add_resumed(got)
        if p.digest is not None:  # finished and verified before a restart
            progress.file_finished()
            continue
        with p.use():
            for i in range(p.nchunks):
                start, end = p.bounds(i)
                if end is not None and start + p.done.get(i, 0) >= end:
                    p.chunk_complete(i)
                else:
                    tasks.append((p, i))
                    remaining[p] += 1
            if remaining[p] == 0:
                p.finish()
                progress.file_finished()
    if resumed:
        log(f"resuming: {resumed} bytes already in staging are reused")
    lock = threading.Lock()

    def run(p: PartFile, i: int) -> None:
        with p.use():
            _fetch_chunk(source, p, i, settings, progress, abort)
            p.chunk_complete(i)
            with lock:
                remaining[p] -= 1
                last = remaining[p] == 0
            if last:
                p.finish()
                progress.file_finished()

    workers = max(1, min(settings.concurrency, len(tasks)))
    stop = threading.Event()
    checkpointer = threading.Thread(
        target=_checkpoint_loop, args=(parts, stop), name="prefetch-checkpoint", daemon=True
    )
    checkpointer.start()
    try:
        errors = _run_pool(workers, tasks, run, abort)
    finally:
        stop.set()
        checkpointer.join()
        for p in parts:  # what was fetched before an error is kept for the rerun
            p.checkpoint()
    if errors:
        real = [e for e in errors if not isinstance(e, _Aborted)]
        raise (real or errors)[0]
    return FetchResult(
        digests={p.f.path: p.digest or "" for p in parts},
        resumed_bytes=resumed,
        fetched_bytes=progress.fetched,
    )


def _checkpoint_loop(parts: list[PartFile], stop: threading.Event) -> None:
    while not stop.wait(CHECKPOINT_S):
        for p in parts:
            p.checkpoint()


def _run_pool(
    workers: int,
    tasks: list[tuple[PartFile, int]],
    run: Callable[[PartFile, int], None],
    abort: threading.Event,
) -> list[BaseException]:
    """Run the chunk tasks; on the first error stop the others. Returns the errors."""
    errors: list[BaseException] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="prefetch") as pool:
        futures = [pool.submit(run, p, i) for p, i in tasks]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # SIGTERM/Ctrl-C in the main thread: stop the workers too
            abort.set()
            for fut in futures:
                fut.cancel()
            raise
        errors = [e for f in done if (e := f.exception()) is not None]
        if errors:
            abort.set()
            for fut in futures:
                fut.cancel()
    return errors


def _fetch_chunk(
    source: Source,
    p: PartFile,
    i: int,
    s: FetchSettings,
    progress: Progress,
    abort: threading.Event,
) -> None:
    start, end = p.bounds(i)
    resumable = p.f.ranges and p.f.size is not None
    done = p.done.get(i, 0) if resumable else 0
    buf = bytearray(BUFFER_BYTES)
    view = memoryview(buf)
    failures = 0
    while True:
        pos = start + done
        if end is not None and pos >= end:
            break
        if abort.is_set():
            raise _Aborted()
        if time.monotonic() > s.deadline:
            raise DeadlineError(f"{p.f.path}: the overall deadline passed while downloading")
        attempt_start = done
        try:
            stream = source.open_range(p.f, pos, end)
            splice = end is not None and getattr(stream, "can_splice", False)
            try:
                while end is None or pos < end:
                    if abort.is_set():
                        raise _Aborted()
                    if time.monotonic() > s.deadline:
                        raise DeadlineError(
                            f"{p.f.path}: the overall deadline passed while downloading"
                        )
                    want = BUFFER_BYTES if end is None else min(BUFFER_BYTES, end - pos)
                    if splice:  # kernel-to-kernel, no copy through Python
                        n = stream.splice_into(p.fd, pos, want)  # type: ignore[attr-defined]
                    else:
                        n = _fill(stream, view[:want])
                        if n:
                            _pwrite(p.fd, view[:n], pos, p.f.path)
                    if n == 0:
                        if end is None:
                            break
                        raise TransientError(
                            f"{p.f.path}: the body ended at byte {pos}, expected {end}"
                        )
                    pos += n
                    done += n
                    progress.add(n)
                    if resumable:
                        p.record(i, done)
                if end is None:
                    break
            finally:
                stream.close()
        except TransientError as exc:
            failures = 1 if done > attempt_start else failures + 1
            if failures >= s.max_attempts:
                raise TransientError(f"{exc} (gave up after {failures} attempts)") from exc
            if end is None:  # no ranges: start over
                progress.add(-done)
                done = 0
            if sleep_before_retry(
                failures, s.deadline, f"{p.f.path} from byte {start + done}", exc, abort
            ):
                raise _Aborted() from exc


def _fill(stream: object, view: memoryview) -> int:
    """Read until `view` is full or the body ends."""
    got = 0
    readinto = stream.readinto  # type: ignore[attr-defined]
    while got < len(view):
        n = readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _pwrite(fd: int, data: memoryview, pos: int, name: str) -> None:
    while data:
        try:
            n = os.pwrite(fd, data, pos)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"{name}: no space left on the destination volume") from exc
            raise
        data = data[n:]
        pos += n


def _reserve(fd: int, size: int, name: str) -> None:
    os.ftruncate(fd, size)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(
                f"{name}: cannot reserve {size} bytes, no space left on the destination volume"
            ) from exc
        # EOPNOTSUPP/EINVAL: filesystems without fallocate; the free-space check still ran.


def _mkparents(root: str, rel: str) -> str:
    os.makedirs(os.path.dirname(os.path.join(root, *rel.split("/"))), exist_ok=True)
    return root
