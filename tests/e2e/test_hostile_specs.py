"""Hostile specs (issue 16, prove it): hypothesis-generated ModelServers, valid and invalid,
applied with kubectl to the real API server while a real operator runs. Each is refused by the
API server with a message naming a field, or accepted and then either reconciled (children owned
by it, pods created) or Ready=False with reason InvalidSpec naming the field. The operator never
crashes, never logs a traceback, writes a bounded number of times per ModelServer and then stops
writing, and never creates a child the cluster refuses (a ReplicaSet that cannot create pods).

GLOWPLUG_HOSTILE_EXAMPLES sets how many examples are tried (default 40, `make test-hostile`
runs 400); the tally is printed and written to bench/results/hostile_specs.md."""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from typing import Any

from glowplug_operator.rollback.blockers import REFUSAL_GRACE
from hypothesis import HealthCheck, given, settings

from tests.cluster.kube import ROOT, Kubectl, wait_until
from tests.cluster.operator import OperatorProcess
from tests.e2e.hostile import modelserver_specs, names

EXAMPLES = int(os.environ.get("GLOWPLUG_HOSTILE_EXAMPLES", "40"))
# A field path in a refusal: spec.x, metadata.name, or kubectl's strict 'unknown field "spec.x"'.
FIELD = re.compile(r"\b(spec(\.[A-Za-z]+)+|metadata\.name)\b")
# Writes one ModelServer may cause while it settles: its children (Service, Deployment, claim),
# a few status updates as its pods come up, Events. A hot loop blows through it in seconds.
MAX_WRITES_PER_MODELSERVER = 30
INVALID_REASONS = {"InvalidSpec", "NameConflict", "Forbidden"}


def _ready(ms: dict[str, Any]) -> dict[str, Any] | None:
    status = ms.get("status") or {}
    if status.get("observedGeneration") != ms["metadata"]["generation"]:
        return None
    return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)


def _replicas(spec: Any) -> int:
    value = spec.get("replicas", 1) if isinstance(spec, dict) else 1
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _writes(operator: OperatorProcess) -> float:
    return sum(
        s.value
        for family in _families(operator)
        for s in family.samples
        if s.name == "glowplug_api_writes_total"
    )


