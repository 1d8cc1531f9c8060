"""`native-model`: Llama-family causal LMs served by glowplug's own torch code, so that a start
imports torch but not transformers (whose modeling imports pull torch._dynamo,
torch.distributed.tensor and sympy: most of a warm start on an H100, see docs/worker.md).

The forward pass repeats transformers' LlamaForCausalLM operation by operation (RMSNorm in
float32, rotary embedding computed in float32, SDPA with grouped KV heads, logits for every
position), and the state-dict names are the checkpoint's, so `fast_load.load_weights` fills it.
Anything this code does not reproduce makes `native.support.unsupported_reason` answer, and the
worker then loads with transformers as without the flag.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from glowplug_worker.serve.native.support import read_config, rope_parameters
from glowplug_worker.serve.native.tokenizer import NativeTokenizer


def load_config(model_dir: Path) -> SimpleNamespace:
    """config.json as attributes, with the defaults of transformers' LlamaConfig."""
    raw = read_config(model_dir)
    heads = raw["num_attention_heads"]
    defaults = {
        "num_key_value_heads": heads,
        "head_dim": raw["hidden_size"] // heads,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "max_position_embeddings": 2048,
    }
    given = {k: v for k, v in raw.items() if v is not None}  # `"head_dim": null` means default
    return SimpleNamespace(
        **{
            **defaults,
            **given,
            "dtype": raw.get("dtype") or raw.get("torch_dtype"),
            "rope": rope_parameters(raw),
        }
    )


def generation_config(model_dir: Path, config: SimpleNamespace) -> SimpleNamespace:
    path = model_dir / "generation_config.json"
    values = json.loads(path.read_text()) if path.is_file() else {}
    return SimpleNamespace(
        eos_token_id=values.get("eos_token_id", getattr(config, "eos_token_id", None))
    )


def inverse_frequencies(config: SimpleNamespace) -> torch.Tensor:
    """RoPE's inverse frequencies, computed as transformers computes them (default or llama3)."""
    rope, dim = config.rope, config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim
    inv_freq: torch.Tensor = 1.0 / (rope["rope_theta"] ** exponents)
    if rope["rope_type"] != "llama3":
        return inv_freq
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_context = rope["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_context / high) * ~(wavelen > old_context / low)
    return torch.where(medium, smoothed, scaled)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, device="meta"))
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        dtype = hidden.dtype
        hidden = hidden.to(torch.float32)
        variance = hidden.pow(2).mean(-1, keepdim=True)
        hidden = hidden * torch.rsqrt(variance + self.eps)
        return self.weight * hidden.to(dtype)


class Linear(nn.Module):
    """`nn.Linear` without bias and without its random init: on the meta device that init goes
    through torch's reference ops and imports sympy (1.6 s on a 2-core CPU)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in, device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.linear(x, self.weight)


class Embedding(nn.Module):
    def __init__(self, count: int, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(count, size, device="meta"))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return functional.embedding(ids, self.weight)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class SlotCache:
    """A KV cache allocated once: per layer, keys and values of shape
    (slots, kv_heads, length, head_dim). A sequence owns one slot for its whole life; its keys
    sit at their positions, so nothing is copied or concatenated while it decodes."""

    def __init__(
        self, config: SimpleNamespace, slots: int, length: int, dtype: Any, device: Any
    ) -> None:
        shape = (slots, config.num_key_value_heads, length, config.head_dim)
        layers = config.num_hidden_layers
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.slots, self.length = slots, length

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass
class SlotBatch:
    """One forward pass over rows in a `SlotCache`: row b's tokens go to slot `slots[b]` at
    `positions[b]`; `mask[b, 0, t, j]` is whether its query t sees key j."""

    cache: SlotCache
    slots: torch.Tensor  # (B,)
    positions: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, 1, T, span)
    span: int


@dataclass
class KVCache:
    """Keys and values per layer, grown by concatenation."""

    layers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0

    def update(self, index: int, key: torch.Tensor, value: torch.Tensor) -> tuple[Any, Any]:
        if index == len(self.layers):
            self.layers.append((key, value))
        else:
            old_key, old_value = self.layers[index]
            self.layers[index] = (
                torch.cat([old_key, key], dim=-2),
                torch.cat([old_value, value], dim=-2),
            )
        return self.layers[index]


class Attention(nn.Module):
    def __init__(self, config: SimpleNamespace, index: int) -> None:
        super().__init__()
        self.index = index
        self.head_dim = config.head_dim
        self.groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = Linear(config.hidden_size, config.num_attention_heads * self.head_dim)
        self.k_proj = Linear(config.hidden_size, config.num_key_value_heads * self.head_dim)
        self.v_proj = Linear(config.hidden_size, config.num_key_value_heads * self.head_dim)
        self.o_proj = Linear(config.num_attention_heads * self.head_dim, config.hidden_size)

    def forward(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        shape = (*hidden.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden).view(shape).transpose(1, 2)
        key = self.k_proj(hidden).view(shape).transpose(1, 2)
        value = self.v_proj(hidden).view(shape).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        query = (query * cos) + (rotate_half(query) * sin)
        key = (key * cos) + (rotate_half(key) * sin)
        key, value = cache.update(self.index, key, value)
        length = query.shape[2]
        out = functional.scaled_dot_product_attention(
            query,
            key,
            value,
            scale=self.scaling,
            is_causal=length > 1,
            enable_gqa=self.groups > 1,
        )
        out = out.transpose(1, 2).contiguous().reshape(*hidden.shape[:-1], -1)
        return self.o_proj(out)  # type: ignore[no-any-return]

    def forward_slots(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: SlotBatch
    ) -> torch.Tensor:
        """Attention for rows that live in slots of a preallocated cache: the new keys and values
        are written at each row's positions, and each query sees its own slot up to itself."""
        shape = (*hidden.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden).view(shape).transpose(1, 2)
        key = self.k_proj(hidden).view(shape).transpose(1, 2)
        value = self.v_proj(hidden).view(shape).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        query = (query * cos) + (rotate_half(query) * sin)
        key = (key * cos) + (rotate_half(key) * sin)
        keys, values = batch.cache.keys[self.index], batch.cache.values[self.index]
        rows = batch.slots[:, None]
        keys[rows, :, batch.positions] = key.transpose(1, 2)
        values[rows, :, batch.positions] = value.transpose(1, 2)
        out = functional.scaled_dot_product_attention(
            query,
            keys[batch.slots, :, : batch.span],
            values[batch.slots, :, : batch.span],
            attn_mask=batch.mask,
            scale=self.scaling,
            enable_gqa=self.groups > 1,
        )
        out = out.transpose(1, 2).contiguous().reshape(*hidden.shape[:-1], -1)
        return self.o_proj(out)  # type: ignore[no-any-return]


