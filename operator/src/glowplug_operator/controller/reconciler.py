"""One reconcile of one ModelServer: parse, decide the flags, build the children, write only
what differs from the store, and the status (a generation's first status beside the children's
writes, later ones after them). Called from the reconcile loops (`loop.py`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from glowplug_operator import builders
from glowplug_operator.cache import host_path_problem
from glowplug_operator.commands import engine_flag_definition
from glowplug_operator.contract import (
    RETRY_ANNOTATION,
    WORKER_CONTAINER,
    child_name,
    flag_fingerprint,
)
from glowplug_operator.controller.first_status import FirstStatusWait
from glowplug_operator.controller.kube import ApiError, Gone, Kube, Stale
from glowplug_operator.controller.metrics import Metrics
from glowplug_operator.controller.objects import contains
from glowplug_operator.controller.startup_reports import StartupReports
from glowplug_operator.controller.store import Key, Store
from glowplug_operator.engines import engine
from glowplug_operator.rollback import (
    ClaimObservation,
    Decision,
    DeploymentProgress,
    FlagDefinition,
    PodObservation,
    Rollout,
    attribute,
    decide,
    flag_states_from_status,
    observe_claim,
    observe_deployment_progress,
    observe_pod,
    refusal_reported_at,
    startup_deadline,
)
from glowplug_operator.settings import Settings
from glowplug_operator.spec import InvalidSpec, ModelServerSpec, parse_spec
from glowplug_operator.status import (
    UPDATING,
    Observed,
    blocked_status,
    condition,
    invalid_spec_status,
    latest_ready,
    modelserver_status,
)

log = logging.getLogger(__name__)
STALE_RETRY_SECONDS = 0.5
LOG_TAIL = 256 * 1024  # bytes of an engine's log read for its start phases


@dataclass(frozen=True)
class Blocked:
    """Why the children cannot be rolled out until a user acts."""

    reason: str  # NameConflict, InvalidSpec, Forbidden
    message: str
    hint: str


class _Conflict(Exception):
    """A child's first apply met an object that appeared since we looked (a field conflict)."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name}")
        self.kind, self.name = kind, name