def _families(operator: OperatorProcess) -> list[Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return list(text_string_to_metric_families(operator.metrics()))


def test_hostile_specs_are_refused_or_reconciled_and_never_break_the_operator(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    k = kubectl.in_namespace(namespace)
    tally: Counter[str] = Counter()
    accepted: dict[str, str] = {}  # name -> outcome
    count = [0]
    specs: dict[str, dict[str, Any]] = {}
    samples: list[tuple[str, str]] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(spec=modelserver_specs(), hostile_name=names)
    def one(spec: dict[str, Any], hostile_name: str | None) -> None:
        count[0] += 1
        name = f"h{count[0]}" if hostile_name is None else f"{hostile_name}{count[0]}"
        body = {
            "apiVersion": "glowplug.dev/v1alpha1",
            "kind": "ModelServer",
            "metadata": {"name": name},
            "spec": spec,
        }
        specs[name] = spec
        ok, out = k.try_apply(json.dumps(body))
        assert operator.running, f"the operator died after {name}: {operator.log()[-3000:]}"
        if not ok:
            assert FIELD.search(out), f"a refusal that names no field: {out[:500]}"
            tally["refused by the API server"] += 1
            samples.append(("refused", out[:200]))
            return
        ready = wait_until(f"a Ready condition on {name}", lambda: _ready(k.get("ms", name)), 30)
        if ready["status"] == "False" and ready["reason"] in INVALID_REASONS:
            assert FIELD.search(ready["message"]), f"{name}: {ready}"
            owned = [
                o
                for kind in ("deployment", "service", "pvc")
                for o in k.get(kind, selector=f"glowplug.dev/modelserver={name}")["items"]
            ]
            # Named by parse_spec (a spec.* field of the ModelServer), or the API server's
            # refusal of a child (a field of the Deployment: a CRD rule is missing).
            by = "parse_spec" if ready["message"].startswith("spec.") else "a child's refusal"
            kept = "nothing created" if not owned else "earlier children kept"
            tally[f"Ready=False {ready['reason']} from {by} ({kept})"] += 1
            accepted[name] = ready["reason"]
            samples.append((ready["reason"], ready["message"][:200]))
        else:
            deployment = wait_until(
                f"the Deployment of {name}",
                lambda: k.run("get", "deployment", name, "--ignore-not-found", "-o", "json"),
                30,
            )
            owner = json.loads(deployment)["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["name"]) == ("ModelServer", name)
            tally[f"reconciled (Ready={ready['status']} {ready['reason']})"] += 1
            accepted[name] = "reconciled"

    started = time.monotonic()
    one()
    tried = count[0]

    # Settled: no writes in a quiet window of two resync periods, bounded writes in all. First
    # the rollouts end: a ModelServer of 100 replicas has its status written as its pods turn
    # Ready one by one (its ready count changes), which is not a loop. A refused pod creation
    # (a PriorityClass that does not exist) is reported REFUSAL_GRACE after the refusal: the
    # writes must stand still longer than that.
    deadline = time.monotonic() + 120
    quiet = REFUSAL_GRACE.total_seconds() + 1
    previous, still_since = _writes(operator), time.monotonic()
    while time.monotonic() - still_since < quiet and time.monotonic() < deadline:
        time.sleep(1)
        if (current := _writes(operator)) != previous:
            previous, still_since = current, time.monotonic()
    before, versions = _writes(operator), _versions(k)
    time.sleep(11)
    after, later = _writes(operator), _versions(k)
    assert operator.running, operator.log()[-3000:]
    log = operator.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 500 :][:4000]
    assert after - before <= 2, f"{after - before} writes while nothing changed: a hot loop"
    changed = {n for n in versions if later.get(n) != versions[n]}
    assert not changed, f"ModelServers still being written: {sorted(changed)}"
    # A status write per change of the ready count is the status following its pods, not churn.
    replicas = sum(_replicas(specs.get(name)) for name in accepted)
    assert after <= MAX_WRITES_PER_MODELSERVER * max(1, len(accepted)) + replicas, after

    # A child whose pods the cluster refuses (a RuntimeClass or PriorityClass that does not
    # exist: valid names the operator cannot check) is reported: Ready=False, FailedCreate.
    refused = [
        (rs["metadata"]["name"], c.get("message", ""), specs.get(owner["name"]))
        for rs in k.get("replicasets")["items"]
        for owner in rs["metadata"].get("ownerReferences") or []
        for c in (rs.get("status") or {}).get("conditions") or []
        if c["type"] == "ReplicaFailure" and c["status"] == "True"
    ]
    for rs_name, _, _ in refused:
        ms = rs_name.rsplit("-", 1)[0]
        wait_until(
            f"{ms} Ready=False FailedCreate",
            lambda ms=ms: (_ready(k.get("ms", ms)) or {}).get("reason") == "FailedCreate",
            30,
        )
        tally["reconciled, pods refused by the cluster: Ready=False FailedCreate"] += 1
    # Any other child the cluster refuses would be a bug.
    failing = [
        (rs["metadata"]["name"], c.get("message", ""), specs.get(owner["name"]))
        for rs in k.get("replicasets")["items"]
        for owner in rs["metadata"].get("ownerReferences") or []
        for c in (rs.get("status") or {}).get("conditions") or []
        if c["type"] == "ReplicaFailure" and c["status"] == "True"
        if (_ready(k.get("ms", owner["name"])) or {}).get("reason") != "FailedCreate"
    ]
    assert not failing, f"children the cluster refuses (ReplicaSet, message, spec): {failing}"

    _report(tried, tally, after, len(accepted), time.monotonic() - started, samples)


def _versions(k: Kubectl) -> dict[str, str]:
    return {
        ms["metadata"]["name"]: ms["metadata"]["resourceVersion"] for ms in k.get("ms")["items"]
    }


def _report(
    tried: int,
    tally: Counter[str],
    writes: float,
    accepted: int,
    seconds: float,
    samples: list[tuple[str, str]],
) -> None:
    lines = [
        f"# Hostile specs: {tried} ModelServers tried in {seconds:.0f} s",
        "",
        "| outcome | count |",
        "|---|---|",
        *(f"| {outcome} | {n} |" for outcome, n in tally.most_common()),
        "",
        f"Operator API writes: {writes:.0f} for {accepted} accepted ModelServers "
        f"({writes / max(1, accepted):.1f} each), none in the final quiet window; no traceback.",
        "",
        "Sample messages:",
        "",
        *sorted({f"- {kind}: {text!r}" for kind, text in samples[:400]})[:30],
    ]
    text = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "hostile_specs.md").write_text(text)
    print("\n" + text)
