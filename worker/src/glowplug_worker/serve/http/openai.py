"""The OpenAI-compatible response bodies, built in one place: completions and chat completions
(whole and streamed as server-sent events), embeddings, the model list."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Sequence
from typing import Any


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


def completion(
    *, chat: bool, rid: str, model: str, text: str, finish: str, prompt_n: int, n: int
) -> dict[str, Any]:
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": finish,
            "logprobs": None,
            "message": {"role": "assistant", "content": text},
        }
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(prompt_n, n),
    }


def chunk_object(chat: bool) -> str:
    return "chat.completion.chunk" if chat else "text_completion"


def chunk(
    *, chat: bool, rid: str, model: str, delta: str | None, finish: str | None, first: bool = False
) -> dict[str, Any]:
    """One streamed piece: a chat delta (the first one carries the role) or a text piece."""
    if chat:
        d: dict[str, Any] = (
            {"role": "assistant", "content": ""}
            if first
            else ({} if delta is None else {"content": delta})
        )
        choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
    else:
        choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
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
