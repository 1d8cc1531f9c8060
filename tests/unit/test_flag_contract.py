"""The flag -> phase mapping the operator blames flags with is the worker's own mapping, and
every built-in flag of the API has one."""

from __future__ import annotations

from glowplug_operator.rollback.reports import FLAG_PHASES as OPERATOR_PHASES
from glowplug_operator.spec import BUILTIN_OPTIMIZATIONS
from glowplug_worker.report import PHASES
from glowplug_worker.serve.startup.flags import FLAG_PHASES as SERVE_PHASES


def test_the_operator_uses_the_workers_mapping() -> None:
    serve_side = {k: v for k, v in OPERATOR_PHASES.items() if k != "prefetch-page-cache"}
    assert serve_side == dict(SERVE_PHASES)
    # The one prefetcher flag acts in the download phase (the init container's).
    assert OPERATOR_PHASES["prefetch-page-cache"] == "download"


def test_every_builtin_flag_has_a_phase_the_worker_reports() -> None:
    assert set(OPERATOR_PHASES) == set(BUILTIN_OPTIMIZATIONS)
    assert set(OPERATOR_PHASES.values()) <= set(PHASES)
