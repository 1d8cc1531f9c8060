"""Failures that are the ModelServer's problem, not a flag's: the worker's report names an error
type (docs/termination-report.md) that no startup flag can cause or cure. Such a failure makes
the ModelServer Degraded with a reason of its own, and no flag is blamed, searched or touched."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from glowplug_operator.rollback.outputs import Degraded
from glowplug_operator.rollback.state import StartResult

# The worker's error type names (prefetch/errors.py, serve/cli.py, serve/startup/) -> reason.
NOT_A_FLAG: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "CredentialsError": ("CredentialsRefused", "the source refused the credentials"),
        "NotFoundError": ("ModelNotFound", "the model was not found at the source"),
        "NoSpaceError": ("NoSpace", "the cache volume cannot hold the model"),
        "UsageError": ("InvalidConfig", "the worker refused its configuration"),
        "ModelConfigError": ("InvalidConfig", "the model cannot be served as configured"),
        "IntegrityError": ("CorruptData", "the downloaded weights failed their checksum"),
        "CheckpointError": ("CorruptData", "the weights are missing or corrupt"),
        "SafetensorError": ("CorruptData", "the weights are corrupt"),
    }
)


def error_type(failure: StartResult) -> str:
    """The report's error type ("" for a failure without a report)."""
    head, sep, _ = failure.error.partition(":")
    return head if sep and head.isidentifier() else ""


def not_a_flag_problem(failure: StartResult) -> Degraded | None:
    """Degraded with the failure's own reason when no flag can be to blame, else None."""
    known = NOT_A_FLAG.get(error_type(failure))
    if known is None:
        return None
    reason, what = known
    where = f" (phase {failure.phase})" if failure.phase else ""
    return Degraded(reason, f"{what}{where}: {failure.error}; no flag is blamed")


def same_failure(message: str, failure: StartResult) -> bool:
    """Whether `failure` repeats the one a flag state's blame `message` was written from
    (`outputs.blame_message`: "in phase PHASE: Type: message"): same phase, same error type."""
    if not failure.phase or not error_type(failure):
        return False
    return message.startswith(f"in phase {failure.phase}: {error_type(failure)}:")
