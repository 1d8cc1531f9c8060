"""The per-flag rollback decision, driven over many reconcile rounds by a small cluster simulator.

The simulator runs one replica of the pod template the decision asks for. Each round it makes one
container start whose result a rule chooses from the flags that are on ("crashes with a report
naming X when X is on", "crashes one start in three when X is on", ...), then asks `decide` again.
Every round also checks that deciding twice changes nothing, and that the state survives a trip
through JSON (an operator restart between any two rounds).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from glowplug_operator.rollback import (
    CHURN_BUDGET_CHANGES,
    Decision,
    DeploymentProgress,
    FlagState,
    Policy,
    Rollout,
    decide,
    flag_states_from_status,
    observe_pod,
)
from glowplug_operator.rollback.start_counting import absorb
from glowplug_worker.report import ErrorInfo, TerminationReport

NOW0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ROUND = timedelta(seconds=60)
BUDGET = 90  # seconds; a pod not Ready two rounds after scheduling has timed out

Kind = Literal["ready", "crash", "oom", "hang", "pull", "config"]


@dataclass(frozen=True)
class Start:
    kind: Kind
    flag: str | None = None  # what the worker's report blames itself
    phase: str | None = None  # the failed phase in the report
    report: bool = True  # a crash writes a report (only if flag or phase)
    error: str = "RuntimeError"  # the report's error type
    command: Literal["prefetch", "serve"] = "serve"


READY = Start("ready")
Rule = Callable[[frozenset[str], Mapping[str, int]], Start]


def crashes_naming(culprit: str) -> Rule:
    return lambda on, _: Start("crash", flag=culprit, phase="import") if culprit in on else READY


def crashes_in_phase(culprit: str, phase: str) -> Rule:
    return lambda on, _: Start("crash", phase=phase) if culprit in on else READY


def crashes_silently(culprit: str) -> Rule:
    return lambda on, _: Start("crash") if culprit in on else READY


def never_ready(culprit: str) -> Rule:
    return lambda on, _: Start("hang") if culprit in on else READY


def one_in_three(culprit: str, *, report: bool) -> Rule:
    def rule(on: frozenset[str], counts: Mapping[str, int]) -> Start:
        if culprit in on and counts[culprit] % 3 == 2:
            return Start("crash", flag=culprit if report else None)
        return READY

    return rule


def fails_with(error: str, phase: str, flag: str | None = None, when: str | None = None) -> Rule:
    """Every start fails with `error` in `phase` (only while flag `when` is on, if given)."""
    command: Literal["prefetch", "serve"] = "prefetch" if phase == "download" else "serve"
    failing = Start("crash", flag=flag, phase=phase, error=error, command=command)
    return lambda on, _: failing if when is None or when in on else READY


def always(kind: Kind) -> Rule:
    return lambda _on, _counts: Start(kind)


def one_unrelated_crash_at(start: int) -> Rule:
    def rule(on: frozenset[str], counts: Mapping[str, int]) -> Start:
        return Start("crash") if counts["__starts__"] == start else READY

    return rule


def each_blames_its_first_flag(order: Sequence[str]) -> Rule:
    def rule(on: frozenset[str], _: Mapping[str, int]) -> Start:
        first = next((f for f in order if f in on), None)
        return Start("crash", flag=first) if first else READY

    return rule


@dataclass
class SimPod:
    uid: str
    flags: tuple[str, ...]
    digest: str
    nonce: str | None
    created: datetime
    crashes: int = 0
    ready: bool = False
    hanging: bool = False
    blocked: str | None = None
    last: Start | None = None
    deleting: bool = False

    def raw(self) -> dict[str, Any]:
        annotations = {"glowplug.dev/optimizations": ",".join(self.flags)}
        if self.nonce is not None:
            annotations["glowplug.dev/trial"] = self.nonce
        created = self.created.isoformat()
        meta: dict[str, Any] = {
            "name": self.uid,
            "uid": self.uid,
            "creationTimestamp": created,
            "annotations": annotations,
            "labels": {"glowplug.dev/optimizations-hash": self.digest},
        }
        crashlooping = self.crashes > 0 and not self.ready and not self.hanging
        worker: dict[str, Any] = {
            "name": "worker",
            "restartCount": self.crashes - 1 if crashlooping else self.crashes,
        }
        if self.deleting:
            meta["deletionTimestamp"] = created
            worker["state"] = {"terminated": {"exitCode": 143, "reason": "Error"}}
        elif self.blocked:
            worker["state"] = {"waiting": {"reason": self.blocked}}
        elif crashlooping:
            worker["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
        else:
            worker["state"] = {"running": {"startedAt": created}}
        if self.last is not None:
            worker["lastState"] = {"terminated": self._terminated(self.last)}
        return {
            "metadata": meta,
            "status": {
                "phase": "Running",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": created},
                    {"type": "Ready", "status": "True" if self.ready else "False"},
                ],
                "containerStatuses": [worker],
            },
        }

    def _terminated(self, start: Start) -> dict[str, Any]:
        if start.kind == "oom":
            return {"exitCode": 137, "reason": "OOMKilled"}
        out: dict[str, Any] = {"exitCode": 1, "reason": "Error"}
        if start.report and (start.flag or start.phase):
            out["message"] = TerminationReport(
                command=start.command,
                outcome="failed",
                phase=start.phase,
                optimizations=list(self.flags),
                flag=start.flag,
                error=ErrorInfo(start.error, "x" * 2000),
            ).to_json()
        return out


@dataclass
class Sim:
    spec: list[str]
    rule: Rule
    policy: Policy = "Automatic"
    churn: bool = False  # Ready pods are replaced every round (node churn, scaling...)
    restart_between_rounds: bool = False  # serialise state to JSON and back every round
    fingerprints: dict[str, str] | None = None
    retry: str | None = None
    now: datetime = NOW0
    states: tuple[FlagState, ...] = ()
    rollout: Rollout = field(default_factory=Rollout)
    pods: list[SimPod] = field(default_factory=list)
    decision: Decision | None = None
    starts: int = 0
    starts_at_blame: int | None = None
    changes: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    rollbacks: list[tuple[str, str]] = field(default_factory=list)
    history: list[tuple[tuple[str, ...], tuple[tuple[str, str, str], ...]]] = field(
        default_factory=list
    )
    _uids: int = 0

    def template(self) -> tuple[tuple[str, ...], str, str | None]:
        if self.decision is None:
            from glowplug_operator.contract import flag_set_hash

            return tuple(self.spec), flag_set_hash(self.spec, self.fingerprints), None
        d = self.decision
        return d.effective_flags, d.flags_hash, d.restart_nonce

    def cluster_step(self) -> None:
        flags, digest, nonce = self.template()
        self.pods = [p for p in self.pods if not p.deleting]
        for p in self.pods:
            if (p.digest, p.nonce) != (digest, nonce) or (self.churn and p.ready):
                p.deleting = True
        if not any(not p.deleting for p in self.pods):
            self._uids += 1
            self.pods.append(SimPod(f"pod-{self._uids}", flags, digest, nonce, self.now))
        pod = next(p for p in self.pods if not p.deleting)
        if pod.ready or pod.hanging or pod.blocked:
            return
        self.starts += 1
        self.counts["__starts__"] += 1
        for name in flags:
            self.counts[name] += 1
        start = self.rule(frozenset(flags), self.counts)
        if start.kind == "ready":
            pod.ready = True
        elif start.kind == "hang":
            pod.hanging = True
        elif start.kind in ("pull", "config"):
            pod.blocked = (
                "ImagePullBackOff" if start.kind == "pull" else ("CreateContainerConfigError")
            )
        else:
            pod.crashes += 1
            pod.last = start

    def round(self) -> Decision:
        self.cluster_step()
        self.now += ROUND
        observed = [observe_pod(p.raw(), self.now) for p in self.pods]
        kwargs: dict[str, Any] = dict(
            spec_flags=self.spec,
            policy=self.policy,
            pods=observed,
            progress=None,
            budget_seconds=BUDGET,
            retry_token=self.retry,
            now=self.now,
            fingerprints=self.fingerprints,
        )
        decision = decide(flag_states=self.states, rollout=self.rollout, **kwargs)
        assert decide(flag_states=self.states, rollout=self.rollout, **kwargs) == decision
        again = decide(flag_states=decision.flag_states, rollout=decision.rollout, **kwargs)
        assert (again.effective_flags, again.restart_nonce) == (
            decision.effective_flags,
            decision.restart_nonce,
        ), "deciding again on the same pods changed the template"
        assert again.flag_states == decision.flag_states
        assert again.rollout == decision.rollout
        assert again.condition == decision.condition and again.degraded == decision.degraded
        assert (again.events, again.rollbacks, again.template_changed) == ((), (), False)
        self.decision = decision
        self.states, self.rollout = decision.flag_states, decision.rollout
        if self.restart_between_rounds:
            self.states = tuple(
                s
                for s in (
                    FlagState.from_status(json.loads(json.dumps(s.to_status())))
                    for s in self.states
                )
                if s is not None
            )
            self.rollout = Rollout.from_status(json.loads(json.dumps(self.rollout.to_status())))
            assert self.states == decision.flag_states
            assert self.rollout == decision.rollout
        self.changes += decision.template_changed
        self.events += [(e.type, e.reason, e.message) for e in decision.events]
        self.rollbacks += [(r.flag, r.reason) for r in decision.rollbacks]
        if decision.rollbacks and self.starts_at_blame is None:
            self.starts_at_blame = self.starts
        self.history.append(
            (decision.effective_flags, tuple((s.name, s.state, s.reason) for s in self.states))
        )
        return decision

    def run(self, rounds: int) -> Decision:
        for _ in range(rounds):
            decision = self.round()
        return decision

    def state_of(self, name: str) -> str:
        return next(s.state for s in self.states if s.name == name)

    def rolled_back(self) -> dict[str, str]:
        return {s.name: s.reason for s in self.states if s.state == "RolledBack"}


BUILTIN4 = ["prefetch-weights", "background-import", "hf-offline", "fast-load"]
IMPORT3 = ["prefetch-weights", "background-import", "slim-imports", "fast-load"]
CUSTOM4 = [f"custom-{i}" for i in range(1, 5)]
CUSTOM8 = [f"custom-{i}" for i in range(1, 9)]


@dataclass(frozen=True)
class Scenario:
    spec: list[str]
    rule: Rule
    rounds: int
    rolled_back: dict[str, str]  # flag -> reason; every other flag must end Active
    degraded: str | None = None
    max_changes: int | None = None
    max_starts: int | None = None
    churn: bool = False
    condition: str | None = None  # the OptimizationsHealthy reason at the end


SCENARIOS = [
    pytest.param(
        Scenario(
            BUILTIN4,
            crashes_naming("background-import"),
            6,
            {"background-import": "StartupFailed"},
            max_changes=1,
            max_starts=2,
            condition="FlagsRolledBack",
        ),
        id="report-names-the-flag:one-failed-start-one-change",
    ),
    pytest.param(
        Scenario(
            BUILTIN4,
            crashes_in_phase("fast-load", "load"),
            6,
            {"fast-load": "FailedInPhase"},
            max_changes=1,
            max_starts=2,
        ),
        id="report-phase-of-exactly-one-flag",
    ),
    pytest.param(
        Scenario(
            BUILTIN4,
            lambda on, _: (
                Start("crash", flag="flag-of-another-image", phase="load")
                if "fast-load" in on
                else READY
            ),
            6,
            {"fast-load": "FailedInPhase"},
            max_changes=1,
        ),
        id="report-names-an-unknown-flag:falls-back-to-its-phase",
    ),
    pytest.param(
        Scenario(
            IMPORT3,
            crashes_in_phase("slim-imports", "import"),
            12,
            # the first trial leaves only slim-imports on among the import flags: evidence
            {"slim-imports": "FailedInPhase"},
            max_changes=2,
            max_starts=3,
        ),
        id="phase-shared-by-three-flags:bisect-until-the-phase-names-one",
    ),
    pytest.param(
        Scenario(
            IMPORT3,
            crashes_in_phase("prefetch-weights", "import"),
            12,
            {"prefetch-weights": "Bisected"},
            max_changes=3,
            max_starts=3,
        ),
        id="phase-shared-by-three-flags:bisect-only-them",
    ),
    pytest.param(
        Scenario(
            BUILTIN4, never_ready("hf-offline"), 20, {"hf-offline": "Bisected"}, max_changes=4
        ),
        id="never-ready-within-budget:bisect",
    ),
    pytest.param(
        Scenario(
            BUILTIN4,
            always("crash"),
            20,
            {},
            degraded="StartupFailedWithoutFlags",
            max_changes=5,
            condition="StartupFailedWithoutFlags",
        ),
        id="always-crashes:not-a-flag-problem",
    ),
    pytest.param(
        Scenario([], always("crash"), 6, {}, degraded="StartupFailedWithoutFlags", max_changes=0),
        id="no-flags-at-all:not-a-flag-problem",
    ),
    pytest.param(
        Scenario(BUILTIN4, always("oom"), 6, {}, degraded="OutOfMemory", max_changes=0),
        id="oom-killed:not-a-flag-problem",
    ),
    pytest.param(
        Scenario(BUILTIN4, always("pull"), 6, {}, degraded="ImagePullFailed", max_changes=0),
        id="image-pull:not-a-flag-problem",
    ),
    pytest.param(
        Scenario(BUILTIN4, always("config"), 6, {}, degraded="ContainerConfigError", max_changes=0),
        id="container-config-error:not-a-flag-problem",
    ),
    pytest.param(
        Scenario(
            BUILTIN4,
            one_in_three("background-import", report=True),
            12,
            {"background-import": "StartupFailed"},
            max_changes=1,
            churn=True,
        ),
        id="intermittent-with-report:blamed-at-its-first-failure",
    ),
    pytest.param(
        Scenario(
            CUSTOM4,
            one_in_three("custom-3", report=False),
            40,
            {"custom-3": "IntermittentFailures"},
            max_changes=CHURN_BUDGET_CHANGES,
            churn=True,
        ),
        id="intermittent-silent-custom-flag:repeated-failures-then-bisect",
    ),
    pytest.param(
        Scenario(
            CUSTOM4,
            one_unrelated_crash_at(3),
            12,
            {},
            max_changes=0,
            churn=True,
            condition="AllActive",
        ),
        id="healthy-set-one-unrelated-failure:nobody-blamed",
    ),
    pytest.param(
        Scenario(
            BUILTIN4, always("ready"), 4, {}, max_changes=0, max_starts=1, condition="AllActive"
        ),
        id="healthy:trial-flags-become-active",
    ),
    # The ModelServer's own problems: Degraded with their reason, no flag touched (issue 16).
    pytest.param(
        Scenario(
            ["prefetch-page-cache", "fast-load"],
            fails_with("CredentialsError", "download"),
            6,
            {},
            degraded="CredentialsRefused",
            max_changes=0,
        ),
        id="prefetch-401:credentials-not-the-download-flag",
    ),
    pytest.param(
        Scenario(
            ["prefetch-page-cache", "fast-load"],
            fails_with("NotFoundError", "download"),
            6,
            {},
            degraded="ModelNotFound",
            max_changes=0,
        ),
        id="prefetch-404:not-found-not-the-download-flag",
    ),
    pytest.param(
        Scenario(
            ["prefetch-page-cache", "fast-load"],
            fails_with("NoSpaceError", "download"),
            6,
            {},
            degraded="NoSpace",
            max_changes=0,
        ),
        id="prefetch-no-space:not-the-download-flag",
    ),
    pytest.param(
        Scenario(
            BUILTIN4,
            fails_with("ModelConfigError", "config"),
            6,
            {},
            degraded="InvalidConfig",
            max_changes=0,
        ),
        id="bad-max-model-len:invalid-config-not-hf-offline",
    ),
    pytest.param(
        Scenario(
            BUILTIN4,
            fails_with("CheckpointError", "load", flag="fast-load"),
            6,
            {},
            degraded="CorruptData",
            max_changes=0,
        ),
        id="corrupt-weights:corrupt-data-not-fast-load",
    ),
    pytest.param(
        Scenario(
            BUILTIN4,
            fails_with("RuntimeError", "load", when="fast-load"),
            6,
            {"fast-load": "FailedInPhase"},
            max_changes=1,
        ),
        id="phase-failure-that-goes-away-without-the-flag:rolled-back",
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenarios(scenario: Scenario) -> None:
    sim = Sim(scenario.spec, scenario.rule, churn=scenario.churn)
    decision = sim.run(scenario.rounds)
    assert sim.rolled_back() == scenario.rolled_back
    for name in scenario.spec:
        if name not in scenario.rolled_back:
            assert sim.state_of(name) == "Active" or scenario.degraded, name
    assert (decision.degraded.reason if decision.degraded else None) == scenario.degraded
    if scenario.max_changes is not None:
        assert sim.changes <= scenario.max_changes
    if scenario.max_starts is not None:
        assert sim.starts <= scenario.max_starts
    if scenario.condition is not None:
        assert decision.condition.reason == scenario.condition
    assert [f for f, _ in sim.rollbacks] == list(scenario.rolled_back)
    warnings = [e for e in sim.events if e[1] == "OptimizationRolledBack"]
    assert len(warnings) == len(scenario.rolled_back)
    for (_, _, message), flag in zip(warnings, scenario.rolled_back, strict=True):
        assert flag in message
    expected_on = tuple(f for f in scenario.spec if f not in scenario.rolled_back)
    assert decision.effective_flags == expected_on


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_an_operator_restart_between_any_two_rounds_changes_nothing(scenario: Scenario) -> None:
    plain = Sim(scenario.spec, scenario.rule, churn=scenario.churn)
    restarted = Sim(scenario.spec, scenario.rule, churn=scenario.churn, restart_between_rounds=True)
    plain.run(scenario.rounds)
    restarted.run(scenario.rounds)
    assert restarted.history == plain.history
    assert restarted.events == plain.events


@pytest.mark.parametrize(
    ("spec", "culprit"),
    [pytest.param(CUSTOM4, c, id=f"n4-{c}") for c in CUSTOM4]
    + [pytest.param(CUSTOM8, c, id=f"n8-{c}") for c in CUSTOM8],
)
def test_bisection_finds_a_silent_culprit_in_log2_n_plus_1_extra_starts(
    spec: list[str], culprit: str
) -> None:
    sim = Sim(spec, crashes_silently(culprit))
    sim.run(3 * len(spec))
    assert sim.rolled_back() == {culprit: "Bisected"}
    assert all(sim.state_of(n) == "Active" for n in spec if n != culprit)
    assert sim.starts_at_blame is not None
    trials = sim.starts_at_blame - 1  # the failed start that began the search is not extra
    assert trials <= math.log2(len(spec)) + 1
    # one change per trial, plus putting the innocent flags back on
    assert sim.changes <= math.log2(len(spec)) + 2
    assert sim.history[-1][0] == tuple(n for n in spec if n != culprit)


def test_a_flag_off_only_for_a_trial_is_disabled_bisecting_not_rolled_back() -> None:
    sim = Sim(CUSTOM4, crashes_silently("custom-4"))
    decision = sim.run(1)
    assert decision.condition.status == "False"
    assert decision.condition.reason == "Bisecting"
    assert "custom-1, custom-2" in decision.condition.message
    off = {s.name: (s.state, s.reason) for s in decision.flag_states if not s.on}
    assert off == {"custom-1": ("Disabled", "Bisecting"), "custom-2": ("Disabled", "Bisecting")}
    assert decision.rollbacks == ()
    assert [e.reason for e in decision.events] == ["BisectingOptimizations"]


def test_policy_off_reports_but_never_changes_the_template() -> None:
    sim = Sim(BUILTIN4, crashes_naming("background-import"), policy="Off")
    decision = sim.run(8)
    assert sim.changes == 0
    assert decision.effective_flags == tuple(BUILTIN4)
    assert sim.state_of("background-import") != "RolledBack"
    state = next(s for s in decision.flag_states if s.name == "background-import")
    assert state.reason == "WouldRollBack"
    assert decision.condition.status == "False"
    failing = [e for e in sim.events if e[1] == "OptimizationFailing"]
    assert len(failing) == 1 and "background-import" in failing[0][2]
    assert sim.rollbacks == []


def test_policy_off_with_a_silent_failure_does_not_bisect() -> None:
    sim = Sim(CUSTOM4, crashes_silently("custom-2"), policy="Off")
    decision = sim.run(6)
    assert sim.changes == 0 and decision.effective_flags == tuple(CUSTOM4)
    assert decision.condition.reason == "StartsFailing"


def test_retry_annotation_brings_a_flag_back_once_per_value() -> None:
    flaky = {"broken": True}

    def rule(on: frozenset[str], _: Mapping[str, int]) -> Start:
        if "background-import" in on and flaky["broken"]:
            return Start("crash", flag="background-import")
        return READY

    sim = Sim(BUILTIN4, rule)
    sim.run(3)
    assert sim.state_of("background-import") == "RolledBack"
    flaky["broken"] = False  # e.g. a new image fixed the race
    sim.retry = "background-import"
    decision = sim.round()
    assert sim.state_of("background-import") == "Trial"
    assert "background-import" in decision.effective_flags
    assert any(e[1] == "RetryingOptimization" for e in sim.events)
    sim.run(3)
    assert sim.state_of("background-import") == "Active"
    changes = sim.changes
    sim.run(3)  # the same annotation value is not honoured twice
    assert sim.changes == changes


def test_retry_that_still_fails_is_rolled_back_again() -> None:
    sim = Sim(BUILTIN4, crashes_naming("fast-load"))
    sim.run(3)
    sim.retry = "all"
    sim.run(4)
    assert sim.rolled_back() == {"fast-load": "StartupFailed"}
    assert [f for f, _ in sim.rollbacks] == ["fast-load", "fast-load"]


def test_a_rolled_back_flag_stays_off_until_its_definition_changes() -> None:
    prints = {name: "v1" for name in CUSTOM4}
    sim = Sim(CUSTOM4, crashes_naming("custom-2"), fingerprints=dict(prints))
    sim.run(4)
    assert sim.state_of("custom-2") == "RolledBack"
    sim.run(4)
    assert sim.state_of("custom-2") == "RolledBack"
    sim.rule = always("ready")
    sim.fingerprints = {**prints, "custom-2": "v2"}
    decision = sim.round()
    state = next(s for s in decision.flag_states if s.name == "custom-2")
    assert (state.state, state.reason) == ("Trial", "SpecChanged")
    sim.run(3)
    assert sim.state_of("custom-2") == "Active"


def test_spec_changes_add_trial_flags_and_drop_removed_ones() -> None:
    sim = Sim(["fast-load", "hf-offline"], always("ready"))
    sim.run(2)
    sim.spec = ["fast-load", "slim-imports"]
    decision = sim.round()
    assert [(s.name, s.state) for s in decision.flag_states] == [
        ("fast-load", "Active"),
        ("slim-imports", "Trial"),
    ]
    assert decision.condition.reason == "Evaluating"
    decision = sim.run(2)
    assert [s.state for s in decision.flag_states] == ["Active", "Active"]


def test_churn_budget_stops_template_changes_and_says_so() -> None:
    spec = [f"custom-{i}" for i in range(1, 13)]
    sim = Sim(spec, each_blames_its_first_flag(spec))
    decision = sim.run(20)  # 20 minutes: inside one 30-minute window
    assert sim.changes == CHURN_BUDGET_CHANGES
    assert decision.degraded is not None
    assert decision.degraded.reason == "RollbackBudgetExhausted"
    assert decision.condition.reason == "RollbackBudgetExhausted"
    assert len(sim.rolled_back()) == CHURN_BUDGET_CHANGES
    assert sum(1 for e in sim.events if e[1] == "RollbackBudgetExhausted") == 1
    sim.spec = spec[:-1]  # what the user changes is applied even past the budget
    decision = sim.round()
    assert spec[-1] not in decision.effective_flags
    assert all(s.name != spec[-1] for s in decision.flag_states)
    sim.run(25)  # the window slides: changes resume, never more than the budget per window
    assert len(sim.rolled_back()) > CHURN_BUDGET_CHANGES
    sim.run(200)  # many pods and flag sets later, status.rollout stays small
    assert len(json.dumps(sim.rollout.to_status())) < 16_000


def test_old_pods_of_a_previous_flag_set_are_not_blamed_on_the_new_one() -> None:
    sim = Sim(BUILTIN4, crashes_naming("background-import"))
    sim.run(1)
    assert sim.state_of("background-import") == "RolledBack"
    old = [observe_pod(p.raw(), sim.now) for p in sim.pods]
    # The old pod keeps crash-looping (more restarts, another report) while it terminates.
    sim.pods[0].crashes += 3
    sim.pods[0].last = Start("crash", phase="load")
    pods = [observe_pod(p.raw(), sim.now + ROUND) for p in sim.pods]
    assert pods[0].failed_starts > old[0].failed_starts
    decision = decide(
        spec_flags=BUILTIN4,
        policy="Automatic",
        flag_states=sim.states,
        rollout=sim.rollout,
        pods=pods,
        progress=None,
        budget_seconds=BUDGET,
        retry_token=None,
        now=sim.now + ROUND,
    )
    assert decision.effective_flags == ("prefetch-weights", "hf-offline", "fast-load")
    assert decision.rollbacks == () and not decision.template_changed
    assert next(s for s in decision.flag_states if s.name == "fast-load").state == "Trial"


def test_a_stuck_rollout_with_no_scheduled_pod_is_degraded_not_blamed() -> None:
    progress = DeploymentProgress(True, "ProgressDeadlineExceeded", "timed out", NOW0)
    decision = decide(
        spec_flags=BUILTIN4,
        policy="Automatic",
        flag_states=(),
        rollout=Rollout(),
        pods=[],
        progress=progress,
        budget_seconds=BUDGET,
        retry_token=None,
        now=NOW0,
    )
    assert decision.degraded is not None and decision.degraded.reason == "RolloutStuck"
    assert decision.effective_flags == tuple(BUILTIN4)


def test_pods_the_api_server_refuses_are_degraded_with_its_message_not_blamed() -> None:
    # Found by the hostile-spec suite: a runtimeClassName with no RuntimeClass left the
    # ModelServer "Starting" with no pod and no word of why.
    message = 'pods "m-6d9df5d5b8-" is forbidden: pod rejected: RuntimeClass "m" not found'
    progress = DeploymentProgress(False, "ReplicaSetUpdated", "", NOW0, replica_failure=message)
    decision = decide(
        spec_flags=BUILTIN4,
        policy="Automatic",
        flag_states=(),
        rollout=Rollout(),
        pods=[],
        progress=progress,
        budget_seconds=BUDGET,
        retry_token=None,
        now=NOW0,
    )
    assert decision.degraded is not None and decision.degraded.reason == "FailedCreate"
    assert 'RuntimeClass "m" not found' in decision.degraded.message
    assert decision.effective_flags == tuple(BUILTIN4) and decision.rollbacks == ()


@pytest.mark.parametrize(
    "raw",
    [None, {}, {"sets": "x", "pods": [1, {"uid": 3}], "bisection": {"mode": "Nope"}}, []],
    ids=["none", "empty", "mangled", "wrong-type"],
)
def test_mangled_rollout_status_reads_as_empty(raw: Any) -> None:
    rollout = Rollout.from_status(raw)
    assert rollout.bisection is None and rollout.sets == () and rollout.pods == ()


def test_flag_state_status_shape_is_camel_case_and_message_is_truncated() -> None:
    sim = Sim(BUILTIN4, crashes_naming("background-import"))
    sim.run(1)
    state = next(s for s in sim.states if s.name == "background-import")
    status = state.to_status()
    assert set(status) == {
        "name",
        "state",
        "reason",
        "message",
        "failures",
        "successes",
        "lastTransitionTime",
    }
    assert status["failures"] == 1
    assert len(status["message"]) <= 256
    assert "RuntimeError" in status["message"]
    assert FlagState.from_status(status) == state
    assert FlagState.from_status({"name": "x", "state": "Broken"}) is None


def test_not_a_flag_problem_does_not_churn() -> None:
    sim = Sim(BUILTIN4, always("crash"))
    sim.run(10)
    changes = sim.changes
    tried = [flags for flags, _ in sim.history]
    assert () in tried  # the search arrived at the empty set, and it still failed
    decision = sim.run(50)
    assert sim.changes == changes  # no template change after the verdict
    assert decision.effective_flags == tuple(BUILTIN4)  # the flags are not blamed
    assert decision.degraded is not None
    assert decision.degraded.reason == "StartupFailedWithoutFlags"
    assert sum(1 for e in sim.events if e[1] == "StartupFailedWithoutFlags") == 1


def test_a_ready_pod_after_not_a_flag_problem_lifts_the_verdict() -> None:
    broken = {"cluster": True}

    def rule(on: frozenset[str], _: Mapping[str, int]) -> Start:
        return Start("crash") if broken["cluster"] else READY

    sim = Sim(BUILTIN4, rule)
    sim.run(10)
    broken["cluster"] = False  # e.g. a bad node was drained
    decision = sim.run(3)
    assert decision.degraded is None
    assert decision.condition.reason == "AllActive"
    assert sim.rolled_back() == {}


def test_policy_off_in_the_middle_of_a_bisection_puts_the_flags_back() -> None:
    sim = Sim(CUSTOM4, crashes_silently("custom-4"))
    decision = sim.run(1)
    assert len(decision.effective_flags) < len(CUSTOM4)
    sim.policy = "Off"
    decision = sim.round()
    assert decision.effective_flags == tuple(CUSTOM4)
    assert not any(s.state in ("Disabled", "RolledBack") for s in decision.flag_states)
    assert decision.rollout.bisection is None


def test_a_timed_out_start_killed_by_the_probe_is_one_failed_start() -> None:
    sim = Sim(["custom-1"], never_ready("custom-1"))
    pods_seen = []
    for _ in range(2):
        sim.round()
        pods_seen.append(sim.pods[0])
    state = next(s for s in sim.states if s.name == "custom-1")
    assert state.failures == 1  # timed out once
    # the startup probe now kills it: the restart is the same failed start
    pod = sim.pods[0]
    pod.hanging, pod.crashes, pod.last = False, 1, Start("crash")
    raw = pod.raw()
    raw["status"]["containerStatuses"][0]["restartCount"] = 1
    raw["status"]["containerStatuses"][0]["state"] = {
        "running": {"startedAt": (sim.now + ROUND).isoformat()}
    }
    decision = decide(
        spec_flags=["custom-1"],
        policy="Automatic",
        flag_states=sim.states,
        rollout=sim.rollout,
        pods=[observe_pod(raw, sim.now + ROUND)],
        progress=None,
        budget_seconds=BUDGET,
        retry_token=None,
        now=sim.now + ROUND,
    )
    assert next(s for s in decision.flag_states if s.name == "custom-1").failures == 1


def test_crash_loop_restarts_are_each_counted_once() -> None:
    sim = Sim([], always("crash"))
    sim.run(5)
    assert sim.starts == 5
    record = sim.rollout.sets[0]
    assert (record.starts, record.failures, record.reached_ready) == (5, 5, False)


def unrelated_crashes_at(*starts: int) -> Rule:
    def rule(on: frozenset[str], counts: Mapping[str, int]) -> Start:
        return Start("crash") if counts["__starts__"] in starts else READY

    return rule


def test_two_unrelated_flukes_start_a_search_that_blames_nobody() -> None:
    sim = Sim(CUSTOM4, unrelated_crashes_at(3, 5), churn=True)
    decision = sim.run(40)
    assert sim.rolled_back() == {}
    assert any(e[1] == "BisectingOptimizations" for e in sim.events)
    assert any(e[1] == "BisectionInconclusive" for e in sim.events)
    assert decision.effective_flags == tuple(CUSTOM4)
    assert decision.rollout.bisection is None
    assert [s.state for s in decision.flag_states] == ["Active"] * 4


def test_an_intermittent_culprit_found_by_elimination_is_confirmed_before_blame() -> None:
    sim = Sim(CUSTOM4, one_in_three("custom-1", report=False), churn=True)
    sim.run(60)
    assert sim.rolled_back() == {"custom-1": "IntermittentFailures"}
    steps = [e[2] for e in sim.events if e[1] == "BisectionStep"]
    assert any("confirming that custom-1 fails" in m for m in steps)


def test_a_failing_prefetch_init_container_blames_the_download_flag() -> None:
    report = TerminationReport(
        command="prefetch",
        outcome="failed",
        phase="download",
        optimizations=["prefetch-page-cache"],
        error=ErrorInfo("OSError", "Cannot allocate memory"),
    ).to_json()
    spec = ["prefetch-page-cache", "fast-load"]
    raw = SimPod("pod-1", tuple(spec), "h", None, NOW0).raw()
    raw["metadata"]["labels"] = {}
    raw["status"]["phase"] = "Pending"
    raw["status"]["initContainerStatuses"] = [
        {
            "name": "prefetch",
            "restartCount": 1,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": report}},
        }
    ]
    raw["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "PodInitializing"}}
    decision = decide(
        spec_flags=spec,
        policy="Automatic",
        flag_states=(),
        rollout=Rollout(),
        pods=[observe_pod(raw, NOW0)],
        progress=None,
        budget_seconds=BUDGET,
        retry_token=None,
        now=NOW0.replace(tzinfo=None),  # a naive `now` is read as UTC
    )
    assert decision.effective_flags == ("fast-load",)
    assert decision.rollbacks[0].flag == "prefetch-page-cache"
    state = decision.flag_states[0]
    assert (state.state, state.reason, state.failures) == ("RolledBack", "FailedInPhase", 2)
    assert "OSError: Cannot allocate memory" in state.message
    assert "prefetch-page-cache" in decision.events[-1].message


def _decide_on(sim: Sim, raws: Sequence[dict[str, Any]], now: datetime) -> Decision:
    return decide(
        spec_flags=sim.spec,
        policy="Automatic",
        flag_states=sim.states,
        rollout=sim.rollout,
        pods=[observe_pod(raw, now) for raw in raws],
        progress=None,
        budget_seconds=BUDGET,
        retry_token=None,
        now=now,
    )


def test_a_pod_that_was_ready_and_lost_readiness_is_not_a_failed_start() -> None:
    sim = Sim(CUSTOM4, always("ready"))
    sim.run(2)
    pod = sim.pods[0]
    pod.ready = False  # e.g. overloaded: the readiness probe fails for an hour
    later = sim.now + timedelta(hours=1)
    decision = _decide_on(sim, [pod.raw()], later)
    assert all(s.failures == 0 for s in decision.flag_states)
    assert decision.rollout.bisection is None and not decision.template_changed


def test_a_timeout_after_a_reported_crash_does_not_reuse_the_old_report() -> None:
    pod = SimPod("pod-1", ("background-import",), "h", None, NOW0, crashes=1)
    pod.last = Start("crash", flag="background-import")
    raw = pod.raw()
    worker = raw["status"]["containerStatuses"][0]
    worker["restartCount"] = 1
    worker["state"] = {"running": {"startedAt": NOW0.isoformat()}}
    rollout, failed, _ = absorb(
        Rollout(), [observe_pod(raw, NOW0)], budget_seconds=BUDGET, now=NOW0
    )
    assert [(o.kind, o.flag) for o in rollout.sets[0].recent] == [("failed", "background-import")]
    later = NOW0 + timedelta(seconds=BUDGET + 1)
    rollout, failed, _ = absorb(
        rollout, [observe_pod(raw, later)], budget_seconds=BUDGET, now=later
    )
    assert [(o.kind, o.flag) for o in rollout.sets[0].recent] == [
        ("failed", "background-import"),
        ("timeout", None),
    ]
    assert failed == (("background-import",),)
    again, failed, _ = absorb(rollout, [observe_pod(raw, later)], budget_seconds=BUDGET, now=later)
    assert again == rollout and failed == ()


def test_status_patch_reads_back_to_the_same_decision() -> None:
    sim = Sim(CUSTOM4, crashes_silently("custom-2"))
    sim.run(2)  # mid-bisection
    assert sim.decision is not None
    patch = json.loads(json.dumps(sim.decision.status_patch()))
    states = flag_states_from_status(patch["optimizations"])
    rollout = Rollout.from_status(patch["rollout"])
    assert states == sim.decision.flag_states
    assert rollout == sim.decision.rollout
    assert rollout.bisection is not None
    assert patch["rolledBack"] == 0
    assert patch["effectiveOptimizations"] == list(sim.decision.effective_flags)
    assert all("lastTransitionTime" in entry for entry in patch["optimizations"])
    assert "lastTransitionTime" not in FlagState("x", "Trial").to_status()
    assert flag_states_from_status("garbage") == ()
    assert flag_states_from_status([{"name": "x"}, 3, {"name": "y", "state": "Active"}]) == (
        FlagState("y", "Active"),
    )


def _status_schema() -> Any:
    import pathlib

    import jsonschema
    import yaml

    crd = yaml.safe_load(
        (pathlib.Path(__file__).parents[2] / "crds" / "modelserver.yaml").read_text()
    )
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]

    def plain(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: plain(v)
                for k, v in node.items()
                if not k.startswith("x-kubernetes-") and k not in ("default", "format")
            }
        return [plain(i) for i in node] if isinstance(node, list) else node

    return jsonschema.Draft202012Validator(plain(schema))


@pytest.mark.parametrize(
    ("rule", "rounds"),
    [
        pytest.param(crashes_naming("fast-load"), 3, id="after-a-rollback"),
        pytest.param(crashes_silently("custom-2"), 2, id="mid-bisection"),
        pytest.param(always("crash"), 12, id="not-a-flag-problem"),
    ],
)
def test_status_patch_is_valid_against_the_crd(rule: Rule, rounds: int) -> None:
    sim = Sim([*BUILTIN4[:2], "custom-2", "fast-load"], rule)
    decision = sim.run(rounds)
    patch = json.loads(json.dumps(decision.status_patch()))
    _status_schema().validate(patch)
    for entry in patch["optimizations"]:
        assert datetime.fromisoformat(entry["lastTransitionTime"].replace("Z", "+00:00"))
    assert re.fullmatch(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?", decision.condition.reason)


def test_a_flag_rolled_back_on_phase_evidence_is_restored_when_the_failure_persists() -> None:
    # A load-phase error that has nothing to do with fast-load: the first failure names only the
    # phase, fast-load is rolled back, the next start fails the same way without it.
    sim = Sim(BUILTIN4, fails_with("RuntimeError", "load"))
    decision = sim.run(10)
    assert sim.rollbacks == [("fast-load", "FailedInPhase")]
    assert [e[1] for e in sim.events].count("OptimizationRestored") == 1
    assert sim.rolled_back() == {}
    assert decision.effective_flags == tuple(BUILTIN4)
    state = next(s for s in sim.states if s.name == "fast-load")
    assert state.reason == "FailurePersisted" and "in phase load: RuntimeError" in state.message
    assert decision.degraded is not None
    assert decision.degraded.reason == "StartupFailedWithoutFlags"
    # Rolled back once, restored once: two template changes, then the flags stay.
    assert sim.changes == 2


def test_a_report_naming_the_flag_is_believed_even_if_the_phase_fails_later_too() -> None:
    # The report's own blame is evidence: not restored (only phase-only blame is provisional).
    def rule(on: frozenset[str], _: Mapping[str, int]) -> Start:
        if "fast-load" in on:
            return Start("crash", flag="fast-load", phase="load")
        return Start("crash", phase="load")

    sim = Sim(BUILTIN4, rule)
    sim.run(10)
    assert sim.rolled_back() == {"fast-load": "StartupFailed"}
    assert "OptimizationRestored" not in [e[1] for e in sim.events]


def test_a_credentials_failure_during_a_bisection_holds_it_and_blames_nobody() -> None:
    starts: list[int] = []

    def rule(on: frozenset[str], counts: Mapping[str, int]) -> Start:
        starts.append(1)
        if len(starts) <= 1:
            return Start("crash")  # silent: starts a bisection
        return Start("crash", phase="download", error="CredentialsError", command="prefetch")

    sim = Sim(CUSTOM4, rule)
    sim.run(2)
    searching = sim.rollout.bisection
    assert searching is not None, "a silent failure starts a search"
    changes = sim.changes
    decision = sim.run(6)
    assert sim.rolled_back() == {}
    assert decision.rollout.bisection == searching, "the search waits, it does not advance"
    assert sim.changes == changes
    assert decision.degraded is not None and decision.degraded.reason == "CredentialsRefused"
    assert [e[1] for e in sim.events].count("CredentialsRefused") == 1


@pytest.mark.parametrize("waiting", ["PodInitializing", "ContainerCreating"])
def test_time_before_the_worker_runs_is_no_flags_time_out(waiting: str) -> None:
    # An hour in the init container (a slow download) or ContainerCreating (a volume that does
    # not attach): ten budgets, and no start has timed out, no search begins.
    spec = ["prefetch-page-cache", "fast-load"]
    raw = SimPod("pod-1", tuple(spec), "h", None, NOW0 - timedelta(hours=1)).raw()
    raw["status"]["phase"] = "Pending"
    raw["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": waiting}}
    if waiting == "PodInitializing":
        raw["status"]["initContainerStatuses"] = [
            {
                "name": "prefetch",
                "restartCount": 0,
                "state": {"running": {"startedAt": raw["metadata"]["creationTimestamp"]}},
            }
        ]
    decision = decide(
        spec_flags=spec,
        policy="Automatic",
        flag_states=(),
        rollout=Rollout(),
        pods=[observe_pod(raw, NOW0)],
        progress=None,
        budget_seconds=BUDGET,
        retry_token=None,
        now=NOW0,
    )
    assert decision.effective_flags == tuple(spec)
    assert decision.rollout.bisection is None
    assert [e.reason for e in decision.events] == []
    assert all(s.failures == 0 for s in decision.flag_states)
