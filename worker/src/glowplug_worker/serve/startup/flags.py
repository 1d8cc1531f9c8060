"""The startup optimizations (flags) that `serve` understands, and the phase each one acts in.

`FLAG_PHASES` is the single source of the flag -> phase mapping. The operator blames a flag for a
failed start from the `phase` of the worker's termination report, so every flag's work must
happen inside the phase named here (and nowhere else).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger("glowplug.serve")

PREFETCH_WEIGHTS = "prefetch-weights"
BACKGROUND_IMPORT = "background-import"
SLIM_IMPORTS = "slim-imports"
HF_OFFLINE = "hf-offline"
FAST_LOAD = "fast-load"
NATIVE_MODEL = "native-model"
OVERLAP_DOWNLOAD = "overlap-download"

FLAG_PHASES: dict[str, str] = {
    PREFETCH_WEIGHTS: "import",
    BACKGROUND_IMPORT: "import",
    SLIM_IMPORTS: "import",
    HF_OFFLINE: "config",
    FAST_LOAD: "load",
    # Decided before the imports; its model is built and filled in `load` (where it is blamed;
    # a failure of its tokenizer or forward pass in another phase is left to bisection).
    NATIVE_MODEL: "load",
    # The overlap (the download thread beside the imports) is import-phase work; a failure of the
    # download itself is reported in phase `download`, as the prefetch init container's is.
    OVERLAP_DOWNLOAD: "import",
}
KNOWN_FLAGS: tuple[str, ...] = tuple(FLAG_PHASES)
ENV_VAR = "GLOWPLUG_OPTIMIZATIONS"


@dataclass(frozen=True)
class Flags:
    """The flags this process runs with (known ones, in `KNOWN_FLAGS` order) and the names it
    was given but does not know (custom flags meant for other images)."""

    active: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    def __contains__(self, name: object) -> bool:
        return name in self.active

    def blame(self, phase: str) -> list[str]:
        """The active flags that act in `phase`."""
        return [f for f in self.active if FLAG_PHASES[f] == phase]


def split_names(value: str | None) -> list[str]:
    """`"a, b,,c"` -> `["a", "b", "c"]` (lowercased, blanks dropped)."""
    if not value:
        return []
    return [part.strip().lower() for part in value.split(",") if part.strip()]


def parse_flags(cli_value: str | None, env_value: str | None) -> Flags:
    """Flags from `--optimizations` when given (even empty), else from `GLOWPLUG_OPTIMIZATIONS`.

    Unknown names are ignored with one log line each: the operator passes custom flags for other
    images through the same variable.
    """
    names = split_names(cli_value if cli_value is not None else env_value)
    return _build(names)


def _build(names: Iterable[str]) -> Flags:
    wanted = set(names)
    ignored = tuple(sorted(n for n in wanted if n not in FLAG_PHASES))
    for name in ignored:
        log.info(
            "ignoring unknown optimization %r (not a flag of glowplug-worker serve; known: %s)",
            name,
            ", ".join(KNOWN_FLAGS),
        )
    return Flags(active=tuple(f for f in KNOWN_FLAGS if f in wanted), ignored=ignored)