@dataclass
class Reconciler:
    settings: Settings
    kube: Kube
    store: Store
    metrics: Metrics
    # Reads each Ready pod's /startup once; None where pods cannot be reached (unit tests).
    startup_reports: StartupReports | None = None
    first_status: FirstStatusWait = field(init=False)

    def __post_init__(self) -> None:
        self.first_status = FirstStatusWait(self.settings.first_status_wait_seconds)

    async def reconcile(self, key: Key, now: datetime | None = None) -> float | None:
        """Converge one ModelServer; returns seconds until it should be looked at again."""
        try:
            return await self._reconcile(key, now)
        except Gone:
            # Deleted while we looked (a DELETED event lost in a watch relist, say): forget it.
            self.store.drop_modelserver(key)
            self.forget(key)
            return None
        except Stale:
            # The body changed while we computed its status; the newer one is on its way.
            return STALE_RETRY_SECONDS

    def forget(self, key: Key) -> None:
        """Drop what is kept about a ModelServer that is gone."""
        self.metrics.forget(*key)
        self.first_status.forget(key)

    async def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        """Replace the status of exactly the body it was computed from (resourceVersion
        precondition); our own write's new version is kept so the next write passes."""
        meta = body["metadata"]
        version = await self.kube.replace_status(
            meta["namespace"], meta["name"], status, meta.get("resourceVersion")
        )
        self.metrics.api_writes.labels("ModelServer/status").inc()
        body["status"] = status  # our own write; the watch will confirm it
        if version:
            meta["resourceVersion"] = version

    async def _reconcile(self, key: Key, now: datetime | None) -> float | None:
        body = self.store.modelservers.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.forget(key)
            return None  # children go with it: owner references
        now = now or datetime.now(UTC)
        try:
            spec = parse_spec(body)
        except InvalidSpec as error:
            await self._invalid(body, error, now)
            return None
        if (problem := host_path_problem(spec, self.settings)) is not None:
            await self._invalid(body, InvalidSpec("spec.cache.hostPath", problem), now)
            return None
        owner = builders.Owner(key[1], key[0], body["metadata"]["uid"])
        observations = self._observe(spec, key, now)
        deployment = self.store.child("Deployment", key[0], key[1])
        progress = observe_deployment_progress(deployment) if deployment else None
        decision = self._decide(body, spec, observations, progress, now)
        previous = body.get("status") or {}
        status = modelserver_status(
            previous,
            Observed(
                generation=body["metadata"].get("generation", 0),
                desired_replicas=spec.replicas,
                deployment=deployment,
                observations=observations,
                flags_hash=decision.flags_hash,
                selector=builders.label_selector(owner),
                endpoint=builders.endpoint(owner, spec),
                worker_phases=self._worker_phases(observations),
            ),
            decision,
            now,
        )
        converge = self._converge_children(owner, spec, decision)
        waits = self.first_status.left(key, body, status, decision, now)
        if status == previous or waits is not None:
            blocked = await converge
        elif previous.get("observedGeneration") != status.get("observedGeneration"):
            # A generation's first look: its status comes from what the store held before the
            # applies, so it is written beside them, not after them. Should the children be
            # blocked, the blocked status follows and stays for this generation.
            blocked = await _both(converge, self._write_status(body, status))
        else:
            blocked = await converge
            if blocked is None:
                await self._write_status(body, status)
        if blocked is not None:
            await self._blocked(body, blocked, now)
            return self.settings.resync_seconds  # a user must act; their edit is an event
        self._read_startup(key, spec, observations)
        await self._announce(body, previous, status, decision)
        self.metrics.observe(
            key[0],
            key[1],
            status.get("readyReplicas", 0),
            (status.get("coldStart") or {}).get("lastSeconds"),
            decision.flag_states,
        )
        look = self._next_look(spec, status, observations, progress, now)
        return look if waits is None else min(waits, look)

    def _observe(self, spec: ModelServerSpec, key: Key, now: datetime) -> list[PodObservation]:
        """The pods as observations; a worker that failed without a report (a stock engine)
        blames a flag when its last log lines name exactly one (rollback/signatures.py)."""
        definitions = []
        for flag in spec.startup.optimizations:
            args, env = engine_flag_definition(spec, flag, self.settings)
            definitions.append(FlagDefinition(flag.name, tuple(args), env))
        observations = [observe_pod(p, now) for p in self.store.pods_of(key)]
        return [
            attribute(o, spec.engine.kind, [d for d in definitions if d.name in o.flags])
            for o in observations
        ]

    def _read_startup(
        self, key: Key, spec: ModelServerSpec, observations: list[PodObservation]
    ) -> None:
        """Ask the pod that turned Ready last for its start phases, once: the builtin worker's
        /startup, or the log of an engine that logs its own phases (vLLM, SGLang)."""
        latest = latest_ready(observations)
        if self.startup_reports is None or latest is None:
            return
        report = latest.init.final_report if latest.init else None
        download = report.phases.get("download") if report else None
        kind = spec.engine.kind
        if kind != "builtin":
            if engine(kind).log_phases:
                read = partial(self.kube.read_log, key[0], latest.name, WORKER_CONTAINER, LOG_TAIL)
                self.startup_reports.request_log(key, latest.uid, kind, read, download)
            return
        body = next((p for p in self.store.pods_of(key) if p["metadata"]["uid"] == latest.uid), {})
        ip = (body.get("status") or {}).get("podIP")
        if not ip:
            return
        host = f"[{ip}]" if ":" in ip else ip
        self.startup_reports.request(
            key, latest.uid, f"http://{host}:{spec.serving.port}/startup", download
        )

    def _worker_phases(self, observations: list[PodObservation]) -> dict[str, dict[str, float]]:
        if self.startup_reports is None:
            return {}
        found = {o.uid: self.startup_reports.phases(o.uid) for o in observations}
        return {uid: phases for uid, phases in found.items() if phases}

    def _decide(
        self,
        body: Mapping[str, Any],
        spec: ModelServerSpec,
        observations: list[PodObservation],
        progress: DeploymentProgress | None,
        now: datetime,
    ) -> Decision:
        status = body.get("status") or {}
        states = flag_states_from_status(status.get("optimizations"))
        flags = spec.startup.optimizations
        return decide(
            spec_flags=[f.name for f in flags],
            policy=spec.startup.rollback,
            flag_states=states,
            rollout=Rollout.from_status(status.get("rollout")),
            pods=observations,
            progress=progress,
            budget_seconds=builders.budget_seconds(spec, self.settings),
            retry_token=(body["metadata"].get("annotations") or {}).get(RETRY_ANNOTATION),
            now=now,
            fingerprints={f.name: flag_fingerprint(f.model_dump(by_alias=True)) for f in flags},
            claim=self._claim(body, spec),
            pod_left_at=self.store.pod_left_at.get(
                (body["metadata"]["namespace"], body["metadata"]["name"])
            ),
        )

    def _claim(self, body: Mapping[str, Any], spec: ModelServerSpec) -> ClaimObservation | None:
        """The cache claim the operator made, as the store has it, with its StorageClass."""
        if spec.cache.kind != "PersistentVolumeClaim" or spec.cache.existing_claim:
            return None
        meta = body["metadata"]
        name = child_name("PersistentVolumeClaim", meta["name"])
        live = self.store.child("PersistentVolumeClaim", meta["namespace"], name)
        return observe_claim(live, self.store.storage_classes) if live is not None else None

    async def _converge_children(
        self, owner: builders.Owner, spec: ModelServerSpec, decision: Decision
    ) -> Blocked | None:
        """Apply the children that differ from the store. Nothing is written when a child's
        name is taken by an object without our owner reference (NameConflict), and an apply the
        API server refuses (400, 403, 422) is returned as InvalidSpec/Forbidden, not retried."""
        deployment = builders.build_deployment(
            owner,
            spec,
            self.settings,
            decision.effective_flags,
            decision.flags_hash,
            decision.restart_nonce,
        )
        wanted: dict[str, dict[str, Any] | None] = {
            "Deployment": deployment,
            "Service": builders.build_service(owner, spec),
            "PersistentVolumeClaim": builders.build_cache_claim(owner, spec),
            "PodDisruptionBudget": builders.build_disruption_budget(owner, spec),
        }
        writes: list[Callable[[], Awaitable[None]]] = []
        for kind, manifest in wanted.items():
            name = child_name(kind, owner.name)
            live = self.store.child(kind, owner.namespace, name)
            if manifest is None:
                if live is not None and _owned_by(live, owner) and kind != "PersistentVolumeClaim":
                    writes.append(partial(self._delete, kind, owner.namespace, name))
                continue
            if live is None:
                # An object of that name without our label: ours if it names us as its owner
                # (its label was removed: applied again), else a NameConflict.
                owners = self.store.other_owners(kind, owner.namespace, name)
                if owners is None:
                    writes.append(partial(self._apply, manifest, first=True))
                elif owner.uid in owners:
                    writes.append(partial(self._apply, manifest))
                else:
                    return _name_conflict(kind, name, owner)
                continue
            if not _owned_by(live, owner):
                return _name_conflict(kind, name, owner)
            if not contains(live, manifest):
                version = live["metadata"].get("resourceVersion")
                writes.append(partial(self._apply, manifest, live_version=version))
        # Independent objects: one round trip, not four.
        results = await asyncio.gather(*(w() for w in writes), return_exceptions=True)
        refused = [r for r in results if isinstance(r, BaseException)]
        if refused:
            blocked = _refused(refused[0], owner)
            if blocked is None:
                raise refused[0]
            return blocked
        if decision.template_changed:
            self.metrics.template_changes.labels(owner.namespace, owner.name).inc()
        return None

    async def _apply(
        self, manifest: dict[str, Any], first: bool = False, live_version: str | None = None
    ) -> None:
        meta = manifest["metadata"]
        try:
            # The first apply does not force: an object someone created since our look is a
            # field conflict (409), not taken over.
            live = await self.kube.apply(manifest, force=not first, live_version=live_version)
        except ApiError as error:
            if not first or error.code != 409:
                raise
            raise _Conflict(manifest["kind"], meta["name"]) from error
        self.metrics.api_writes.labels(manifest["kind"]).inc()
        # What the API server now holds; the watch confirms it later. Without this, a reconcile
        # that runs before the watch event would apply the same object again.
        self.store.put_child(manifest["kind"], live)

    async def _delete(self, kind: str, namespace: str, name: str) -> None:
        await self.kube.delete(kind, namespace, name)
        self.metrics.api_writes.labels(kind).inc()

    async def _invalid(self, body: dict[str, Any], error: InvalidSpec, now: datetime) -> None:
        previous = body.get("status") or {}
        status = invalid_spec_status(body, error.field, error.message, now)
        if status != previous:
            await self._write_status(body, status)
            await self._event(body, "Warning", "InvalidSpec", str(error))

    async def _blocked(self, body: dict[str, Any], blocked: Blocked, now: datetime) -> None:
        previous = body.get("status") or {}
        status = blocked_status(body, blocked.reason, blocked.message, blocked.hint, now)
        if status != previous:
            await self._write_status(body, status)
            await self._event(body, "Warning", blocked.reason, blocked.message)

    async def _event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Post one Event of a decision, and log it: one INFO line per decision (a flag rolled
        back, a bisection step, a flag restored or promoted, a Degraded or blocking reason,
        Ready gained or lost), the ModelServer named in the line and as fields for JSON logs."""
        meta = body["metadata"]
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        log.info(
            "modelserver %s/%s: %s: %s",
            namespace,
            name,
            reason,
            message,
            extra={
                "namespace": namespace,
                "modelserver": name,
                "reason": reason,
                "event_type": type_,
            },
        )
        try:
            await self.kube.post_event(body, type_, reason, message)
            self.metrics.api_writes.labels("Event").inc()
        except Exception:  # an Event is informative: losing one must not fail the reconcile
            log.warning("could not post event %s", reason, exc_info=True)

    async def _announce(
        self,
        body: dict[str, Any],
        previous: Mapping[str, Any],
        status: Mapping[str, Any],
        decision: Decision,
    ) -> None:
        """Events for what a user cares about: each decision's events, becoming Ready or not."""
        meta = body["metadata"]
        was = condition(previous, "Ready")
        now_ready = condition(status, "Ready")
        changed = now_ready is not None and (was or {}).get("status") != now_ready.get("status")
        became_ready = changed and now_ready is not None and now_ready["status"] == "True"
        # On the way to Ready, one Event: the flags that became active are said in it.
        folded = [e for e in decision.events if became_ready and e.reason == "OptimizationsActive"]
        for event in decision.events:
            if event not in folded:
                await self._event(body, event.type, event.reason, event.message)
        for rollback in decision.rollbacks:
            self.metrics.rollbacks.labels(
                meta["namespace"], meta["name"], rollback.flag, rollback.reason
            ).inc()
        if changed and now_ready is not None:
            if now_ready["status"] == "True":
                cold = (status.get("coldStart") or {}).get("lastSeconds")
                extra = f" (cold start {cold}s)" if cold is not None else ""
                extra += "".join(f"; {e.message}" for e in folded)
                await self._event(body, "Normal", "Ready", now_ready["message"] + extra)
            elif was is not None and was.get("status") == "True":
                # A flag edit rolling out while the previous pods serve is no fault: Normal.
                kind = "Normal" if now_ready["reason"] == UPDATING else "Warning"
                await self._event(body, kind, now_ready["reason"], now_ready["message"])

    def _next_look(
        self,
        spec: ModelServerSpec,
        status: Mapping[str, Any],
        observations: list[PodObservation],
        progress: DeploymentProgress | None,
        now: datetime,
    ) -> float:
        """When to look again without an event: while pods start, at the first startup budget
        that could run out (a hung start produces no event) or when a refusal of the pods gets
        reported; when converged, a slow resync."""
        budget = builders.budget_seconds(spec, self.settings)
        times = [startup_deadline(o, budget) for o in observations]
        times.append(refusal_reported_at(progress))
        deadlines = [(t - now).total_seconds() + 1 for t in times if t is not None and t > now]
        if deadlines:
            return max(1.0, float(min(deadlines)))
        if status.get("readyReplicas", 0) < spec.replicas:
            return 10.0
        return self.settings.resync_seconds


