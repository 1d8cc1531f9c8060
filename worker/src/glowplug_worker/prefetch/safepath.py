"""Refuse remote names that would escape the destination, and unpack archives safely."""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile

from glowplug_worker.prefetch.errors import NoSpaceError, SourceError, UnsafePathError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
RESERVED_PREFIX = ".glowplug"
# An archive with more members than this is refused before anything is written (an archive bomb
# of empty files exhausts inodes as surely as a large one exhausts space).
MAX_ARCHIVE_MEMBERS = 100_000


def _is_root(name: str) -> bool:
    """A directory member naming the archive's own root: `./` (`tar -C DIR -cf x.tar .`), `.`,
    or `` (Python's `tarfile.add(DIR, arcname="")`)."""
    return "\x00" not in name and all(p in ("", ".") for p in name.split("/"))


def safe_relpath(name: str, what: str = "remote file name") -> str:
    """Return `name` as a normalized relative POSIX path, or raise UnsafePathError.

    Refused: absolute paths, drive letters, backslashes, `..` anywhere, NUL bytes, empty names,
    and names under `.glowplug*` (the prefetcher's own bookkeeping).
    """
    if not name or "\x00" in name or "\\" in name:
        raise UnsafePathError(f"{what} {name!r}: empty or contains NUL/backslash; refused")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafePathError(f"{what} {name!r}: absolute paths are refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafePathError(f"{what} {name!r}: '..' would escape the destination; refused")
    if parts[0].startswith(RESERVED_PREFIX):
        raise UnsafePathError(
            f"{what} {name!r}: names starting with .glowplug are reserved; refused"
        )
    return posixpath.join(*parts)


def join_inside(root: str, rel: str) -> str:
    """Join a validated relative path under root, and check no existing symlink leads outside."""
    target = os.path.join(root, *rel.split("/"))
    real_root = os.path.realpath(root)
    parent = os.path.realpath(os.path.dirname(target))
    if parent != real_root and not parent.startswith(real_root + os.sep):
        raise UnsafePathError(f"{rel!r} resolves outside the destination through a link; refused")
    return target


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def extract_archive(
    archive: str,
    dest_dir: str,
    max_members: int = MAX_ARCHIVE_MEMBERS,
    max_bytes: int | None = None,
) -> list[str]:
    """Unpack a .tar/.tar.gz/.tgz/.zip into dest_dir; returns the relative file names.

    Every member is checked before anything is written: absolute names, `..`, links, devices
    and FIFOs are refused (UnsafePathError), so a hostile archive writes nothing. The archive's
    root directory (`./`, as `tar -C DIR -cf x.tar .` writes it) is accepted and skipped. More
    than `max_members` members, or more uncompressed bytes than `max_bytes` (default: the free
    space of dest_dir), are refused before anything is written.
    """
    if max_bytes is None:
        max_bytes = shutil.disk_usage(dest_dir).free
    lower = archive.lower()
    try:
        if lower.endswith(".zip"):
            return _extract_zip(archive, dest_dir, max_members, max_bytes)
        return _extract_tar(archive, dest_dir, max_members, max_bytes)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise SourceError(f"archive {os.path.basename(archive)}: cannot be read ({exc})") from exc


def _check_limits(archive: str, members: int, size: int, max_members: int, max_bytes: int) -> None:
    name = os.path.basename(archive)
    if members > max_members:
        raise SourceError(
            f"archive {name}: more than {max_members} members; refused (an archive bomb?)"
        )
    if size > max_bytes:
        raise NoSpaceError(
            f"archive {name}: unpacks to {size} bytes, more than the {max_bytes} bytes "
            "free in the destination; refused before writing"
        )


def _tar_members(tar: tarfile.TarFile, max_members: int, archive: str) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    while (m := tar.next()) is not None:  # counted while read: a bomb is not listed in memory
        members.append(m)
        if len(members) > max_members:
            _check_limits(archive, len(members), 0, max_members, 0)
    return members


def _extract_tar(archive: str, dest_dir: str, max_members: int, max_bytes: int) -> list[str]:
    names: list[str] = []
    with tarfile.open(archive, "r:*") as tar:
        members = _tar_members(tar, max_members, archive)
        for m in members:
            if m.isdir():
                if not _is_root(m.name):
                    safe_relpath(m.name, "archive member")
                continue
            if not m.isfile():
                raise UnsafePathError(
                    f"archive member {m.name!r}: links, devices and FIFOs are refused (pack the "
                    "files themselves: tar --dereference, zip without --symlinks)"
                )
            names.append(safe_relpath(m.name, "archive member"))
        _check_limits(
            archive,
            len(members),
            sum(m.size for m in members if m.isfile()),
            max_members,
            max_bytes,
        )
        for m, rel in zip([m for m in members if m.isfile()], names, strict=True):
            out = join_inside(_mkparents(dest_dir, rel), rel)
            src = tar.extractfile(m)
            if src is None:
                raise SourceError(f"archive member {m.name!r} has no data")
            with src, open(out, "wb") as fh:
                shutil.copyfileobj(src, fh, 1024 * 1024)
    return names


def _extract_zip(archive: str, dest_dir: str, max_members: int, max_bytes: int) -> list[str]:
    names: list[str] = []
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        # zipfile reads no more than each member's declared file_size: the sum is a true bound.
        _check_limits(archive, len(infos), sum(i.file_size for i in infos), max_members, max_bytes)
        files = []
        for info in infos:
            mode = info.external_attr >> 16
            if info.is_dir():
                if not _is_root(info.filename):
                    safe_relpath(info.filename, "archive member")
                continue
            if mode and not stat.S_ISREG(mode):
                raise UnsafePathError(
                    f"archive member {info.filename!r}: links and special files are refused "
                    "(pack the files themselves: zip without --symlinks)"
                )
            names.append(safe_relpath(info.filename, "archive member"))
            files.append(info)
        for info, rel in zip(files, names, strict=True):
            out = join_inside(_mkparents(dest_dir, rel), rel)
            with zf.open(info) as src, open(out, "wb") as fh:
                shutil.copyfileobj(src, fh, 1024 * 1024)
    return names


def _mkparents(root: str, rel: str) -> str:
    parent = os.path.dirname(os.path.join(root, *rel.split("/")))
    os.makedirs(parent, exist_ok=True)
    return root