class Mlp(nn.Module):
    """The gated MLP's projections (DecoderLayer.forward applies them)."""

    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)


class DecoderLayer(nn.Module):
    def __init__(self, config: SimpleNamespace, index: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, index)
        self.mlp = Mlp(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin, cache)
        mlp, x = self.mlp, self.post_attention_layernorm(hidden)
        out: torch.Tensor = mlp.down_proj(functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        return hidden + out

    def forward_slots(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: SlotBatch
    ) -> torch.Tensor:
        hidden = hidden + self.self_attn.forward_slots(
            self.input_layernorm(hidden), cos, sin, batch
        )
        mlp, x = self.mlp, self.post_attention_layernorm(hidden)
        out: torch.Tensor = mlp.down_proj(functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        return hidden + out


@dataclass
class Output:
    logits: torch.Tensor
    past_key_values: KVCache


class LlamaModel(nn.Module):
    """The decoder stack's modules (LlamaForCausalLM.forward runs them)."""

    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Parameters are created on the meta device; `fast_load.load_weights` assigns them."""

    base_model_prefix = "model"
    generation_config: SimpleNamespace  # set by `build`, read by the engine
    inv_freq: torch.Tensor  # a buffer: RoPE's inverse frequencies

    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        self.register_buffer("inv_freq", inverse_frequencies(config), persistent=False)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        use_cache: bool = True,
        past_key_values: KVCache | None = None,
    ) -> Output:
        cache = past_key_values if past_key_values is not None else KVCache()
        hidden = self.model.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=hidden.device) + cache.length
        freqs = positions[None, :, None].float() * self.inv_freq.to(hidden.device, torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos().to(hidden.dtype), angles.sin().to(hidden.dtype)
        for layer in self.model.layers:
            hidden = layer(hidden, cos, sin, cache)
        return Output(logits=self.lm_head(self.model.norm(hidden)), past_key_values=cache)

    def forward_slots(
        self, input_ids: torch.Tensor, slots: torch.Tensor, starts: torch.Tensor, cache: SlotCache
    ) -> torch.Tensor:
        """Logits of the last position of each row: `input_ids` (B, T) continue the sequences in
        `slots` (B,), whose first `starts` (B,) positions are already in `cache`. A prefill is
        one row from position 0; a decode step is B rows of one token each."""
        hidden = self.model.embed_tokens(input_ids)
        device = hidden.device
        positions = starts[:, None] + torch.arange(input_ids.shape[1], device=device)
        freqs = positions[:, :, None].float() * self.inv_freq.to(device, torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos().to(hidden.dtype), angles.sin().to(hidden.dtype)
        span = int(positions.max().item()) + 1
        mask = torch.arange(span, device=device)[None, None, :] <= positions[:, :, None]
        batch = SlotBatch(cache, slots, positions, mask[:, None], span)
        for layer in self.model.layers:
            hidden = layer.forward_slots(hidden, cos, sin, batch)  # type: ignore[operator]
        return self.lm_head(self.model.norm(hidden[:, -1]))  # type: ignore[no-any-return]


class NativeConfig:
    """`AutoConfig` for `startup.loading.prepare`."""

    @staticmethod
    def from_pretrained(model_dir: Path, **_: Any) -> SimpleNamespace:
        return load_config(Path(model_dir))


class NativeTokenizerLoader:
    """`AutoTokenizer` for `startup.loading.prepare`."""

    @staticmethod
    def from_pretrained(model_dir: Path, **_: Any) -> NativeTokenizer:
        return NativeTokenizer(Path(model_dir))


def build(model_dir: Path, config: SimpleNamespace) -> LlamaForCausalLM:
    model = LlamaForCausalLM(config)
    model.generation_config = generation_config(model_dir, config)
    return model
