"""The ModelServer's status, computed purely from what is observed.

Conditions follow metav1.Condition and the kstatus conventions (sigs.k8s.io/cli-utils
pkg/kstatus): `observedGeneration`, `Ready`, and the abnormal-true pair `Reconciling` (True while
the operator converges: pods start, new flags roll out, a bisection runs) and `Stalled` (True when
it cannot progress until a user acts: an invalid spec, a name conflict, a Degraded reason while not
Ready). So `kubectl wait --for=condition=Ready`, Flux's health checks (kstatus) and the Argo CD
health check in examples/argocd/ read the same conditions; tests/unit/test_gitops_health.py runs
the real kstatus library and that Lua on these statuses. A condition keeps its
lastTransitionTime while its status does not change, so an unchanged world gives an identical
status and the operator writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ConfigDict, ValidationError

from glowplug_operator.rollback import Condition, Decision, FlagState, PodObservation, Rollout
from glowplug_operator.spec import CAMEL_CASE, CamelModel
from glowplug_operator.timestamps import iso
from glowplug_operator.weights_ready import weights_ready

Status = dict[str, Any]
# status.coldStart.phases keys the pod's status gives (`_cold_start`), in the order they happen;
# the worker's own (controller/startup_reports.WORKER_PHASES) run inside `start`. docs/api.md and
# the CRD name these (tests/unit/test_docs_match_code.py).
POD_PHASES = ("schedule", "imagePull", "download", "start")


class StatusCondition(CamelModel):
    """One entry of status.conditions, shaped as metav1.Condition."""

    type: str
    status: str
    observed_generation: int
    last_transition_time: str
    reason: str
    message: str


class ColdStart(CamelModel):
    """status.coldStart: the most recent start that reached Ready."""

    model_config = ConfigDict(**CAMEL_CASE, frozen=True)  # read back from the status: lax

    last_seconds: float
    phases: dict[str, float]


class ModelServerStatus(CamelModel):
    """status of a ModelServer as the operator writes it (the CRD's status schema)."""

    observed_generation: int
    conditions: tuple[StatusCondition, ...]
    replicas: int
    ready_replicas: int
    replica_summary: str
    selector: str
    endpoint: str
    cold_start: ColdStart | None
    optimizations: tuple[FlagState, ...]
    rolled_back: int
    effective_optimizations: tuple[str, ...]
    rollout: Rollout

    def to_status(self) -> Status:
        return _prune_status(self.model_dump(by_alias=True, mode="json"))


def condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The condition of type `kind` in a status, or None."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def conditions(
    previous: Sequence[Mapping[str, Any]],
    wanted: Sequence[Condition],
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """metav1.Conditions; lastTransitionTime moves only when a condition's status changes."""
    return [c.model_dump(by_alias=True) for c in _conditions(previous, wanted, generation, now)]


def _conditions(
    previous: Sequence[Mapping[str, Any]],
    wanted: Sequence[Condition],
    generation: int,
    now: datetime,
) -> tuple[StatusCondition, ...]:
    before = {c.get("type"): c for c in previous if isinstance(c, Mapping)}
    out = []
    for cond in wanted:
        old = before.get(cond.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == cond.status else None
        out.append(
            StatusCondition(
                type=cond.type,
                status=cond.status,
                observed_generation=generation,
                last_transition_time=since if isinstance(since, str) and since else iso(now),
                reason=cond.reason,
                message=cond.message,
            )
        )
    return tuple(out)


def invalid_spec_status(body: Mapping[str, Any], field: str, message: str, now: datetime) -> Status:
    """The status of a ModelServer whose spec cannot be valid: Ready=False, reason InvalidSpec."""
    return blocked_status(
        body, "InvalidSpec", f"{field}: {message}", "fix the spec; nothing is rolled out", now
    )


def blocked_status(
    body: Mapping[str, Any], reason: str, text: str, hint: str, now: datetime
) -> Status:
    """The status of a ModelServer the operator will not roll out until a user acts:
    Ready=False and Stalled=True with `reason` and `text`, Progressing=False with `hint`."""
    old = dict(body.get("status") or {})
    generation = body["metadata"].get("generation", 0)
    wanted = [
        Condition("Ready", "False", reason, text),
        Condition("Progressing", "False", reason, hint),
        Condition("Reconciling", "False", reason, hint),
        Condition("Stalled", "True", reason, text),
    ]
    keep = {k: v for k, v in old.items() if k not in ("conditions", "observedGeneration")}
    return _prune_status(
        {
            **keep,
            "observedGeneration": generation,
            "conditions": conditions(old.get("conditions") or [], wanted, generation, now),
        }
    )


@dataclass(frozen=True)
class Observed:
    """What status is computed from, besides the decision."""

    generation: int
    desired_replicas: int
    deployment: Mapping[str, Any] | None
    observations: Sequence[PodObservation]
    flags_hash: str
    selector: str
    endpoint: str
    # The worker's own phases per pod UID, read from its /startup (controller/startup_reports.py).
    worker_phases: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def modelserver_status(
    previous: Mapping[str, Any], observed: Observed, decision: Decision, now: datetime
) -> Status:
    current = [
        o for o in observed.observations if o.flags_hash == observed.flags_hash and not o.deleting
    ]
    ready = sum(1 for o in current if o.ready)
    # Pods of the previous flag set keep serving until the new ones are Ready (maxUnavailable 0).
    previous_serving = sum(
        1
        for o in observed.observations
        if o.flags_hash != observed.flags_hash and o.ready and not o.deleting
    )
    dep_status = (observed.deployment or {}).get("status") or {}
    replicas = int(
        dep_status.get("replicas") or len([o for o in observed.observations if not o.deleting])
    )
    desired = observed.desired_replicas
    readiness = _ready(ready, desired, decision, previous_serving)
    progressing = _progressing(ready, desired, current, decision)
    wanted = [
        readiness,
        progressing,
        *_kstatus(readiness, progressing, decision),
        weights_ready(observed.observations, observed.flags_hash),
        decision.condition,
        _degraded(decision),
    ]
    cold_start = _cold_start(observed.observations, observed.worker_phases) or _kept_cold_start(
        previous
    )
    return ModelServerStatus(
        observed_generation=observed.generation,
        conditions=_conditions(previous.get("conditions") or [], wanted, observed.generation, now),
        replicas=replicas,
        ready_replicas=ready,
        replica_summary=f"{ready}/{desired}",
        selector=observed.selector,
        endpoint=observed.endpoint,
        cold_start=cold_start,
        optimizations=decision.flag_states,
        rolled_back=sum(1 for s in decision.flag_states if s.state == "RolledBack"),
        effective_optimizations=decision.effective_flags,
        rollout=decision.rollout,
    ).to_status()


def _kept_cold_start(previous: Mapping[str, Any]) -> ColdStart | None:
    """The cold start the status shows already, while no pod shows a newer one."""
    try:
        return ColdStart.model_validate(previous.get("coldStart"))
    except ValidationError:
        return None


UPDATING = "Updating"  # Ready's reason while a new flag set rolls out and the previous one serves


def _ready(ready: int, desired: int, decision: Decision, previous_serving: int) -> Condition:
    """True when the current flag set serves with every replica. While a new flag set rolls
    out it is False, reason Updating, and says that the previous pods still serve."""
    if desired == 0:
        return Condition("Ready", "True", "ScaledToZero", "no replicas requested")
    if ready >= desired:
        return Condition("Ready", "True", "Serving", f"{ready}/{desired} replicas serve the model")
    if decision.degraded:
        return Condition("Ready", "False", decision.degraded.reason, decision.degraded.message)
    if previous_serving:
        return Condition(
            "Ready",
            "False",
            UPDATING,
            f"{ready}/{desired} replicas of the new startup flags ready; "
            f"{previous_serving} pod(s) of the previous ones serve meanwhile",
        )
    return Condition("Ready", "False", "Starting", f"{ready}/{desired} replicas ready")


def _progressing(
    ready: int, desired: int, current: Sequence[PodObservation], decision: Decision
) -> Condition:
    if decision.degraded:
        return Condition(
            "Progressing", "False", decision.degraded.reason, decision.degraded.message
        )
    if ready >= desired:
        return Condition("Progressing", "False", "Converged", "the rollout is complete")
    note = "rolling out new startup flags" if decision.template_changed else "pods are starting"
    return Condition(
        "Progressing", "True", "RollingOut", f"{note}: {ready}/{desired} ready, {len(current)} pods"
    )


def _kstatus(ready: Condition, progressing: Condition, decision: Decision) -> list[Condition]:
    """kstatus's Reconciling and Stalled. Stalled: a Degraded reason while not Ready (the operator
    holds the template until something changes; kstatus says Failed). Reconciling: the rollout is
    under way (kstatus says InProgress). Neither: Current, also when flags were rolled back and the
    rest serve (OptimizationsHealthy says so)."""
    if ready.status != "True" and decision.degraded is not None:
        degraded = decision.degraded
        return [
            Condition("Reconciling", "False", degraded.reason, "waiting for a change"),
            Condition("Stalled", "True", degraded.reason, degraded.message),
        ]
    if progressing.status == "True":
        why = decision.condition if decision.condition.reason == "Bisecting" else progressing
        return [
            Condition("Reconciling", "True", why.reason, why.message),
            Condition("Stalled", "False", "Progressing", ""),
        ]
    return [
        Condition("Reconciling", "False", progressing.reason, progressing.message),
        Condition("Stalled", "False", ready.reason, ""),
    ]


def _degraded(decision: Decision) -> Condition:
    if decision.degraded:
        return Condition("Degraded", "True", decision.degraded.reason, decision.degraded.message)
    return Condition("Degraded", "False", "AsExpected", "")


def latest_ready(observations: Sequence[PodObservation]) -> PodObservation | None:
    """The pod whose start reached Ready last: the one `status.coldStart` describes."""
    ready = [o for o in observations if o.ready and o.ready_since and o.scheduled]
    return max(ready, key=lambda o: o.ready_since or datetime.min) if ready else None


def _cold_start(
    observations: Sequence[PodObservation], worker_phases: Mapping[str, Mapping[str, float]]
) -> ColdStart | None:
    """The most recent start that reached Ready: seconds from scheduling to Ready, and phases
    (schedule wait, image pull, the prefetcher's download, the worker's start) where the pod
    shows them, with the worker's own import, config, load and warmup once its /startup was
    read.

    imagePull is measured from container state timestamps: the kubelet pulls a container's
    image just before it starts it, so the gaps from scheduling to the init container's start
    and from its end to the worker's start are the pulls (with the sandbox and volume setup,
    seconds at most)."""
    latest = latest_ready(observations)
    if latest is None:
        return None
    assert latest.ready_since and latest.scheduled
    phases: dict[str, float] = {}
    if latest.created:
        phases["schedule"] = _seconds(latest.scheduled - latest.created)
    init = latest.init
    worker_started = None
    pulls: list[float] = []
    if init is not None and init.terminated_now:
        report, start, end = init.final_report, init.terminated_started_at, init.finished_at
        if report and "download" in report.phases:
            phases["download"] = round(report.phases["download"], 3)
        elif start and end:
            phases["download"] = _seconds(end - start)
        if start:
            pulls.append(_seconds(start - latest.scheduled))
        worker_started = end
    worker = latest.worker
    if worker is not None and worker.running and worker.started_at and worker.restarts == 0:
        # The worker's first run: before it, its image was pulled (after the init container).
        pulls.append(_seconds(worker.started_at - (worker_started or latest.scheduled)))
        worker_started = worker.started_at
    if pulls:
        phases["imagePull"] = round(sum(pulls), 3)
    if worker_started:
        phases["start"] = _seconds(latest.ready_since - worker_started)
    phases.update(worker_phases.get(latest.uid) or {})
    return ColdStart(last_seconds=_seconds(latest.ready_since - latest.scheduled), phases=phases)


def _seconds(delta: Any) -> float:
    return round(max(0.0, float(delta.total_seconds())), 3)


def _prune_status(status: Status) -> Status:
    pruned: Status = prune(status)
    return pruned


def prune(value: Any) -> Any:
    """Drop None values (the API server drops them too), so a status compares equal to what is
    stored and a converged ModelServer is not written again."""
    if isinstance(value, dict):
        return {k: prune(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value
