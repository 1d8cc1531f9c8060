"""ModelServers for the kwok tests: the tiny model at an address nothing fetches (kwok's pods
never run a container), with the resources, flags and other spec fields a test names."""

from __future__ import annotations

from typing import Any

SIMULATED_SOURCE = "https://models.example/tiny/manifest.json"


def optimizations(*names: str) -> list[dict[str, Any]]:
    """`spec.startup.optimizations` entries for built-in flags."""
    return [{"name": name} for name in names]


def modelserver(
    name: str, *, gpus: int = 1, source: str = SIMULATED_SOURCE, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": name},
        "spec": {"model": {"source": source}, "resources": {"gpus": gpus}, **spec},
    }
