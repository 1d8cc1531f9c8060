"""The `config` and `load` phases: read config and tokenizer, then put the weights on the device,
either with plain transformers (`from_pretrained`, the baseline) or with `fast-load`."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glowplug_worker.serve.startup.devices import SPREAD_MAP, Placement, placement
from glowplug_worker.serve.startup.safetensors_io import FLOAT_DTYPES, TORCH_DTYPES, CheckpointError
from glowplug_worker.serve.startup.state import FlagFailure

if TYPE_CHECKING:
    from glowplug_worker.serve.startup.fast_load import WeightStream
    from glowplug_worker.serve.startup.imports import MlStack

log = logging.getLogger("glowplug.serve")

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


class ModelConfigError(ValueError):
    """The model directory does not hold a model this server can serve as asked."""


def model_dir_problem(model_dir: Path) -> str | None:
    """What is wrong with `--model` as a model directory, or None."""
    if not model_dir.is_dir():
        return (
            f"--model {model_dir}: no such directory (the prefetch init container "
            "writes the model there; check the volume mount)"
        )
    if not (model_dir / "config.json").is_file():
        return (
            f"--model {model_dir}: no config.json; point --model at a transformers model directory"
        )
    return None


@dataclass
class Pooling:
    """How sentence-transformers turns token states into one vector (from its config files)."""

    mode: str = "mean"  # mean | cls | max
    normalize: bool = True
    max_seq_length: int | None = None


@dataclass
class Prepared:
    """Output of the config phase."""

    model_dir: Path
    task: str
    config: Any
    tokenizer: Any
    dtype: Any  # torch.dtype
    device: Any  # torch.device
    max_model_len: int
    pooling: Pooling = field(default_factory=Pooling)
    placement: Placement = field(default_factory=lambda: Placement("cpu"))


def read_pooling(model_dir: Path) -> Pooling:
    pooling = Pooling()
    modules_file = model_dir / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        types = [m.get("type", "") for m in modules]
        pooling.normalize = any(t.endswith("Normalize") for t in types)
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                cfg_file = model_dir / m.get("path", "") / "config.json"
                if cfg_file.is_file():
                    cfg = json.loads(cfg_file.read_text())
                    if cfg.get("pooling_mode_cls_token"):
                        pooling.mode = "cls"
                    elif cfg.get("pooling_mode_max_tokens"):
                        pooling.mode = "max"
                    elif not cfg.get("pooling_mode_mean_tokens", True):
                        raise ModelConfigError(
                            f"{cfg_file}: only mean, cls or max pooling is supported"
                        )
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.is_file():
        pooling.max_seq_length = json.loads(st_cfg.read_text()).get("max_seq_length")
    return pooling


def first_float_dtype(model_dir: Path) -> str | None:
    from glowplug_worker.serve.startup.safetensors_io import checkpoint_files, read_header

    for path in checkpoint_files(model_dir)[:1]:
        for entry in read_header(path):
            if entry.dtype in FLOAT_DTYPES:
                return TORCH_DTYPES[entry.dtype]
    return None


def resolve_dtype(torch: Any, config: Any, requested: str, model_dir: Path) -> Any:
    if requested != "auto":
        return getattr(torch, requested)
    found = getattr(config, "dtype", None)
    if isinstance(found, str):
        found = getattr(torch, found, None)
    if found is None:
        name = first_float_dtype(model_dir)
        found = getattr(torch, name) if name else torch.float32
    return found


def prepare(
    stack: MlStack,
    model_dir: Path,
    task: str,
    dtype: str,
    device: str,
    offline: bool,
    max_model_len: int | None,
) -> Prepared:
    """The config phase."""
    torch = stack.torch
    if (problem := model_dir_problem(model_dir)) is not None:
        raise ModelConfigError(problem)
    config = stack.config_loader.from_pretrained(model_dir, local_files_only=offline)
    archs = list(getattr(config, "architectures", None) or [])
    if task == "generate" and archs and not any(a.endswith("ForCausalLM") for a in archs):
        raise ModelConfigError(
            f"--task generate needs a causal LM, but {model_dir} holds "
            f"{', '.join(archs)}; use --task embed for encoders"
        )
    tokenizer = stack.tokenizer_loader.from_pretrained(model_dir, local_files_only=offline)
    cuda = bool(torch.cuda.is_available())
    if device.startswith("cuda") and not cuda:
        raise ModelConfigError(f"--device {device}: CUDA is not available in this container")
    place = placement(device, cuda, int(torch.cuda.device_count()) if cuda else 0)
    dev = torch.device(place.device)
    limit = getattr(config, "max_position_embeddings", None) or 2048
    if max_model_len is not None:
        if max_model_len > limit:
            raise ModelConfigError(
                f"--max-model-len {max_model_len} exceeds the model's "
                f"max_position_embeddings ({limit})"
            )
        limit = max_model_len
    pooling = read_pooling(model_dir) if task == "embed" else Pooling()
    if pooling.max_seq_length:
        limit = min(limit, pooling.max_seq_length)
    return Prepared(
        model_dir,
        task,
        config,
        tokenizer,
        resolve_dtype(torch, config, dtype, model_dir),
        dev,
        limit,
        pooling,
        place,
    )


def load_plain(stack: MlStack, prep: Prepared, offline: bool) -> tuple[Any, dict[str, Any]]:
    """The baseline: `from_pretrained`, on the device via `device_map` when accelerate is
    installed, else moved there afterwards; spread over every visible GPU (accelerate's
    balanced device map) when there are several."""
    import importlib.util

    torch = stack.torch
    cls = stack.model_loader
    begin = time.perf_counter()
    kwargs: dict[str, Any] = {"dtype": prep.dtype, "local_files_only": offline}
    on_device = prep.device.type != "cpu" and importlib.util.find_spec("accelerate") is not None
    if prep.placement.spread:
        if not on_device:
            raise ModelConfigError(
                f"{prep.placement.gpus} GPUs are visible, and spreading a model over them "
                "needs the accelerate package in the image"
            )
        kwargs["device_map"] = SPREAD_MAP
    elif on_device:
        kwargs["device_map"] = str(prep.device)
    model = cls.from_pretrained(prep.model_dir, **kwargs)
    if not on_device and prep.device.type != "cpu":
        model = model.to(prep.device)
    if prep.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - begin
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    devices = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()})
    return model.eval(), {
        "loader": "transformers",
        **({"device_map": SPREAD_MAP, "devices": devices} if prep.placement.spread else {}),
        "bytes": total,
        "seconds": round(seconds, 4),
        "gb_per_second": round(total / seconds / 1e9, 3) if seconds else None,
    }


def load_fast(
    stack: MlStack, prep: Prepared, stream: WeightStream | None = None
) -> tuple[Any, dict[str, Any]]:
    """`fast-load`; `stream` is a `WeightStream` started during the import phase, if any."""
    from glowplug_worker.serve.startup.fast_load import load_weights, parameters_on_meta

    cls = stack.model_loader
    with parameters_on_meta():
        model = cls.from_config(prep.config, dtype=prep.dtype)
    stats = load_weights(model, prep.model_dir, prep.device, prep.dtype, stream)
    return model.eval(), stats


def load_native(
    stack: MlStack, prep: Prepared, stream: WeightStream | None = None
) -> tuple[Any, dict[str, Any]]:
    """`native-model`: glowplug's own Llama module, filled by the fast-load streaming loader."""
    from glowplug_worker.serve.startup.fast_load import load_weights
    from glowplug_worker.serve.startup.flags import NATIVE_MODEL

    if stack.native is None:
        raise ValueError("load_native needs the native stack (import_native_stack)")
    model = stack.native.build(prep.model_dir, prep.config)
    try:
        stats = load_weights(model, prep.model_dir, prep.device, prep.dtype, stream)
    except FlagFailure as exc:  # the loader blames fast-load; here the model is native-model's
        raise FlagFailure(NATIVE_MODEL, str(exc)) from exc
    return model.eval(), {**stats, "loader": "native-model"}


__all__ = [
    "DTYPE_CHOICES",
    "CheckpointError",
    "ModelConfigError",
    "Prepared",
    "load_fast",
    "load_native",
    "load_plain",
    "prepare",
]
