"""Whether `native-model` can serve a model directory: read from its config and tokenizer files
only (no torch, no transformers), so the worker can decide before the import phase's imports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glowplug_worker.serve import native_tokenizer

ARCHITECTURE = "LlamaForCausalLM"
# Config keys with the only values this implementation reproduces.
REQUIRED_VALUES: dict[str, Any] = {
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "pretraining_tp": 1,
}


def read_config(model_dir: Path) -> dict[str, Any]:
    return dict(json.loads((model_dir / "config.json").read_text()))


def rope_theta(config: dict[str, Any]) -> float | None:
    """The RoPE base when the RoPE type is the default one (transformers 5 writes
    `rope_parameters`, 4.x `rope_theta` and `rope_scaling`); None for any scaled RoPE."""
    params = config.get("rope_parameters")
    if isinstance(params, dict):
        if params.get("rope_type", "default") != "default":
            return None
        return float(params.get("rope_theta", 10000.0))
    if config.get("rope_scaling"):
        return None
    return float(config.get("rope_theta", 10000.0))


def unsupported_reason(model_dir: Path, task: str) -> str | None:
    """Why this model cannot be served natively (then transformers serves it), or None."""
    if task != "generate":
        return f"task {task} (native-model serves generate only)"
    try:
        config = read_config(model_dir)
    except (OSError, ValueError) as exc:
        return f"config.json unreadable ({exc})"
    archs = config.get("architectures") or [ARCHITECTURE]
    if archs != [ARCHITECTURE] or config.get("model_type") != "llama":
        return f"architecture {', '.join(map(str, archs))} (native-model knows {ARCHITECTURE})"
    for key, value in REQUIRED_VALUES.items():
        if config.get(key, value) != value:
            return f"config {key}={config.get(key)!r}"
    if rope_theta(config) is None:
        return "scaled RoPE (rope_scaling / rope_parameters.rope_type)"
    return native_tokenizer.unsupported_reason(model_dir)
