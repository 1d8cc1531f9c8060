"""The CUDA paths, on a real GPU: fast-load's pinned ring puts exactly the checkpoint's bytes on
the device, and the served model answers the same with every flag as without. Skipped on
machines without CUDA (CI); run on a GPU with `uv run pytest tests/serve/test_cuda.py`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from glowplug_worker.serve.startup import fast_load
from glowplug_worker.serve.startup.flags import KNOWN_FLAGS
from glowplug_worker.serve.startup.imports import import_stack
from glowplug_worker.serve.startup.loading import load_fast, load_plain, prepare

from tests.serve.servers import Server, all_running
from tests.serve.test_flags_outputs import outputs

pytestmark = [
    pytest.mark.worker,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def loaded(model_dir: Path, task: str, fast: bool, dtype: str = "auto") -> tuple[object, dict]:
    stack = import_stack(task, model_dir)
    prep = prepare(stack, model_dir, task, dtype, "cuda", True, None)
    return load_fast(stack, prep) if fast else load_plain(stack, prep, True)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].device.type == "cuda", name
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("slot_bytes", [fast_load.CHUNK_BYTES, 4096])
@pytest.mark.parametrize("which", ["tiny_model", "tiny_sharded"])
def test_fast_load_on_cuda_equals_from_pretrained(
    which: str, slot_bytes: int, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 KiB ring slots split every tensor into many chunks and make the six slots wrap around
    hundreds of times, so a copy that overtook its read would show up as wrong bytes."""
    monkeypatch.setattr(fast_load, "CHUNK_BYTES", slot_bytes)
    model_dir = request.getfixturevalue(which)
    plain, _ = loaded(model_dir, "generate", fast=False)
    fast, stats = loaded(model_dir, "generate", fast=True)
    assert stats["loader"] == "fast-load" and stats["bytes"] > 0
    assert_same_state(fast, plain)


def test_fast_load_on_cuda_casts_to_the_requested_dtype(tiny_model: Path) -> None:
    plain, _ = loaded(tiny_model, "generate", fast=False, dtype="bfloat16")
    fast, _ = loaded(tiny_model, "generate", fast=True, dtype="bfloat16")
    assert next(fast.parameters()).dtype == torch.bfloat16
    assert_same_state(fast, plain)


def test_minilm_on_cuda_fast_load_equals_from_pretrained(minilm: Path) -> None:
    plain, _ = loaded(minilm, "embed", fast=False)
    fast, _ = loaded(minilm, "embed", fast=True)
    assert_same_state(fast, plain)


@pytest.fixture(scope="module")
def cuda_servers(
    tiny_sharded: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    combos = {"none": "", "all": ",".join(KNOWN_FLAGS)}
    servers = {
        name: Server(
            tiny_sharded,
            tmp_path_factory.mktemp("cuda"),
            flags=flags,
            extra=["--device", "cuda", "--served-model-name", "tiny"],
        )
        for name, flags in combos.items()
    }
    with all_running(servers):
        yield servers


def test_served_on_cuda_all_flags_answer_as_no_flags(cuda_servers: dict[str, Server]) -> None:
    for server in cuda_servers.values():
        startup = server.client.get("/startup").json()
        assert startup["details"]["load"]["bytes"] > 0
    assert outputs(cuda_servers["all"]) == outputs(cuda_servers["none"])
    assert cuda_servers["all"].client.get("/startup").json()["details"]["load"]["loader"] == (
        "fast-load"
    )


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_native_model_on_cuda_generates_as_transformers(tiny_model: Path, dtype: str) -> None:
    from glowplug_worker.serve.engine import Engine, Sampling
    from glowplug_worker.serve.startup.imports import import_native_stack
    from glowplug_worker.serve.startup.loading import load_native

    plain, _ = loaded(tiny_model, "generate", fast=False, dtype=dtype)
    stack = import_native_stack()
    prep = prepare(stack, tiny_model, "generate", dtype, "cuda", True, None)
    native, stats = load_native(stack, prep)
    assert stats["loader"] == "native-model"
    engines = [
        Engine(torch, m, prep.tokenizer, prep.device, "generate", prep.max_model_len)
        for m in (plain, native)
    ]
    ids = engines[0].encode("The quick brown fox")
    sampling = Sampling(max_tokens=30, temperature=0.0, ignore_eos=True)
    first, second = (list(e.generate(ids, sampling)) for e in engines)
    assert first == second
