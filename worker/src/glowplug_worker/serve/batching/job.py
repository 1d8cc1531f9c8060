"""One generation as the batcher sees it: what to generate, where its tokens go, and its state
between forward passes."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from glowplug_worker.serve.batching.json_prefix import JsonPrefix


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's and the k most likely
    json_object: bool = False  # constrain the output to one JSON object


@dataclass(frozen=True)
class TokenLogprobs:
    """The chosen token's log-probability and the `top` most likely tokens' (id, logprob)."""

    logprob: float
    top: list[tuple[int, float]]


class Sink(Protocol):
    """Where a job's results go; called on the batcher thread."""

    def token(self, token: int, logprobs: TokenLogprobs | None) -> bool:
        """A new token; return False to end the job (a stop string was written)."""

    def end(self, finish: str | BaseException) -> None:
        """The job ended: "stop", "length", or the exception that ended it."""


class RequestTimeout(Exception):
    """The request ran past its deadline."""


class Cancelled(Exception):
    """The client went away."""


@dataclass(eq=False)
class Job:
    prompt_ids: list[int]
    sampling: Sampling
    sink: Sink
    deadline: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # state, owned by the batcher thread
    slot: int = -1
    length: int = 0  # positions in the cache
    generated: int = 0
    pending: int | None = None  # the last token, to feed to the next forward pass
    generator: Any = None  # torch.Generator for seeded sampling
    json: JsonPrefix | None = None
    backend_state: Any = None
    done: bool = False
