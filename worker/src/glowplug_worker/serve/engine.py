"""Running the loaded model: token-by-token generation with a KV cache (greedy or sampled) and
sentence embeddings. Called from worker threads; every call runs under `torch.inference_mode`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from glowplug_worker.serve.startup.loading import Pooling


class RequestTimeout(Exception):
    """The request ran past its deadline."""


class Cancelled(Exception):
    """The client went away."""


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False


class Engine:
    def __init__(
        self,
        torch: Any,
        model: Any,
        tokenizer: Any,
        device: Any,
        task: str,
        max_model_len: int,
        pooling: Pooling | None = None,
    ) -> None:
        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.task = task
        self.max_model_len = max_model_len
        self.pooling = pooling or Pooling()
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for value in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(v for v in value if isinstance(v, int))
        return ids

    # -- text -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template; use /v1/completions")
        return str(
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    # -- generation -------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[int]:
        """Yield generated token ids, ending after an EOS token (yielded) or `max_tokens`."""
        torch = self.torch
        generator = None
        if sampling.temperature > 0 and sampling.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        with torch.inference_mode():
            ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, use_cache=True)
            for _ in range(sampling.max_tokens):
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                if deadline is not None and time.monotonic() > deadline:
                    raise RequestTimeout()
                token = self._select(out.logits[0, -1, :], sampling, generator)
                yield token
                if token in self.eos_ids and not sampling.ignore_eos:
                    return
                step = torch.tensor([[token]], dtype=torch.long, device=self.device)
                out = self.model(input_ids=step, use_cache=True, **_cache_kwargs(out))

    def _select(self, logits: Any, sampling: Sampling, generator: Any) -> int:
        torch = self.torch
        logits = logits.float()
        if sampling.temperature <= 0:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < sampling.top_p
            sorted_probs = sorted_probs * keep
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=generator).item())

    # -- embeddings -------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Sentence embeddings as sentence-transformers computes them; returns (vectors, tokens)."""
        torch = self.torch
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_model_len, return_tensors="pt"
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            states = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
            if self.pooling.mode == "cls":
                vectors = states[:, 0]
            elif self.pooling.mode == "max":
                vectors = states.masked_fill(mask == 0, -1e9).max(dim=1).values
            else:
                vectors = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if self.pooling.normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.cpu().tolist(), int(enc["attention_mask"].sum().item())

    def warmup(self) -> None:
        """One real forward pass: one generated token, or one embedding."""
        if self.task == "embed":
            self.embed(["warmup"])
        else:
            ids = self.encode("warmup") or [0]
            for _ in self.generate(ids, Sampling(max_tokens=1, temperature=0.0)):
                pass
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


def _cache_kwargs(out: Any) -> dict[str, Any]:
    """The KV cache of a forward pass, as the next call takes it (transformers >= 5.x names it
    `cache`; older model classes `past_key_values`)."""
    cache = getattr(out, "cache", None)
    if cache is not None:
        return {"cache": cache}
    return {"past_key_values": out.past_key_values}
