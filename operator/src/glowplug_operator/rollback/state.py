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
from dataclasses import field, replace
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BeforeValidator,
    ConfigDict,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_serializer,
    model_serializer,
)
from pydantic.dataclasses import dataclass

from glowplug_operator.spec import CAMEL_CASE
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

# The status is written by this code but kept in an object anyone can edit: reading it back is
# tolerant. A field of the wrong type reads as its empty value; a record without what identifies
# it (a name, a hash, a uid, a kind) is dropped; a mangled status.rollout reads as empty.
_CONFIG = ConfigDict(**CAMEL_CASE)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _names(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list | tuple) else ()


def _yes(value: Any) -> bool:
    return value is True


Text = Annotated[str, BeforeValidator(_text)]
OptionalText = Annotated[str | None, BeforeValidator(_text_or_none)]
Count = Annotated[int, BeforeValidator(_count)]
Names = Annotated[tuple[str, ...], BeforeValidator(_names)]
Yes = Annotated[bool, BeforeValidator(_yes)]

_adapters: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(cls: type[Any]) -> TypeAdapter[Any]:
    if cls not in _adapters:
        _adapters[cls] = TypeAdapter(cls)
    return _adapters[cls]


class _Record:
    """JSON in and out of the status: the same camelCase as the spec."""

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = _adapter(type(self)).dump_python(self, by_alias=True, mode="json")
        return out

    @classmethod
    def from_status(cls, raw: Any) -> Self | None:
        """`raw` as stored, or None when it is not a record of this kind."""
        if not isinstance(raw, Mapping):
            return None
        try:
            record: Self = _adapter(cls).validate_python(dict(raw))
        except ValidationError:
            return None
        return record


def _records(cls: type[_Record]) -> BeforeValidator:
    """A list of records as stored: the ones that read, in order."""

    def read(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            return ()
        found = (v if isinstance(v, cls) else cls.from_status(v) for v in value)
        return tuple(r for r in found if r is not None)

    return BeforeValidator(read)


def truncate(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


@dataclass(frozen=True, config=_CONFIG)
class FlagState(_Record):
    """One entry of status.optimizations[]."""

    name: str
    state: State
    reason: Text = ""
    message: Text = ""
    failures: Count = 0
    successes: Count = 0
    last_transition_time: Text = ""

    @property
    def on(self) -> bool:
        return self.state in ("Active", "Trial")

    @model_serializer(mode="wrap")
    def _without_empty_time(self, dump: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = dump(self)
        if not self.last_transition_time:  # the CRD wants a date-time, never ""
            out.pop("lastTransitionTime", None)
        return out

    def moved(self, state: State, reason: str, message: str, now: datetime) -> FlagState:
        """This flag in a new state; the transition time changes only when the state does."""
        when = self.last_transition_time if state == self.state else iso(now)
        return replace(
            self, state=state, reason=reason, message=truncate(message), last_transition_time=when
        )


@dataclass(frozen=True, config=_CONFIG)
class StartResult(_Record):
    """One start of a flag set: it became Ready, or it failed (and how)."""

    seq: Count
    at: Text
    kind: StartKind
    flag: OptionalText = None  # the report's own blame
    phase: OptionalText = None  # the report's failed phase
    error: Text = ""  # "Type: message" from the report, or the termination reason

    @property
    def ok(self) -> bool:
        return self.kind == "ready"


@dataclass(frozen=True, config=_CONFIG)
class SetRecord(_Record):
    """What was seen of one flag set (one hash)."""

    hash: str
    flags: Names
    starts: Count = 0
    failures: Count = 0
    successes: Count = 0
    reached_ready: Yes = False
    last_seq: Count = 0
    recent: Annotated[tuple[StartResult, ...], _records(StartResult)] = ()


def _ready_attempt(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


@dataclass(frozen=True, config=_CONFIG)
class PodRecord(_Record):
    """What was already counted of one pod: failed starts, and the start last seen Ready."""

    uid: str
    hash: Text
    failed: Count = 0
    ready_attempt: Annotated[int, BeforeValidator(_ready_attempt)] = -1
    last_seq: Count = 0


@dataclass(frozen=True, config=_CONFIG)
class Bisection(_Record):
    """An ongoing search for the flag to blame among `suspects`.

    Known: `origin` failed. The culprit is believed to be in `suspects`; `base` (the other flags
    left on) is believed innocent. The current trial runs `base` plus the suspects not in `off`.
    """

    mode: Mode
    origin: Names
    suspects: Names
    base: Names
    off: Names
    step: Annotated[int, BeforeValidator(lambda v: max(1, _count(v)))] = 1
    base_proven: Yes = False  # base (with something) reached Ready in a trial
    expanded: Yes = False  # suspects were widened to the base once already
    trial_failed: Yes = False  # a trial of this search failed (fresh evidence)
    confirming: Yes = False  # the last suspect runs on top of the base, to see it fail
    started_at: Text = ""

    @property
    def trial(self) -> frozenset[str]:
        return frozenset(self.base) | (frozenset(self.suspects) - frozenset(self.off))

    @classmethod
    def from_status(cls, raw: Any) -> Self | None:
        """A search without suspects is no search."""
        found = super().from_status(raw)
        return found if found is not None and found.suspects else None


def _bisection(value: Any) -> Bisection | None:
    return value if isinstance(value, Bisection) else Bisection.from_status(value)


def _rendered(value: Any) -> tuple[str, ...] | None:
    return _names(value) if isinstance(value, list | tuple) else None


def _fingerprints(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


@dataclass(frozen=True, config=_CONFIG)
class Rollout(_Record):
    """status.rollout: the bookkeeping of the rollback decision."""

    seq: Count = 0  # counter of absorbed start results, orders them
    trial_seq: Count = 0  # start results after this belong to the current effective flag set
    sets: Annotated[tuple[SetRecord, ...], _records(SetRecord)] = ()
    pods: Annotated[tuple[PodRecord, ...], _records(PodRecord)] = ()
    bisection: Annotated[Bisection | None, BeforeValidator(_bisection)] = None
    changes: Names = ()  # times of template changes, for the churn budget
    rendered: Annotated[tuple[str, ...] | None, BeforeValidator(_rendered)] = None
    nonce: OptionalText = None  # the trial token last decided
    retry_honoured: OptionalText = None
    fingerprints: Annotated[Mapping[str, str], BeforeValidator(_fingerprints)] = field(
        default_factory=dict
    )
    degraded: OptionalText = None  # the Degraded reason last reported
    not_flag_problem: Yes = False  # the empty flag set failed; no bisection until a Ready

    def record(self, digest: str) -> SetRecord | None:
        return next((s for s in self.sets if s.hash == digest), None)

    @field_serializer("fingerprints")
    def _sorted(self, prints: Mapping[str, str]) -> dict[str, str]:
        return dict(sorted(prints.items()))

    @classmethod
    def from_status(cls, raw: Any) -> Self:
        """A missing or mangled status.rollout gives an empty bookkeeping."""
        return super().from_status(raw) or cls()
