"""Bisection of suspect flags: pure steps over a `Bisection` record.

Known: the flag set `origin` failed. The culprit is believed to be among `suspects`; `base`, the
other flags, is believed innocent. Each trial runs `base` plus the suspects not in `off` (the
first half of the suspects, rounded up, is switched off):

- the trial fails -> the culprit is among the suspects left on; the ones switched off are
  cleared and stay off until the search ends (so trials shrink towards the empty set);
- the trial passes -> the culprit is among the suspects switched off, and the ones left on join
  the base (which is now proven: it reached Ready).

One suspect left: blamed if a set without it passed (or it failed on top of a proven base);
otherwise one more trial runs the base alone. If a trial with every suspect off still fails, the
base becomes the suspects once (all the rest stays off); if a trial of the empty set fails, it is
not a flag problem.

Intermittent mode (the failing set had reached Ready before): a trial passes only after several
Ready starts, and a suspect found by elimination alone (no trial of the search failed) must fail
once more on top of the base before it is blamed; if it passes instead, the search is
inconclusive and nothing is blamed. n suspects cost at most ceil(log2(n)) + 1 trials.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from glowplug_operator.rollback.state import Bisection, Mode, StartResult
from glowplug_operator.timestamps import iso

# Starts a trial must pass (Ready, no failure in between) before it counts as passed.
FAILING_TRIAL_STARTS = 1
INTERMITTENT_TRIAL_STARTS = 3


class Verdict(enum.Enum):
    PENDING = "Pending"
    PASSED = "Passed"
    FAILED = "Failed"


@dataclass(frozen=True)
class Step:
    bisection: Bisection | None  # the next trial; None when the search is over
    blame: str | None  # the flag found to blame, when the search is over with a culprit
    inconclusive: bool = False  # over without a culprit: the last suspect did not fail again


def half(suspects: Sequence[str]) -> tuple[str, ...]:
    """The suspects switched off in a trial: the first half, rounded up."""
    return tuple(suspects[: (len(suspects) + 1) // 2])


def new_bisection(
    mode: Mode, origin: tuple[str, ...], suspects: tuple[str, ...], now: datetime
) -> Bisection:
    return Bisection(
        mode=mode,
        origin=origin,
        suspects=suspects,
        base=tuple(f for f in origin if f not in suspects),
        off=half(suspects),
        started_at=iso(now),
    )


def starts_needed(bisection: Bisection) -> int:
    return INTERMITTENT_TRIAL_STARTS if bisection.mode == "Intermittent" else FAILING_TRIAL_STARTS


def judge_trial(bisection: Bisection, trial: Sequence[StartResult]) -> Verdict:
    """A trial fails at its first failed start, passes after enough Ready starts."""
    if any(not o.ok and o.kind != "oom" for o in trial):
        return Verdict.FAILED
    if sum(1 for o in trial if o.ok) >= starts_needed(bisection):
        return Verdict.PASSED
    return Verdict.PENDING


def next_step(bisection: Bisection, verdict: Verdict, now: datetime) -> Step:
    on = tuple(s for s in bisection.suspects if s not in bisection.off)
    step = bisection.step + 1
    if verdict is Verdict.FAILED:
        if bisection.confirming:
            return Step(None, bisection.suspects[0])
        if not on:
            if bisection.base and not bisection.expanded:
                swapped = replace(
                    bisection,
                    suspects=bisection.base,
                    base=(),
                    off=half(bisection.base),
                    step=step,
                    base_proven=False,
                    expanded=True,
                    trial_failed=True,
                )
                return Step(swapped, None)
            return Step(None, None)
        if len(on) == 1 and bisection.base_proven:
            return Step(None, on[0])
        narrowed = replace(bisection, suspects=on, off=half(on), step=step, trial_failed=True)
        return Step(narrowed, None)
    if verdict is Verdict.PASSED:
        if bisection.confirming:
            return Step(None, None, inconclusive=True)
        base = tuple(f for f in bisection.origin if f in set(bisection.base) | set(on))
        if len(bisection.off) == 1:
            if bisection.mode == "Intermittent" and not bisection.trial_failed:
                # Only the starting failures point at it: see it fail once more first.
                confirm = replace(
                    bisection,
                    suspects=bisection.off,
                    base=base,
                    off=(),
                    step=step,
                    base_proven=True,
                    confirming=True,
                )
                return Step(confirm, None)
            return Step(None, bisection.off[0])
        narrowed = replace(
            bisection,
            suspects=bisection.off,
            base=base,
            off=half(bisection.off),
            step=step,
            base_proven=True,
        )
        return Step(narrowed, None)
    return Step(bisection, None)
