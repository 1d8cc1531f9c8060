"""One generation request in a worker thread: tokens from the engine, text deltas through a
`TextStream`, events handed to the event loop through an asyncio queue; request metrics."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from glowplug_worker.serve.engine import Cancelled, Engine, RequestTimeout, Sampling
from glowplug_worker.serve.http.textstream import TextStream

if TYPE_CHECKING:
    from glowplug_worker.serve.http.app import Service


class GenerationRun:
    """One generation in a worker thread, its events handed to the event loop."""

    def __init__(
        self,
        svc: Service,
        engine: Engine,
        prompt_ids: list[int],
        sampling: Sampling,
        began: float,
        id_prefix: str = "cmpl",
    ) -> None:
        self.svc, self.engine, self.prompt_ids, self.sampling = svc, engine, prompt_ids, sampling
        self.began = began
        self.id = f"{id_prefix}-{uuid.uuid4().hex[:24]}"
        self.cancel = threading.Event()
        self.tokens = 0
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = self.began + self.svc.request_timeout

        def emit(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))

        def work() -> None:
            m = self.svc.metrics
            stream = TextStream(self.engine.decode, self.sampling.stop)
            first = None
            last = None
            try:
                for token in self.engine.generate(
                    self.prompt_ids, self.sampling, deadline, self.cancel
                ):
                    last = token
                    if first is None:
                        first = time.monotonic()
                        m.ttft.observe(first - self.began)
                    self.tokens += 1
                    emit("delta", stream.push(token))
                    if stream.stopped:
                        break
            except (RequestTimeout, Cancelled) as exc:
                emit("error", exc)
                return
            except Exception as exc:  # surfaced to the client as a 500
                emit("error", exc)
                return
            eos = last in self.engine.eos_ids and not self.sampling.ignore_eos
            finish = "stop" if stream.stopped or eos else "length"
            m.prompt_tokens.inc(len(self.prompt_ids))
            m.generated_tokens.inc(self.tokens)
            if first is not None and self.tokens > 1:
                spent = time.monotonic() - first
                if spent > 0:
                    m.tokens_per_second.observe((self.tokens - 1) / spent)
            emit("delta", stream.finish())
            emit("done", finish)
            emit("text", stream.text)

        asyncio.get_running_loop().run_in_executor(self.svc.pool, work)

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        while True:
            kind, value = await self._queue.get()
            if kind == "error":
                raise value
            if kind == "text":
                return
            yield kind, value

    async def collect(self) -> tuple[str, str, int]:
        parts, finish = [], "length"
        async for kind, value in self.events():
            if kind == "delta":
                parts.append(value)
            elif kind == "done":
                finish = value
        return "".join(parts), finish, self.tokens
