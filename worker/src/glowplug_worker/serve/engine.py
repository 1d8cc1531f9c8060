"""Running the loaded model: generation through the batcher (every running sequence shares each
forward pass, see batching/) and sentence embeddings (called from the `model` threads, in
chunks, so a batch past its deadline stops between chunks)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from glowplug_worker.serve.batching.batcher import Batcher
from glowplug_worker.serve.batching.job import (
    Cancelled,
    Job,
    RequestTimeout,
    Sampling,
    TokenLogprobs,
)
from glowplug_worker.serve.startup.loading import Pooling

log = logging.getLogger("glowplug.serve")
EMBED_CHUNK = 16  # texts per forward pass of an embeddings request

__all__ = ["Cancelled", "Engine", "RequestTimeout", "Sampling"]


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
        slots: int = 4,
    ) -> None:
        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.task = task
        self.max_model_len = max_model_len
        self.pooling = pooling or Pooling()
        self.eos_ids = self._eos_ids()
        self.slots = slots
        self._batcher: Batcher | None = None
        self._token_texts: dict[int, str] = {}
        self._lock = threading.Lock()

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

    def token_text(self, token: int) -> str:
        """One token's text as logprobs show it (special tokens included); a token that is part
        of a multi-byte character shows its bytes, as OpenAI does: `bytes:\\xe6\\x9d`."""
        text = self._token_texts.get(token)
        if text is None:
            text = str(self.tokenizer.decode([token], skip_special_tokens=False))
            if "\ufffd" in text and (raw := self._token_bytes(token)) is not None:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            if len(self._token_texts) < 1 << 20:
                self._token_texts[token] = text
        return text

    def _token_bytes(self, token: int) -> bytes | None:
        """The bytes a token stands for: byte-level BPE pieces (GPT-2's byte alphabet) or
        SentencePiece byte-fallback pieces (`<0xE6>`); None for any other kind."""
        tok = self.tokenizer
        backend = getattr(tok, "backend", None)
        if backend is not None and hasattr(backend, "id_to_token"):
            piece = backend.id_to_token(token)
        else:
            piece = tok.convert_ids_to_tokens(token)
        if not isinstance(piece, str):
            return None
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        table = _byte_level_decoder()
        if piece and all(ch in table for ch in piece):
            return bytes(table[ch] for ch in piece)
        return None

    # -- generation -------------------------------------------------------------------------
    @property
    def batcher(self) -> Batcher:
        """The batcher thread, started on first use: the native Llama decodes with continuous
        batching over a preallocated slot cache, any other model in cohorts."""
        with self._lock:
            if self._batcher is None:
                self._batcher = Batcher(
                    self.torch, self._backend(), self.eos_ids, self.token_text, self.device
                ).start()
            return self._batcher

    def _backend(self) -> Any:
        from glowplug_worker.serve.batching.backends import NativeSlots, TransformersCohorts

        if hasattr(self.model, "forward_slots"):
            native = NativeSlots(
                self.torch, self.model, self.slots, self.max_model_len, self.device
            )
            if native.length < self.max_model_len:
                log.warning(
                    "the KV cache for %d slots holds %d tokens each: the context limit is "
                    "lowered from %d to %d (lower --max-concurrency or set --max-model-len)",
                    self.slots,
                    native.length,
                    self.max_model_len,
                    native.length,
                )
                self.max_model_len = native.length
            return native
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if not isinstance(pad, int):
            pad = min(self.eos_ids) if self.eos_ids else 0
        return TransformersCohorts(self.torch, self.model, self.slots, self.device, pad)

    def submit(self, job: Job) -> None:
        self.batcher.submit(job)

    def generate(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[int]:
        """Yield generated token ids, ending after an EOS token (yielded) or `max_tokens`: one
        job through the batcher, for callers that want a plain iterator."""
        sink = _QueueSink()
        job = Job(prompt_ids, sampling, sink, deadline, cancel or threading.Event())
        self.submit(job)
        try:
            while True:
                kind, value = sink.queue.get()
                if kind == "token":
                    yield value
                elif isinstance(value, BaseException):
                    raise value
                else:
                    return
        finally:
            job.cancel.set()

    # -- embeddings -------------------------------------------------------------------------
    def embed(
        self, texts: list[str], deadline: float | None = None
    ) -> tuple[list[list[float]], int]:
        """Sentence embeddings as sentence-transformers computes them; returns (vectors, tokens).
        Runs `EMBED_CHUNK` texts at a time and raises `RequestTimeout` between chunks once
        `deadline` has passed, so a long batch does not hold its slot past the deadline."""
        vectors: list[list[float]] = []
        tokens = 0
        for at in range(0, len(texts), EMBED_CHUNK):
            if deadline is not None and time.monotonic() > deadline:
                raise RequestTimeout()
            part, n = self._embed(texts[at : at + EMBED_CHUNK])
            vectors.extend(part)
            tokens += n
        return vectors, tokens

    def _embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
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
        """Real forward passes: a prefill and a decode step, or one embedding."""
        if self.task == "embed":
            self.embed(["warmup"])
        else:
            ids = self.encode("warmup") or [0]
            for _ in self.generate(ids, Sampling(max_tokens=2, temperature=0.0, ignore_eos=True)):
                pass
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable stand-ins for the 256 byte values, inverted."""
    global _BYTE_DECODER
    if _BYTE_DECODER is None:
        keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
        chars = list(keep)
        extra = 0
        for b in range(256):
            if b not in keep:
                keep.append(b)
                chars.append(256 + extra)
                extra += 1
        _BYTE_DECODER = {chr(c): b for b, c in zip(keep, chars, strict=True)}
    return _BYTE_DECODER


_BYTE_DECODER: dict[str, int] | None = None


class _QueueSink:
    """A job's results in a queue, for `Engine.generate`."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

    def token(self, token: int, logprobs: TokenLogprobs | None) -> bool:
        self.queue.put(("token", token))
        return True

    def end(self, finish: str | BaseException) -> None:
        self.queue.put(("end", finish))
