"""Choosing the next token of one row from its logits: greedy or sampled (temperature, top-p,
seeded), restricted to tokens that keep a JSON object valid when asked, with log-probabilities
when asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from glowplug_worker.serve.batching.job import Job, TokenLogprobs

# A token outside the JSON grammar is refused and the next candidate tried; past this many
# refusals on one step the JSON cannot be continued by this model (then it ends, "length").
MAX_JSON_CANDIDATES = 4096


class NoValidToken(Exception):
    """No token keeps the output valid JSON."""


def choose(
    torch: Any,
    logits: Any,
    job: Job,
    token_text: Callable[[int], str],
    eos_ids: set[int],
) -> tuple[int, TokenLogprobs | None]:
    """The next token for `job` from its row of `logits` (1-D)."""
    s = job.sampling
    logits = logits.float()
    if job.json is not None:
        token = _choose_json(torch, logits, job, token_text, eos_ids)
    elif s.temperature <= 0:
        token = int(torch.argmax(logits).item())
    else:
        token = int(torch.multinomial(_probs(torch, logits, job), 1, generator=job.generator))
    lp = None
    if s.logprobs is not None:
        logp = torch.log_softmax(logits, dim=-1)
        top: list[tuple[int, float]] = []
        if s.logprobs > 0:
            values, ids = torch.topk(logp, min(s.logprobs, logp.shape[-1]))
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        lp = TokenLogprobs(float(logp[token].item()), top)
    return token, lp


def _probs(torch: Any, logits: Any, job: Job) -> Any:
    s = job.sampling
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < s.top_p
        keep[0] = True  # the most likely token, always: a top_p under float32's least is 0
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return probs


def _choose_json(
    torch: Any, logits: Any, job: Job, token_text: Callable[[int], str], eos_ids: set[int]
) -> int:
    """The most likely (greedy) or a sampled token among those that keep the text a prefix of a
    JSON object: candidates are tried best first (greedy) or drawn, and a refused one is masked
    and drawn again, which samples from the distribution restricted to valid tokens."""
    assert job.json is not None
    greedy = job.sampling.temperature <= 0
    probs = None if greedy else _probs(torch, logits, job).clone()
    order = torch.argsort(logits, descending=True).tolist() if greedy else None
    for attempt in range(MAX_JSON_CANDIDATES):
        if order is not None:
            if attempt >= len(order):
                break
            token = order[attempt]
        else:
            assert probs is not None
            if float(probs.sum()) <= 0:
                break
            token = int(torch.multinomial(probs, 1, generator=job.generator))
        if token in eos_ids:
            ok = job.json.complete
        else:
            text = token_text(token)
            ok = bool(text) and job.json.feed(text) is not None
        if ok:
            return int(token)
        if probs is not None:
            probs[token] = 0
    raise NoValidToken()
