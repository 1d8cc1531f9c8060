"""The state the rollback decision keeps between reconciles, and how pods are counted into it.

Two parts, both plain JSON once serialised:

- `FlagState`: one entry of `status.optimizations[]` (what the user reads).
- `Rollout`: the bookkeeping in `status.rollout` (free-form in the CRD): per flag-set hash what
  was seen, per pod what was already counted (so restarts are never counted twice), the ongoing
  bisection, the times of template changes (churn budget), the retry annotation value already
  honoured. Everything needed to continue after an operator restart is in here.

`start_counting.absorb` counts pod observations into a `Rollout`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from glowplug_operator.timestamps import iso

State = Literal["Active", "Trial", "RolledBack", "Disabled"]
STATES: tuple[State, ...] = ("Active", "Trial", "RolledBack", "Disabled")
StartKind = Literal["ready", "failed", "timeout", "oom"]
Mode = Literal["Failing", "Intermittent"]

MESSAGE_CHARS = 256
OUTCOME_ERROR_CHARS = 160
RECENT_OUTCOMES = 10  # per flag set: the window of starts for intermittent failures
KEPT_POD_RECORDS = 32  # records of pods no longer observed, kept against double counting
KEPT_SET_RECORDS = 16


def truncate(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


@dataclass(frozen=True)
class FlagState:
    """One entry of status.optimizations[]."""

    name: str
    state: State
    reason: str = ""
    message: str = ""
    failures: int = 0
    successes: int = 0
    last_transition_time: str = ""

    @property
    def on(self) -> bool:
        return self.state in ("Active", "Trial")

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "reason": self.reason,
            "message": self.message,
            "failures": self.failures,
            "successes": self.successes,
        }
        if self.last_transition_time:  # the CRD wants a date-time, never ""
            out["lastTransitionTime"] = self.last_transition_time
        return out

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> FlagState | None:
        name = raw.get("name")
        state = raw.get("state")
        if not isinstance(name, str) or state not in STATES:
            return None
        return cls(
            name=name,
            state=state,
            reason=_str(raw.get("reason")),
            message=_str(raw.get("message")),
            failures=_int(raw.get("failures")),
            successes=_int(raw.get("successes")),
            last_transition_time=_str(raw.get("lastTransitionTime")),
        )

    def moved(self, state: State, reason: str, message: str, now: datetime) -> FlagState:
        """This flag in a new state; the transition time changes only when the state does."""
        when = self.last_transition_time if state == self.state else iso(now)
        return replace(
            self, state=state, reason=reason, message=truncate(message), last_transition_time=when
        )


@dataclass(frozen=True)
class StartResult:
    """One start of a flag set: it became Ready, or it failed (and how)."""

    seq: int
    at: str
    kind: StartKind
    flag: str | None = None  # the report's own blame
    phase: str | None = None  # the report's failed phase
    error: str = ""  # "Type: message" from the report, or the termination reason

    @property
    def ok(self) -> bool:
        return self.kind == "ready"

    def to_status(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind,
            "flag": self.flag,
            "phase": self.phase,
            "error": self.error,
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> StartResult | None:
        kind = raw.get("kind")
        if kind not in ("ready", "failed", "timeout", "oom"):
            return None
        return cls(
            seq=_int(raw.get("seq")),
            at=_str(raw.get("at")),
            kind=kind,
            flag=_str(raw.get("flag")) or None,
            phase=_str(raw.get("phase")) or None,
            error=_str(raw.get("error")),
        )


@dataclass(frozen=True)
class SetRecord:
    """What was seen of one flag set (one hash)."""

    hash: str
    flags: tuple[str, ...]
    starts: int = 0
    failures: int = 0
    successes: int = 0
    reached_ready: bool = False
    last_seq: int = 0
    recent: tuple[StartResult, ...] = ()

    def to_status(self) -> dict[str, Any]:
        return {
            "hash": self.hash,
            "flags": list(self.flags),
            "starts": self.starts,
            "failures": self.failures,
            "successes": self.successes,
            "reachedReady": self.reached_ready,
            "lastSeq": self.last_seq,
            "recent": [o.to_status() for o in self.recent],
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> SetRecord | None:
        digest = raw.get("hash")
        if not isinstance(digest, str):
            return None
        return cls(
            hash=digest,
            flags=_strs(raw.get("flags")),
            starts=_int(raw.get("starts")),
            failures=_int(raw.get("failures")),
            successes=_int(raw.get("successes")),
            reached_ready=raw.get("reachedReady") is True,
            last_seq=_int(raw.get("lastSeq")),
            recent=tuple(
                o
                for o in (StartResult.from_status(r) for r in _dicts(raw.get("recent")))
                if o is not None
            ),
        )


@dataclass(frozen=True)
class PodRecord:
    """What was already counted of one pod: failed starts, and the start last seen Ready."""

    uid: str
    hash: str
    failed: int = 0
    ready_attempt: int = -1
    last_seq: int = 0

    def to_status(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "hash": self.hash,
            "failed": self.failed,
            "readyAttempt": self.ready_attempt,
            "lastSeq": self.last_seq,
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> PodRecord | None:
        uid = raw.get("uid")
        if not isinstance(uid, str):
            return None
        ready = raw.get("readyAttempt")
        return cls(
            uid=uid,
            hash=_str(raw.get("hash")),
            failed=_int(raw.get("failed")),
            ready_attempt=ready if isinstance(ready, int) else -1,
            last_seq=_int(raw.get("lastSeq")),
        )


@dataclass(frozen=True)
class Bisection:
    """An ongoing search for the flag to blame among `suspects`.

    Known: `origin` failed. The culprit is believed to be in `suspects`; `base` (the other flags
    left on) is believed innocent. The current trial runs `base` plus the suspects not in `off`.
    """

    mode: Mode
    origin: tuple[str, ...]
    suspects: tuple[str, ...]
    base: tuple[str, ...]
    off: tuple[str, ...]
    step: int = 1
    base_proven: bool = False  # base (with something) reached Ready in a trial
    expanded: bool = False  # suspects were widened to the base once already
    trial_failed: bool = False  # a trial of this search failed (fresh evidence)
    confirming: bool = False  # the last suspect runs on top of the base, to see it fail
    started_at: str = ""

    @property
    def trial(self) -> frozenset[str]:
        return frozenset(self.base) | (frozenset(self.suspects) - frozenset(self.off))

    def to_status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "origin": list(self.origin),
            "suspects": list(self.suspects),
            "base": list(self.base),
            "off": list(self.off),
            "step": self.step,
            "baseProven": self.base_proven,
            "expanded": self.expanded,
            "trialFailed": self.trial_failed,
            "confirming": self.confirming,
            "startedAt": self.started_at,
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> Bisection | None:
        mode = raw.get("mode")
        suspects = _strs(raw.get("suspects"))
        if mode not in ("Failing", "Intermittent") or not suspects:
            return None
        return cls(
            mode=mode,
            origin=_strs(raw.get("origin")),
            suspects=suspects,
            base=_strs(raw.get("base")),
            off=_strs(raw.get("off")),
            step=max(1, _int(raw.get("step"))),
            base_proven=raw.get("baseProven") is True,
            expanded=raw.get("expanded") is True,
            trial_failed=raw.get("trialFailed") is True,
            confirming=raw.get("confirming") is True,
            started_at=_str(raw.get("startedAt")),
        )


@dataclass(frozen=True)
class Rollout:
    """status.rollout: the bookkeeping of the rollback decision."""

    seq: int = 0  # counter of absorbed outcomes, orders them
    trial_seq: int = 0  # outcomes after this belong to the current effective flag set
    sets: tuple[SetRecord, ...] = ()
    pods: tuple[PodRecord, ...] = ()
    bisection: Bisection | None = None
    changes: tuple[str, ...] = ()  # times of template changes, for the churn budget
    rendered: tuple[str, ...] | None = None  # effective flags last decided
    nonce: str | None = None  # restart nonce last decided
    retry_honoured: str | None = None
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    degraded: str | None = None  # the Degraded reason last reported
    not_flag_problem: bool = False  # the empty flag set failed; no bisection until a Ready

    def record(self, digest: str) -> SetRecord | None:
        return next((s for s in self.sets if s.hash == digest), None)

    def to_status(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "trialSeq": self.trial_seq,
            "sets": [s.to_status() for s in self.sets],
            "pods": [p.to_status() for p in self.pods],
            "bisection": self.bisection.to_status() if self.bisection else None,
            "changes": list(self.changes),
            "rendered": list(self.rendered) if self.rendered is not None else None,
            "nonce": self.nonce,
            "retryHonoured": self.retry_honoured,
            "fingerprints": dict(sorted(self.fingerprints.items())),
            "degraded": self.degraded,
            "notFlagProblem": self.not_flag_problem,
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> Rollout:
        """Tolerant: a missing or mangled status.rollout gives an empty bookkeeping."""
        if not isinstance(raw, Mapping):
            return cls()
        bisection = raw.get("bisection")
        rendered = raw.get("rendered")
        prints = raw.get("fingerprints")
        return cls(
            seq=_int(raw.get("seq")),
            trial_seq=_int(raw.get("trialSeq")),
            sets=tuple(s for s in (SetRecord.from_status(r) for r in _dicts(raw.get("sets"))) if s),
            pods=tuple(p for p in (PodRecord.from_status(r) for r in _dicts(raw.get("pods"))) if p),
            bisection=Bisection.from_status(bisection) if isinstance(bisection, dict) else None,
            changes=_strs(raw.get("changes")),
            rendered=_strs(rendered) if isinstance(rendered, list) else None,
            nonce=_str(raw.get("nonce")) or None,
            retry_honoured=_str(raw.get("retryHonoured")) or None,
            fingerprints=(
                {k: v for k, v in prints.items() if isinstance(k, str) and isinstance(v, str)}
                if isinstance(prints, dict)
                else {}
            ),
            degraded=_str(raw.get("degraded")) or None,
            not_flag_problem=raw.get("notFlagProblem") is True,
        )


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
