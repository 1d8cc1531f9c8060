"""Where the model goes: one device, or spread over every visible GPU.

The operator asks for `resources.gpus` as the container's `nvidia.com/gpu` limit, and the
device plugin makes exactly that many GPUs visible in the container; so the worker spreads the
model over all the GPUs it can see (`--device auto` or `cuda`). `--device cuda:N` pins one.
Spreading uses accelerate's device map through transformers' `from_pretrained(device_map=...)`:
"auto" balances the layers over the GPUs' memory. Pure functions, no torch import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

SPREAD_MAP = "auto"  # transformers/accelerate: balanced over the visible GPUs


@dataclass(frozen=True)
class Placement:
    device: str  # where inputs go: cpu, cuda, cuda:N (with a device map: the first GPU)
    device_map: str | None = None  # set when the model is spread over several GPUs
    gpus: int = 0

    @property
    def spread(self) -> bool:
        return self.device_map is not None


def placement(requested: str, cuda_available: bool, cuda_count: int) -> Placement:
    """The placement for `--device requested` with `cuda_count` visible GPUs."""
    if requested == "auto":
        requested = "cuda" if cuda_available else "cpu"
    if requested == "cpu":
        return Placement("cpu")
    if requested == "cuda" and cuda_count > 1:
        return Placement("cuda:0", SPREAD_MAP, cuda_count)
    return Placement(requested, None, 1)


def visible_gpus_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """How many GPUs the container was given, read before torch is imported (to decide whether
    the single-device `native-model` can serve): from CUDA_VISIBLE_DEVICES, else the device
    plugin's NVIDIA_VISIBLE_DEVICES; None when neither says ("all", unset)."""
    env = os.environ if env is None else env
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        value = env.get(name)
        if value is None or value.strip() in ("", "all"):
            continue
        if value.strip() in ("void", "none"):
            return 0
        return len([v for v in value.split(",") if v.strip()])
    return None
