"""An operator restart with many ModelServers (issue 16, item 8): the first reconciles after the
restart see the pods that exist, so no Ready flaps and no Warning Event is posted for nothing."""

from __future__ import annotations

import signal

from tests.cluster.kube import Kubectl, wait_until
from tests.cluster.operator import OperatorProcess
from tests.e2e.test_modelserver import _condition, _example

MANY = 30


def test_a_restart_with_many_modelservers_does_not_flap_ready(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, needs_kwok: None
) -> None:
    k = kubectl.in_namespace(namespace)
    names = [f"r-{i}" for i in range(MANY)]
    # No GPUs asked: the kwok nodes have 16 between them.
    k.apply(*[_example(n, resources={"gpus": 0}) for n in names])

    def all_ready() -> dict[str, str] | None:
        items = k.get("ms")["items"]
        ready = {
            ms["metadata"]["name"]: c["lastTransitionTime"]
            for ms in items
            if (c := _condition(ms, "Ready")) and c["status"] == "True"
        }
        return ready if len(ready) == MANY else None

    before = wait_until(f"{MANY} ModelServers Ready", all_ready, timeout=240)
    warnings_before = {
        e["metadata"]["name"] for e in k.get("events")["items"] if e["type"] == "Warning"
    }
    operator.kill(signal.SIGKILL)
    operator.start()

    def reconciled_twice() -> bool:
        """The restarted process (its metrics start from zero) has reconciled at least 2x as
        many times as there are ModelServers (its first pass and a resync, every 5 s) and set
        every one's Ready replicas gauge."""
        try:
            samples = operator.samples()
        except OSError:  # not listening yet
            return False
        count = samples[("glowplug_reconcile_seconds_count", {})] or 0
        gauges = [
            samples[
                (
                    "glowplug_modelserver_ready_replicas",
                    {"namespace": namespace, "modelserver": n},
                )
            ]
            for n in names
        ]
        return count >= 2 * MANY and None not in gauges

    wait_until("the restarted operator to reconcile each twice", reconciled_twice, timeout=60)
    after = all_ready()
    assert after == before, "Ready changed across the restart"
    new_warnings = [
        (e["involvedObject"]["name"], e["reason"], e["message"])
        for e in k.get("events")["items"]
        if e["type"] == "Warning" and e["metadata"]["name"] not in warnings_before
    ]
    assert new_warnings == []
