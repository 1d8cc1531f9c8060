"""Write a tiny, random, Llama-shaped causal LM that `glowplug-worker serve` can load.

    python -m glowplug_worker.devtools.tiny_model OUT_DIR [--max-shard-size 200KB] [--dtype ...]

The directory gets what a real checkpoint has: `config.json`, `generation_config.json`,
safetensors weights (sharded with an index when `--max-shard-size` asks for it), and a byte-level
BPE tokenizer trained on a short built-in text with special tokens and a chat template. Everything
is deterministic (fixed seed, fixed text), so two runs write the same model. Neither torch nor
transformers is imported: the weights come from numpy and are written in the safetensors format
directly, so it takes well under a second.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

TEXT = """\
A glow plug pre-heats a diesel engine so that it starts in the cold.
The operator watches readiness and turns a broken flag off for one model server only.
Imports dominate a warm start; the weights load from the page cache in a second or two.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Hello, world! How are you today? I am fine, thank you, and you?
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2026. Symbols: ( ) [ ] { } < > = + - * / % & | ^ ~ ! ?
Unicode: café, naïve, Größe, 東京, 😀 — the tokenizer falls back to bytes for anything it lacks.
"""

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
DTYPES = ("float32", "bfloat16", "float16")
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2
INIT_STD = 0.5


def write_tokenizer(out: Path, vocab_size: int = 384) -> dict[str, int]:
    """Train the byte-level BPE tokenizer on `TEXT` and write it (with the chat template) into
    `out`; returns the special tokens' ids and the vocabulary size (`_vocab`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT.splitlines(), trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    ids: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        if (found := tok.token_to_id(token)) is None:
            raise ValueError(f"the tokenizer has no id for the special token {token!r}")
        ids[token] = found
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "add_bos_token": False,
        "model_max_length": 1024,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {**ids, "_vocab": tok.get_vocab_size()}


def make_tiny_model(
    out_dir: str | os.PathLike[str],
    *,
    max_shard_size: str | None = None,
    dtype: str = "float32",
    seed: int = 0,
) -> Path:
    """Write the tiny model into `out_dir` (created if needed) and return its path."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(out, vocab_size=384)

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": ids["_vocab"],
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HIDDEN // HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["<pad>"],
        "tie_word_embeddings": False,
        # A larger spread than a trained model's keeps greedy decoding from collapsing onto one
        # token, so tests see varied text.
        "initializer_range": INIT_STD,
        "use_cache": True,
        "dtype": dtype,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["<pad>"],
        "do_sample": False,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    tensors = _random_weights(ids["_vocab"], seed)
    _write_safetensors(out, tensors, dtype, _parse_size(max_shard_size) if max_shard_size else None)
    return out


def _random_weights(vocab: int, seed: int) -> dict[str, Any]:
    """LlamaForCausalLM's tensors in its state-dict order: normal(0, INIT_STD) matrices, norms of
    ones (as transformers initialises them)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    kv = KV_HEADS * (HIDDEN // HEADS)

    def normal(*shape: int) -> Any:
        return rng.normal(0.0, INIT_STD, size=shape).astype(np.float32)

    tensors: dict[str, Any] = {"model.embed_tokens.weight": normal(vocab, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": normal(HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": normal(kv, HIDDEN),
            p + "self_attn.v_proj.weight": normal(kv, HIDDEN),
            p + "self_attn.o_proj.weight": normal(HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": normal(INTERMEDIATE, HIDDEN),
            p + "mlp.up_proj.weight": normal(INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": normal(HIDDEN, INTERMEDIATE),
            p + "input_layernorm.weight": np.ones(HIDDEN, dtype=np.float32),
            p + "post_attention_layernorm.weight": np.ones(HIDDEN, dtype=np.float32),
        }
    tensors["model.norm.weight"] = np.ones(HIDDEN, dtype=np.float32)
    tensors["lm_head.weight"] = normal(vocab, HIDDEN)
    return tensors


def _encode(array: Any, dtype: str) -> tuple[str, bytes]:
    import numpy as np

    if dtype == "float32":
        return "F32", array.astype("<f4").tobytes()
    if dtype == "float16":
        return "F16", array.astype("<f2").tobytes()
    # bfloat16: the top half of each float32, rounded to nearest even.
    bits = array.astype("<f4").view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return "BF16", rounded.astype("<u2").tobytes()


def _write_file(path: Path, tensors: dict[str, Any], dtype: str) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, array in tensors.items():
        code, blob = _encode(array, dtype)
        header[name] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            fh.write(blob)


def _write_safetensors(
    out: Path, tensors: dict[str, Any], dtype: str, shard_bytes: int | None
) -> None:
    if shard_bytes is None:
        _write_file(out / "model.safetensors", tensors, dtype)
        return
    itemsize = 4 if dtype == "float32" else 2
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name, array in tensors.items():
        nbytes = array.size * itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += nbytes
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _write_file(out / name, shard, dtype)
        weight_map.update({k: name for k in shard})
        total += sum(a.size * itemsize for a in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _parse_size(text: str) -> int:
    """`150KB` -> 150000, `1MiB` -> 1048576 (transformers' `max_shard_size` notation)."""
    units = {
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
    }
    value = text.strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit) and value[: -len(unit)].strip().isdigit():
            return int(value[: -len(unit)]) * units[unit]
    if value.isdigit():
        return int(value)
    raise ValueError(f"--max-shard-size {text!r}: use a size like 150KB, 2MB or 1GiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m glowplug_worker.devtools.tiny_model",
        description="Write a tiny random Llama-shaped causal LM with tokenizer and chat template.",
    )
    parser.add_argument("out_dir", help="directory to write (created if missing)")
    parser.add_argument(
        "--max-shard-size",
        default=None,
        help="shard the safetensors weights, e.g. 100KB (default: one file)",
    )
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    path = make_tiny_model(
        args.out_dir, max_shard_size=args.max_shard_size, dtype=args.dtype, seed=args.seed
    )
    print(f"wrote a tiny Llama-shaped model to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
