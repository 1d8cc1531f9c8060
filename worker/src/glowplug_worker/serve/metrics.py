"""Prometheus metrics of one server, in its own registry (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.phase_seconds = Gauge(
            "glowplug_worker_startup_phase_seconds",
            "Duration of each finished startup phase",
            ["phase"],
            registry=r,
        )
        self.time_to_ready = Gauge(
            "glowplug_worker_startup_seconds",
            "Seconds from process start to ready (after warmup)",
            registry=r,
        )
        self.ready = Gauge("glowplug_worker_ready", "1 while /ready answers 200", registry=r)
        self.optimization = Gauge(
            "glowplug_worker_optimization_active",
            "1 for each startup flag active in this process",
            ["flag"],
            registry=r,
        )
        self.load_bytes_per_second = Gauge(
            "glowplug_worker_load_bytes_per_second",
            "Weight bytes per second of the load phase",
            registry=r,
        )
        self.requests = Counter(
            "glowplug_worker_requests_total",
            "Requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "glowplug_worker_request_duration_seconds",
            "Request latency, admission to last byte",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "glowplug_worker_time_to_first_token_seconds",
            "Time from admission to the first generated token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "glowplug_worker_tokens_per_second",
            "Generated tokens per second of each request",
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "glowplug_worker_prompt_tokens_total", "Prompt tokens", registry=r
        )
        self.generated_tokens = Counter(
            "glowplug_worker_generated_tokens_total", "Generated tokens", registry=r
        )
        self.queue_depth = Gauge(
            "glowplug_worker_queue_depth", "Requests waiting for a slot", registry=r
        )
        self.decode_batch = Histogram(
            "glowplug_worker_decode_batch_size",
            "Sequences carried by each decode forward pass (continuous batching)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.running = Gauge(
            "glowplug_worker_requests_running", "Requests running on the model", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
