"""Prometheus metrics of the operator (served on GLOWPLUG_METRICS_PORT at /metrics)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from glowplug_operator.rollback import STATES, FlagState


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["namespace", "modelserver"]
        self.rollbacks = Counter(
            "glowplug_optimization_rollbacks",
            "Startup flags rolled back, by flag and reason.",
            [*labels, "flag", "reason"],
            registry=self.registry,
        )
        self.flag_state = Gauge(
            "glowplug_optimization_state",
            "1 for the state each startup flag is in, 0 for the others.",
            [*labels, "flag", "state"],
            registry=self.registry,
        )
        self.cold_start = Gauge(
            "glowplug_modelserver_cold_start_seconds",
            "Seconds from scheduling to Ready of the last start.",
            labels,
            registry=self.registry,
        )
        self.ready_replicas = Gauge(
            "glowplug_modelserver_ready_replicas", "Ready replicas.", labels, registry=self.registry
        )
        self.template_changes = Counter(
            "glowplug_template_changes",
            "Pod template changes made to change the effective startup flags.",
            labels,
            registry=self.registry,
        )
        self.phase_seconds = Histogram(
            "glowplug_cold_start_seconds",
            "Seconds of each phase of a start that reached Ready: the prefetcher's download and "
            "the worker's import, config, load and warmup.",
            ["phase"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "glowplug_reconcile_seconds",
            "Time to reconcile one ModelServer.",
            registry=self.registry,
        )
        self.api_writes = Counter(
            "glowplug_api_writes",
            "Write requests the operator sent, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "glowplug_reconcile_errors",
            "Reconciles that failed and were retried.",
            registry=self.registry,
        )

    def observe(
        self,
        namespace: str,
        name: str,
        ready: int,
        cold_start: float | None,
        states: Sequence[FlagState],
    ) -> None:
        self.ready_replicas.labels(namespace, name).set(ready)
        if cold_start is not None:
            self.cold_start.labels(namespace, name).set(cold_start)
        for flag in states:
            for state in STATES:
                self.flag_state.labels(namespace, name, flag.name, state).set(
                    1 if flag.state == state else 0
                )

    def observe_phases(self, phases: Mapping[str, float]) -> None:
        for phase, seconds in phases.items():
            self.phase_seconds.labels(phase).observe(seconds)

    def forget(self, namespace: str, name: str) -> None:
        """Drop the series of a deleted ModelServer."""
        for metric in (
            self.rollbacks,
            self.flag_state,
            self.cold_start,
            self.ready_replicas,
            self.template_changes,
        ):
            for labels in list(metric._metrics):  # prometheus_client has no public listing
                if labels[:2] == (namespace, name):
                    metric.remove(*labels)
