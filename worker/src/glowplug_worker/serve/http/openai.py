"""The OpenAI-compatible response bodies, built in one place: completions and chat completions
(whole and streamed as server-sent events), embeddings, the model list."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glowplug_worker.serve.http.generation_run import ChoiceResult, LogprobEntry


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def model_list(model: str, created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": created, "owned_by": "glowplug"}],
    }


def _bytes(text: str) -> list[int]:
    """A token's UTF-8 bytes; a `bytes:\\xe6...` token (part of a character) its raw bytes."""
    if text.startswith("bytes:\\x"):
        return [int(h, 16) for h in text[len("bytes:") :].split("\\x")[1:]]
    return list(text.encode("utf-8", errors="replace"))


def logprobs_body(chat: bool, entries: Sequence[LogprobEntry], offset: int = 0) -> dict[str, Any]:
    """A choice's `logprobs`: chat's `content` list, or the completions API's parallel lists
    (`text_offset` counts from `offset`, the characters sent before these tokens)."""
    if chat:
        return {
            "content": [
                {
                    "token": e.token,
                    "logprob": e.logprob,
                    "bytes": _bytes(e.token),
                    "top_logprobs": [
                        {"token": t, "logprob": v, "bytes": _bytes(t)} for t, v in e.top
                    ],
                }
                for e in entries
            ],
            "refusal": None,
        }
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) for e in entries],
        "text_offset": offsets,
    }


def completion(
    *,
    chat: bool,
    rid: str,
    model: str,
    results: Sequence[ChoiceResult],
    prompt_n: int,
    logprobs: bool,
) -> dict[str, Any]:
    choices = []
    for i, r in enumerate(results):
        lp = logprobs_body(chat, r.logprobs) if logprobs else None
        if chat:
            choice: dict[str, Any] = {
                "index": i,
                "finish_reason": r.finish,
                "logprobs": lp,
                "message": {"role": "assistant", "content": r.text},
            }
        else:
            choice = {"index": i, "text": r.text, "finish_reason": r.finish, "logprobs": lp}
        choices.append(choice)
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(prompt_n, sum(r.tokens for r in results)),
    }


def chunk_object(chat: bool) -> str:
    return "chat.completion.chunk" if chat else "text_completion"


def chunk(
    *,
    chat: bool,
    rid: str,
    model: str,
    delta: str | None,
    finish: str | None,
    first: bool = False,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One streamed piece: a chat delta (the first one carries the role) or a text piece."""
    if chat:
        d: dict[str, Any] = (
            {"role": "assistant", "content": ""}
            if first
            else ({} if delta is None else {"content": delta})
        )
        choice: dict[str, Any] = {
            "index": index,
            "delta": d,
            "finish_reason": finish,
            "logprobs": logprobs,
        }
    else:
        choice = {
            "index": index,
            "text": delta or "",
            "finish_reason": finish,
            "logprobs": logprobs,
        }
    return {
        "id": rid,
        "object": chunk_object(chat),
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


def usage_chunk(*, chat: bool, rid: str, model: str, prompt_n: int, n: int) -> dict[str, Any]:
    """The last streamed piece when the client asked for `stream_options.include_usage`."""
    return {
        "id": rid,
        "object": chunk_object(chat),
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(prompt_n, n),
    }


def event(body: dict[str, Any]) -> str:
    """One server-sent event carrying `body`."""
    return f"data: {json.dumps(body)}\n\n"


DONE_EVENT = "data: [DONE]\n\n"


def embeddings(
    vectors: Sequence[Sequence[float]], *, model: str, tokens: int, encoding_format: str
) -> dict[str, Any]:
    data = []
    for i, vec in enumerate(vectors):
        emb: Any = vec
        if encoding_format == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
