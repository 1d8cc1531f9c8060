"""`native-model`: glowplug's own Llama code gives exactly transformers' logits, tokens and chat
prompts, never imports transformers, and leaves models it does not reproduce to transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from glowplug_worker.serve.engine import Engine, Sampling
from glowplug_worker.serve.native.support import unsupported_reason
from glowplug_worker.serve.startup.imports import import_native_stack, import_stack
from glowplug_worker.serve.startup.loading import load_native, load_plain, prepare

from tests.serve.servers import Server

pytestmark = pytest.mark.worker

TEXTS = ["Hello, world!", "The operator watches readiness", "café 東京 😀", "", "  spaces  "]


def engines(model_dir: Path, dtype: str = "auto") -> tuple[Engine, Engine]:
    """(transformers, native) for the same directory on CPU."""
    made = []
    for stack in (import_stack("generate", model_dir), import_native_stack()):
        prep = prepare(stack, model_dir, "generate", dtype, "cpu", True, None)
        model, _ = (load_native if stack.native is not None else load_plain)(stack, prep, None)
        made.append(
            Engine(torch, model, prep.tokenizer, prep.device, "generate", prep.max_model_len)
        )
    return made[0], made[1]


@pytest.mark.parametrize(
    ("which", "dtype"),
    [("tiny_model", "auto"), ("tiny_sharded", "auto"), ("tiny_model", "bfloat16")],
)
def test_logits_and_greedy_tokens_equal_transformers(
    which: str, dtype: str, request: pytest.FixtureRequest
) -> None:
    plain, native = engines(request.getfixturevalue(which), dtype)
    ids = plain.encode("The quick brown fox")
    with torch.inference_mode():
        expected = plain.model(input_ids=torch.tensor([ids]), use_cache=True).logits
        got = native.model(input_ids=torch.tensor([ids])).logits
    assert got.dtype == expected.dtype and torch.equal(got, expected)
    sampling = Sampling(max_tokens=40, temperature=0.0, ignore_eos=True)
    assert list(native.generate(ids, sampling)) == list(plain.generate(ids, sampling))


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,  # small: the tiny head's wavelengths span all 3 bands
}


@pytest.mark.parametrize(
    "config",
    [{"rope_parameters": LLAMA3_ROPE}, {"rope_parameters": None, "rope_scaling": LLAMA3_ROPE}],
    ids=["rope_parameters", "rope_scaling"],
)
def test_llama3_rope_equals_transformers(
    tiny_model: Path, tmp_path: Path, config: dict[str, Any]
) -> None:
    """Llama 3.1-3.3 checkpoints scale RoPE with `rope_type: llama3` (transformers 5 writes it
    in `rope_parameters`, 4.x in `rope_scaling`)."""
    model = edited_copy(tiny_model, tmp_path / "m", config)
    assert unsupported_reason(model, "generate") is None
    plain, native = engines(model)
    ids = plain.encode("The operator watches readiness " * 6)  # positions past 64
    with torch.inference_mode():
        expected = plain.model(input_ids=torch.tensor([ids]), use_cache=True).logits
        got = native.model(input_ids=torch.tensor([ids])).logits
    assert torch.equal(got, expected)


def test_tokenizer_and_chat_template_equal_transformers(tiny_model: Path) -> None:
    plain, native = engines(tiny_model)
    for text in TEXTS:
        ids = plain.encode(text)
        assert native.encode(text) == ids, text
        assert native.decode(ids) == plain.decode(ids), text
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Pack my box"},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "東京?"},
    ]
    assert native.chat_prompt(messages) == plain.chat_prompt(messages)
    assert native.eos_ids == plain.eos_ids


def test_a_native_start_never_imports_transformers(tiny_model: Path) -> None:
    code = f"""
import sys, torch
from pathlib import Path
from glowplug_worker.serve.engine import Engine, Sampling
from glowplug_worker.serve.startup.imports import import_native_stack
from glowplug_worker.serve.startup.loading import load_native, prepare
stack = import_native_stack()
prep = prepare(stack, Path({str(tiny_model)!r}), "generate", "auto", "cpu", True, None)
model, _ = load_native(stack, prep)
engine = Engine(torch, model, prep.tokenizer, prep.device, "generate", prep.max_model_len)
engine.warmup()
print(len(list(engine.generate(engine.encode("Hi"), Sampling(max_tokens=5, temperature=0.0)))))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "sympy")))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tokens, imported = proc.stdout.split("\n")[:2]
    assert int(tokens) >= 1 and imported == "[]"


