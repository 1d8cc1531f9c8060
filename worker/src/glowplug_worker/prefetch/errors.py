"""The errors the prefetcher reports. Each names what a user can fix; the CLI prints one line."""

from __future__ import annotations


class PrefetchError(Exception):
    """Base class: a failure the prefetcher explains in one line and exits non-zero for."""

    exit_code = 1


class UsageError(PrefetchError):
    """A bad command line or environment value."""

    exit_code = 2


class CredentialsError(PrefetchError):
    """The source refused our credentials (HTTP 401/403, S3 AccessDenied, gated model)."""

    exit_code = 3


class NotFoundError(PrefetchError):
    """The model, revision, object or path does not exist at the source."""

    exit_code = 4


class NoSpaceError(PrefetchError):
    """The destination volume cannot hold the files."""

    exit_code = 5


class IntegrityError(PrefetchError):
    """A file's size or sha256 differs from what the source promised."""

    exit_code = 6


class UnsafePathError(PrefetchError):
    """A remote name or archive member would land outside the destination."""

    exit_code = 7


class DeadlineError(PrefetchError):
    """The overall deadline passed (downloading, retrying or waiting for another prefetcher)."""

    exit_code = 8


class SourceError(PrefetchError):
    """The source answered in a way we cannot use (bad manifest, unexpected status, ...)."""

    exit_code = 9


class TransientError(PrefetchError):
    """A failure worth retrying: 5xx, 429, a cut connection, a stalled or truncated body."""

    exit_code = 10


class TerminatedError(PrefetchError):
    """SIGTERM (the pod is being deleted or its deadline passed): partial files stay to resume."""

    exit_code = 143
