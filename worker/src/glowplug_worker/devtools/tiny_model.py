"""Write a tiny, random, Llama-shaped causal LM that `glowplug-worker serve` can load.

    python -m glowplug_worker.devtools.tiny_model OUT_DIR [--max-shard-size 200KB] [--dtype ...]

The directory gets what a real checkpoint has: `config.json`, `generation_config.json`,
safetensors weights (sharded with an index when `--max-shard-size` asks for it), and a byte-level
BPE tokenizer trained on a short built-in text with special tokens and a chat template. Everything
is deterministic (fixed seed, fixed text), so two runs write the same model; it takes a few seconds,
most of it importing torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

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
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
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

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=ids["_vocab"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=False,
        # A larger init spread than a trained model's keeps greedy decoding from collapsing onto
        # one token, so tests see varied text.
        initializer_range=0.5,
        dtype=dtype,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    model.generation_config.do_sample = False
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    return out


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