async def _both(converge: Awaitable[Blocked | None], write: Awaitable[None]) -> Blocked | None:
    """Run both to their end (no write is left running behind a failed one); raise the first
    failure, else return what converging the children found."""
    blocked, written = await asyncio.gather(converge, write, return_exceptions=True)
    for outcome in (blocked, written):
        if isinstance(outcome, BaseException):
            raise outcome
    assert not isinstance(blocked, BaseException)
    return blocked


def _owned_by(body: Mapping[str, Any], owner: builders.Owner) -> bool:
    refs = body["metadata"].get("ownerReferences") or []
    return any(r.get("uid") == owner.uid for r in refs)


def _name_conflict(kind: str, name: str, owner: builders.Owner) -> Blocked:
    return Blocked(
        "NameConflict",
        f"{kind} {owner.namespace}/{name} exists and is not owned by this ModelServer; "
        "it is left as it is",
        f"rename the ModelServer or delete the {kind} {name}; nothing is rolled out",
    )


# The API server's own failures that it reports as a 422 "Invalid": a Service's cluster IP
# allocation while etcd is unavailable reads 'spec.clusterIPs: Invalid value: [""]: failed to
# allocate IP: rpc error: code = Unavailable ...' (seen with etcd restarted during reconciliation,
# tests/e2e/test_chaos.py). Our Service never asks for an IP, so these are no spec's fault.
_SERVER_FAILURES = (
    "rpc error: code = ",
    "etcdserver: ",
    "context deadline exceeded",
    "failed to allocate",
)


def _refused(error: BaseException, owner: builders.Owner) -> Blocked | None:
    """A write refused for a reason a user must fix, or None for one worth retrying."""
    if isinstance(error, _Conflict):
        return _name_conflict(error.kind, error.name, owner)
    if not isinstance(error, ApiError):
        return None
    code, text = error.code, error.message or str(error)
    if code in (400, 422) and any(failure in text for failure in _SERVER_FAILURES):
        return None  # retried with backoff, like a 500
    if code in (400, 422):
        return Blocked("InvalidSpec", text, "fix the spec; nothing is rolled out")
    if code == 403:  # a quota, an admission policy (RBAC too, but ours is installed with us)
        return Blocked("Forbidden", text, "the API server refused a child; see the message")
    return None
