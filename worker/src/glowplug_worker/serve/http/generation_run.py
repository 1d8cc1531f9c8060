"""One generation request: its `n` choices submitted to the batcher as jobs, their tokens turned
into text deltas (a `TextStream` each) on the batcher thread and handed to the event loop through
an asyncio queue; request metrics. `cancel()` stops every choice (the batcher frees their slots
on its next turn)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from glowplug_worker.serve.batching.job import Job, Sampling, TokenLogprobs
from glowplug_worker.serve.engine import Engine
from glowplug_worker.serve.http.textstream import TextStream

if TYPE_CHECKING:
    from glowplug_worker.serve.http.app import Service


@dataclass(frozen=True)
class LogprobEntry:
    """One generated token as logprobs show it: its text, log-probability, and the most likely
    alternatives' (text, log-probability)."""

    token: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass
class Delta:
    """Text (possibly empty) and the tokens' logprobs that produced it, for choice `index`."""

    index: int
    text: str
    logprobs: list[LogprobEntry] = field(default_factory=list)


@dataclass
class ChoiceResult:
    text: str = ""
    finish: str = "length"
    tokens: int = 0
    logprobs: list[LogprobEntry] = field(default_factory=list)


class _ChoiceSink:
    """Receives one choice's tokens on the batcher thread."""

    def __init__(self, run: GenerationRun, index: int, sampling: Sampling) -> None:
        self.run, self.index = run, index
        self.stream = TextStream(run.engine.decode, sampling.stop)
        self.tokens = 0

    def token(self, token: int, logprobs: TokenLogprobs | None) -> bool:
        run = self.run
        if run.first_token_at is None:
            run.first_token_at = time.monotonic()
            run.svc.metrics.ttft.observe(run.first_token_at - run.began)
        self.tokens += 1
        run.tokens += 1
        entries = [] if logprobs is None else [run.entry(token, logprobs)]
        run.emit(("delta", Delta(self.index, self.stream.push(token), entries)))
        return not self.stream.stopped

    def end(self, finish: str | BaseException) -> None:
        run = self.run
        if isinstance(finish, BaseException):
            run.emit(("error", finish))
            return
        run.svc.metrics.generated_tokens.inc(self.tokens)
        run.emit(("delta", Delta(self.index, self.stream.finish())))
        run.emit(("done", (self.index, finish, self.tokens)))


class GenerationRun:
    def __init__(
        self,
        svc: Service,
        engine: Engine,
        prompt_ids: list[int],
        samplings: list[Sampling],
        began: float,
        id_prefix: str = "cmpl",
    ) -> None:
        self.svc, self.engine, self.prompt_ids = svc, engine, prompt_ids
        self.samplings = samplings
        self.began = began
        self.id = f"{id_prefix}-{uuid.uuid4().hex[:24]}"
        self.tokens = 0
        self.first_token_at: float | None = None
        self.jobs: list[Job] = []
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def n(self) -> int:
        return len(self.samplings)

    def entry(self, token: int, lp: TokenLogprobs) -> LogprobEntry:
        text = self.engine.token_text
        return LogprobEntry(text(token), lp.logprob, [(text(t), v) for t, v in lp.top])

    def emit(self, item: tuple[str, Any]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        deadline = self.began + self.svc.request_timeout
        self.svc.metrics.prompt_tokens.inc(len(self.prompt_ids))
        for i, sampling in enumerate(self.samplings):
            job = Job(self.prompt_ids, sampling, _ChoiceSink(self, i, sampling), deadline)
            self.jobs.append(job)
            self.engine.submit(job)

    def cancel(self) -> None:
        """Stop every choice still running (a client that left, an error, the end)."""
        for job in self.jobs:
            job.cancel.set()

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """("delta", Delta) and ("done", (index, finish, tokens)) until every choice is done;
        the first choice that fails raises its exception (and the others are cancelled)."""
        left = self.n
        try:
            while left:
                kind, value = await self._queue.get()
                if kind == "error":
                    raise value
                if kind == "done":
                    left -= 1
                yield kind, value
        finally:
            self.cancel()
        if self.first_token_at is not None and self.tokens > 1:
            spent = time.monotonic() - self.first_token_at
            if spent > 0:
                self.svc.metrics.tokens_per_second.observe((self.tokens - self.n) / spent)

    async def collect(self) -> list[ChoiceResult]:
        results = [ChoiceResult() for _ in range(self.n)]
        async for kind, value in self.events():
            if kind == "delta":
                results[value.index].text += value.text
                results[value.index].logprobs.extend(value.logprobs)
            else:
                index, finish, tokens = value
                results[index].finish, results[index].tokens = finish, tokens
        return results
