"""Where the model goes (no GPU needed): one device, or spread over every visible GPU with
accelerate's device map when the operator gave the pod several (`resources.gpus`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from glowplug_worker.serve.startup.devices import Placement, placement, visible_gpus_from_env
from glowplug_worker.serve.startup.imports import MlStack, import_stack
from glowplug_worker.serve.startup.loading import ModelConfigError, load_plain, prepare

pytestmark = pytest.mark.worker


@pytest.mark.parametrize(
    ("requested", "available", "count", "expected"),
    [
        ("auto", False, 0, Placement("cpu")),
        ("cpu", True, 4, Placement("cpu")),
        ("auto", True, 1, Placement("cuda", None, 1)),
        ("cuda", True, 1, Placement("cuda", None, 1)),
        ("auto", True, 2, Placement("cuda:0", "auto", 2)),
        ("cuda", True, 8, Placement("cuda:0", "auto", 8)),
        ("cuda:1", True, 4, Placement("cuda:1", None, 1)),  # pinned: one GPU, as asked
    ],
)
def test_placement(requested: str, available: bool, count: int, expected: Placement) -> None:
    assert placement(requested, available, count) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, None),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-1a,GPU-2b"}, 2),
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, 0),
        ({"CUDA_VISIBLE_DEVICES": "3", "NVIDIA_VISIBLE_DEVICES": "GPU-1a,GPU-2b"}, 1),
    ],
)
def test_gpus_the_container_was_given(env: dict[str, str], expected: int | None) -> None:
    assert visible_gpus_from_env(env) == expected


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)


class RecordingLoader:
    """transformers' Auto class as load_plain calls it, recording the arguments."""

    calls: list[dict[str, Any]] = []

    @classmethod
    def from_pretrained(cls, model_dir: Path, **kwargs: Any) -> Any:
        cls.calls.append(kwargs)
        model = torch.nn.Linear(2, 2)
        model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "lm_head": 1}  # type: ignore[assignment]
        return model


def test_several_gpus_spread_the_model_with_a_device_map(tiny_model: Path, two_gpus: None) -> None:
    stack = import_stack("generate", tiny_model)
    prep = prepare(stack, tiny_model, "generate", "auto", "auto", True, None)
    assert prep.placement == Placement("cuda:0", "auto", 2)
    assert str(prep.device) == "cuda:0"  # inputs go to the first GPU
    recording = MlStack(torch, stack.config_loader, stack.tokenizer_loader, RecordingLoader)
    RecordingLoader.calls.clear()
    _, stats = load_plain(recording, prep, True)
    assert RecordingLoader.calls[-1]["device_map"] == "auto"
    assert stats["devices"] == ["0", "1"] and stats["device_map"] == "auto"


def test_one_pinned_gpu_is_not_spread(tiny_model: Path, two_gpus: None) -> None:
    stack = import_stack("generate", tiny_model)
    prep = prepare(stack, tiny_model, "generate", "auto", "cuda:1", True, None)
    recording = MlStack(torch, stack.config_loader, stack.tokenizer_loader, RecordingLoader)
    RecordingLoader.calls.clear()
    load_plain(recording, prep, True)
    assert RecordingLoader.calls[-1]["device_map"] == "cuda:1"


def test_cuda_asked_without_cuda_is_refused(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    stack = import_stack("generate", tiny_model)
    with pytest.raises(ModelConfigError, match="CUDA is not available"):
        prepare(stack, tiny_model, "generate", "auto", "cuda", True, None)
