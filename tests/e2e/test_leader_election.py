"""Two operators and one Lease (issue 13): the standby writes nothing (no reconcile, no status, no
Event) until it holds the Lease; when the leader is SIGKILLed in the middle of a rollout the
standby takes over within 15 s, and the rollout finishes, with one writer at a time.

The takeover timings are printed and written to bench/results/leader_takeover.md."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.cluster import behaviours as b
from tests.cluster.kube import ROOT, Kubectl, wait_until
from tests.cluster.operator import OperatorProcess
from tests.e2e.conftest import Stages
from tests.e2e.test_modelserver import _condition, _example

LEASE = "glowplug"
LEASE_SECONDS = 8
REPLICAS = 3
WRITE_LINE = ("status written", " applied", " created", " updated", " unchanged", " deleted")
WRITE_LINE += (" posted",)


def _elected(kubectl: Kubectl, namespace: str, tmp_path: Path, name: str) -> OperatorProcess:
    process = OperatorProcess(
        kubectl.kubeconfig,
        namespace,
        tmp_path,
        resync_seconds="5",
        leader_election="true",
        lease_name=LEASE,
        lease_namespace=namespace,
        lease_seconds=str(LEASE_SECONDS),
        identity=name,
    )
    process.log_path = tmp_path / f"{name}.log"
    return process


def _holder(k: Kubectl) -> str | None:
    if not k.exists("lease", LEASE):
        return None
    return str(k.get("lease", LEASE)["spec"].get("holderIdentity") or "") or None


def _writes(process: OperatorProcess) -> float:
    samples = process.samples().found
    return sum(v for (name, _), v in samples.items() if name == "glowplug_api_writes_total")


def _reconciles(process: OperatorProcess) -> float:
    samples = process.samples().found
    return sum(v for (name, _), v in samples.items() if name == "glowplug_reconcile_seconds_count")


def _write_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "modelserver " in line and any(
        w in line for w in WRITE_LINE
    )]  # fmt: skip


def _rolled_out(k: Kubectl, generation: int) -> dict[str, Any] | None:
    ms = k.get("ms", "ha")
    ready = _condition(ms, "Ready")
    deployment = k.get("deployment", "ha")
    status = deployment.get("status") or {}
    done = (
        ms["metadata"]["generation"] == generation
        and (ms.get("status") or {}).get("observedGeneration") == generation
        and ready is not None
        and ready["status"] == "True"
        and status.get("observedGeneration") == deployment["metadata"]["generation"]
        and status.get("updatedReplicas") == REPLICAS
        and status.get("readyReplicas") == REPLICAS
        and status.get("replicas") == REPLICAS  # the old pods are gone
    )
    return ms if done else None


def test_the_standby_takes_over_a_rollout_when_the_leader_is_killed(
    kubectl: Kubectl, sim_namespace: str, stages: Stages, crd: None, tmp_path: Path
) -> None:
    k = kubectl.in_namespace(sim_namespace)
    stages.add(b.ready("slow", [], delay_ms=4000))  # a rolling update takes a while
    leader = _elected(kubectl, sim_namespace, tmp_path, "op-a").start()
    standby = _elected(kubectl, sim_namespace, tmp_path, "op-b")
    try:
        wait_until("op-a holding the Lease", lambda: _holder(k) == "op-a", timeout=60)
        standby.start()
        wait_until("op-b a standby", lambda: "is a standby" in standby.log(), timeout=60)

        k.apply(_example("ha", replicas=REPLICAS, resources={"gpus": 0}))
        wait_until("ha Ready", lambda: _rolled_out(k, 1), timeout=120)

        # The rollout: other flags, so a new pod template, rolled one pod at a time.
        k.run(
            "patch", "ms", "ha", "--type=merge",
            "-p", json.dumps({"spec": {"startup": {"optimizations": [{"name": "hf-offline"}]}}}),
        )  # fmt: skip
        wait_until(
            "op-a applying the new template",
            lambda: k.get("deployment", "ha")["metadata"]["generation"] > 1,
            timeout=60,
        )
        # Until now the standby has watched everything and written nothing.
        assert _writes(standby) == 0
        assert _reconciles(standby) == 0
        assert _write_lines(standby.log()) == []
        assert _write_lines(leader.log()), "the leader logs its writes"

        killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
        leader.kill(signal.SIGKILL)
        wait_until("op-b holding the Lease", lambda: _holder(k) == "op-b", timeout=30)
        takeover = time.monotonic() - killed_at
        wait_until("op-b's first reconcile", lambda: _reconciles(standby) > 0, timeout=30)
        first_reconcile = time.monotonic() - killed_at
        assert takeover < 15, f"the standby took {takeover:.1f}s to take over"

        ms = wait_until("the rollout finished", lambda: _rolled_out(k, 2), timeout=120)
        finished = time.monotonic() - killed_at
        states = {f["name"]: f["state"] for f in ms["status"]["optimizations"]}
        assert states == {"hf-offline": "Active"}

        # One writer at a time: the new leader's writes all come after it took the Lease ...
        log = standby.log().splitlines()
        took = next(i for i, line in enumerate(log) if "holds Lease" in line)
        assert not _write_lines("\n".join(log[:took]))
        # ... its Events too; the old leader's all come before it was killed.
        events = [
            e
            for e in k.get("events")["items"]
            if e.get("reportingComponent", "").startswith("glowplug")
        ]
        by = {e["reportingInstance"] for e in events}
        assert by <= {"op-a", "op-b"}, by
        kill_second = killed_wall.replace(microsecond=0)
        for event in events:
            at = datetime.fromisoformat(event["firstTimestamp"].replace("Z", "+00:00"))
            if event["reportingInstance"] == "op-a":
                assert at <= killed_wall, event
            else:
                assert at >= kill_second, event

        # Both write as one field manager: one Apply entry, no fight over fields, and nothing
        # written once converged (two resync periods): the ModelServer's version (only the
        # operator writes its status) and the operator's entry in the Deployment stay as they
        # are (its status is the Deployment controller's and may still move).
        def ours() -> list[dict[str, Any]]:
            deployment = k.run("get", "deployment", "ha", "-o", "json", "--show-managed-fields")
            fields = json.loads(deployment)["metadata"]["managedFields"]
            return [m for m in fields if m["manager"] == "glowplug"]

        applied = ours()
        assert [(m["manager"], m["operation"]) for m in applied] == [("glowplug", "Apply")]
        version = k.get("ms", "ha")["metadata"]["resourceVersion"]
        writes = _writes(standby)
        time.sleep(10)
        assert _writes(standby) == writes
        assert k.get("ms", "ha")["metadata"]["resourceVersion"] == version
        assert ours() == applied
    finally:
        leader.kill()
        standby.kill()

    line = (
        f"| {LEASE_SECONDS} | {takeover:.1f} | {first_reconcile:.1f} | {finished:.1f} "
        f"| {len([e for e in events if e['reportingInstance'] == 'op-a'])} "
        f"| {len([e for e in events if e['reportingInstance'] == 'op-b'])} |"
    )
    print(
        "\nleader SIGKILLed mid-rollout; seconds after the kill:\n"
        "| lease (s) | Lease taken by the standby | its first reconcile | rollout finished "
        "| Events by the old leader | Events by the new one |\n" + line
    )
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    with (results / "leader_takeover.md").open("a") as out:
        out.write(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC {line}\n")


def test_a_leader_stopped_cleanly_hands_the_lease_over_at_once(
    kubectl: Kubectl, namespace: str, crd: None, tmp_path: Path, needs_kwok: None
) -> None:
    """SIGTERM (a rolling update, a drain): the leader stops writing, gives the Lease up and
    exits 0; the standby takes it at its next try (every 2 s), not a whole lease later."""
    k = kubectl.in_namespace(namespace)
    leader = _elected(kubectl, namespace, tmp_path, "op-a").start()
    standby = _elected(kubectl, namespace, tmp_path, "op-b")
    try:
        wait_until("op-a holding the Lease", lambda: _holder(k) == "op-a", timeout=60)
        standby.start()
        wait_until("op-b a standby", lambda: "is a standby" in standby.log(), timeout=60)
        assert leader.proc is not None
        stopped_at = time.monotonic()
        leader.proc.send_signal(signal.SIGTERM)
        wait_until("op-b holding the Lease", lambda: _holder(k) == "op-b", timeout=30)
        handover = time.monotonic() - stopped_at
        assert leader.proc.wait(timeout=30) == 0, leader.log()[-2000:]
        assert "released Lease" in leader.log()
    finally:
        leader.kill()
        standby.kill()
    print(f"\nleader SIGTERMed: the standby held the Lease {handover:.1f}s after the signal")
    assert handover < LEASE_SECONDS, "the Lease was not released: it ran out"