def edited_copy(src: Path, dst: Path, config: dict[str, Any] | None = None, **tok: Any) -> Path:
    shutil.copytree(src, dst)
    if config:
        path = dst / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    if tok:
        path = dst / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **tok}))
    return dst


@pytest.mark.parametrize(
    ("config", "tok", "reason"),
    [
        (None, {}, None),
        ({"architectures": ["MistralForCausalLM"], "model_type": "mistral"}, {}, "architecture"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0}}, {}, "yarn"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, {}, "llama3"),  # no keys
        ({"attention_bias": True}, {}, "attention_bias"),
        (None, {"tokenizer_class": "LlamaTokenizer"}, "tokenizer_class LlamaTokenizer"),
        (None, {"add_bos_token": True}, "add_bos_token"),
    ],
)
def test_unsupported_models_are_named(
    tiny_model: Path, tmp_path: Path, config: Any, tok: dict[str, Any], reason: str | None
) -> None:
    model = edited_copy(tiny_model, tmp_path / "m", config, **tok)
    found = unsupported_reason(model, "generate")
    assert found is None if reason is None else reason in str(found)


def test_an_unsupported_model_is_served_by_transformers(minilm: Path, tmp_path: Path) -> None:
    server = Server(minilm, tmp_path, flags="native-model", task="embed")
    try:
        server.wait_ready()
        startup = server.client.get("/startup").json()
        assert startup["details"]["native_model"] == {
            "used": False,
            "reason": "task embed (native-model serves generate only)",
        }
        assert startup["details"]["load"]["loader"] == "transformers"
        metrics = server.client.get("/metrics").text
        assert 'glowplug_worker_optimization_active{flag="native-model"} 0.0' in metrics
        r = server.client.post("/v1/embeddings", json={"input": "hello"})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
    finally:
        server.stop()


# A Llama 3-style template: BOS from the template, a system default, loop variables, a
# namespace, raise_exception and tojson.
RICH_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='You are terse.') %}"
    "{% if messages[0]['role'] == 'system' %}{% set ns.system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% endif %}"
    "<|system|>\n{{ ns.system }}<|end|>\n"
    "{% for message in messages %}"
    "{% if message['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] | trim }}<|end|>\n"
    "{% if loop.last and add_generation_prompt %}<|assistant|>\n{% endif %}"
    "{% endfor %}{{ {'n': messages | length} | tojson }}"
)


def test_llama3_style_tokenizer_and_template_equal_transformers(
    tiny_model: Path, tmp_path: Path
) -> None:
    """BOS added by tokenizer.json's post-processor (as Llama 3 ships it), not by
    tokenizer_config.json; the chat template uses jinja2 features real templates use."""
    from tokenizers import Tokenizer, processors

    model = edited_copy(tiny_model, tmp_path / "m", chat_template=RICH_TEMPLATE)
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok.save(str(model / "tokenizer.json"))
    assert unsupported_reason(model, "generate") is None
    plain, native = engines(model)
    for text in TEXTS:
        ids = plain.encode(text)
        assert ids[:1] == [bos] and native.encode(text) == ids, text
        assert native.decode(ids) == plain.decode(ids), text
    for messages in (
        [{"role": "user", "content": "  Pack my box  "}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "東京?"}],
    ):
        assert native.chat_prompt(messages) == plain.chat_prompt(messages)
    with pytest.raises(Exception, match="unknown role tool"):
        native.chat_prompt([{"role": "tool", "content": "x"}])


def test_a_checkpoint_the_native_model_cannot_take_blames_native_model(
    tiny_model: Path, tmp_path: Path
) -> None:
    from glowplug_worker.serve.startup.state import FlagFailure

    from tests.serve.test_loading import rewrite_header

    model = edited_copy(tiny_model, tmp_path / "m")

    def rename(header: dict[str, Any]) -> None:
        header["model.nrm_.weight"] = header.pop("model.norm.weight")  # same length

    rewrite_header(model / "model.safetensors", rename)
    stack = import_native_stack()
    prep = prepare(stack, model, "generate", "auto", "cpu", True, None)
    with pytest.raises(FlagFailure, match=r"no place in LlamaForCausalLM.*nrm_") as err:
        load_native(stack, prep)
    assert err.value.flag == "native-model"
