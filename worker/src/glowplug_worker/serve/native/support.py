"""Whether `native-model` can serve a model directory: read from its config and tokenizer files
only (no torch, no transformers), so the worker can decide before the import phase's imports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glowplug_worker.serve.native import tokenizer as native_tokenizer

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


ROPE_TYPES = ("default", "llama3")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_parameters(config: dict[str, Any]) -> dict[str, Any] | None:
    """The RoPE settings as transformers 5 writes them (`rope_parameters`: rope_type, rope_theta
    and the type's keys; 4.x wrote `rope_theta` and `rope_scaling`), or None when this
    implementation does not reproduce them (only default and llama3 RoPE, whole head)."""
    params = config.get("rope_parameters")
    if not isinstance(params, dict):
        params = dict(config.get("rope_scaling") or {})
        if "type" in params:
            params.setdefault("rope_type", params.pop("type"))
        params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    params = {"rope_type": "default", "rope_theta": 10000.0, **params}
    if params["rope_type"] not in ROPE_TYPES or params.get("partial_rotary_factor", 1.0) != 1.0:
        return None
    if params["rope_type"] == "llama3" and not all(k in params for k in LLAMA3_KEYS):
        return None
    return params


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
    if rope_parameters(config) is None:
        rope = config.get("rope_parameters") or config.get("rope_scaling")
        return f"RoPE {rope} (native-model: {', '.join(ROPE_TYPES)})"
    return native_tokenizer.unsupported_reason(model_dir)
