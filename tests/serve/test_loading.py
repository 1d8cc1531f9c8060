"""The config/load/warmup machinery in-process, on the real tiny Llama and the real MiniLM:
fast-load gives the same weights as transformers, generation matches `generate`, embeddings
match sentence-transformers, and broken checkpoints fail with messages naming the file."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from glowplug_worker.serve.engine import Engine, Sampling
from glowplug_worker.serve.startup.imports import import_stack
from glowplug_worker.serve.startup.loading import load_fast, load_plain, prepare
from glowplug_worker.serve.startup.safetensors_io import CheckpointError, read_header
from glowplug_worker.serve.startup.state import FlagFailure

pytestmark = pytest.mark.worker


def load(model_dir: Path, task: str, fast: bool) -> tuple[Any, Any]:
    stack = import_stack(task, model_dir)
    prep = prepare(stack, model_dir, task, "auto", "cpu", True, None)
    model, stats = load_fast(stack, prep) if fast else load_plain(stack, prep, True)
    assert stats["bytes"] > 0
    return Engine(
        torch, model, prep.tokenizer, prep.device, task, prep.max_model_len, prep.pooling
    ), stats


@pytest.fixture(scope="module")
def tiny_plain(tiny_model: Path) -> Engine:
    return load(tiny_model, "generate", fast=False)[0]


def same_state(a: Any, b: Any) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    for (ka, va), (kb, vb) in zip(a.named_buffers(), b.named_buffers(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka


@pytest.mark.parametrize("which", ["tiny_model", "tiny_sharded"])
def test_fast_load_equals_from_pretrained(
    which: str, tiny_plain: Engine, request: pytest.FixtureRequest
) -> None:
    fast, stats = load(request.getfixturevalue(which), "generate", fast=True)
    assert stats["loader"] == "fast-load"
    same_state(fast.model, tiny_plain.model)


def test_fast_load_minilm_equals_from_pretrained(minilm: Path) -> None:
    plain, _ = load(minilm, "embed", fast=False)
    fast, _ = load(minilm, "embed", fast=True)
    same_state(fast.model, plain.model)


def test_greedy_generation_matches_transformers_generate(tiny_plain: Engine) -> None:
    ids = tiny_plain.encode("The quick brown fox")
    ours = list(tiny_plain.generate(ids, Sampling(max_tokens=30, temperature=0.0, ignore_eos=True)))
    ref = tiny_plain.model.generate(
        torch.tensor([ids]), max_new_tokens=30, do_sample=False, min_new_tokens=30
    )
    assert ours == ref[0, len(ids) :].tolist()


def test_embeddings_match_sentence_transformers(minilm: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["A glow plug pre-heats a diesel engine.", "hello", "word " * 400]  # last truncated
    engine, _ = load(minilm, "embed", fast=True)
    ours, tokens = engine.embed(texts)
    ref = SentenceTransformer(str(minilm), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(torch.tensor(ours), ref.float(), atol=1e-5)
    assert tokens > 256


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_header(path: Path, edit: Any) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))  # keep the data offsets valid
    assert len(text) == n
    path.write_bytes(raw[:8] + text + raw[8 + n :])


def test_truncated_weights_name_the_file(tiny_model: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model, tmp_path / "m")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        read_header(weights)


def test_unknown_tensor_blames_fast_load(tiny_model: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model, tmp_path / "m")

    def rename(h: dict[str, Any]) -> None:
        h["model.nrm_.weight"] = h.pop("model.norm.weight")  # same length

    rewrite_header(model / "model.safetensors", rename)
    with pytest.raises(FlagFailure, match=r"no place in LlamaForCausalLM.*nrm_") as err:
        load(model, "generate", fast=True)
    assert err.value.flag == "fast-load"


def test_missing_tensor_is_reported(tiny_model: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model, tmp_path / "m")
    rewrite_header(model / "model.safetensors", lambda h: h.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match=r"lacks weights for model\.norm\.weight"):
        load(model, "generate", fast=True)


def test_generate_task_refuses_an_encoder(minilm: Path) -> None:
    stack = import_stack("generate", minilm)
    with pytest.raises(ValueError, match="--task embed"):
        prepare(stack, minilm, "generate", "auto", "cpu", True, None)


def test_early_weight_stream_keeps_errors_for_the_load_phase(
    tmp_path: Path, tiny_model: Path
) -> None:
    from glowplug_worker.serve.startup.fast_load import WeightStream, start_early

    broken = WeightStream(tmp_path, "cpu").start()  # no weights here: must not raise yet
    with pytest.raises(CheckpointError, match="no weight files"):
        broken.result()
    stream = start_early(tiny_model, "auto")  # CPU here
    assert stream is not None
    raw = stream.result()
    assert "lm_head.weight" in raw and stream.seconds > 0
