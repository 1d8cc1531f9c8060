"""The batcher: one thread that owns the model's forward passes. Each turn it drops the jobs whose
client went away or whose deadline passed (freeing their slots), prefills the jobs that arrived
while slots are free, and runs one decode step for every running job together; each job then
chooses its own next token (its own temperature, seed, logprobs, JSON constraint)."""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from glowplug_worker.serve.batching.backends import Backend
from glowplug_worker.serve.batching.choose import NoValidToken, choose
from glowplug_worker.serve.batching.job import Cancelled, Job, RequestTimeout
from glowplug_worker.serve.batching.json_prefix import JsonPrefix

log = logging.getLogger("glowplug.serve")


class Batcher:
    def __init__(
        self,
        torch: Any,
        backend: Backend,
        eos_ids: set[int],
        token_text: Callable[[int], str],
        device: Any,
    ) -> None:
        self.torch, self.backend, self.eos_ids = torch, backend, eos_ids
        self.token_text, self.device = token_text, device
        self._inbox: deque[Job] = deque()
        self._active: list[Job] = []
        self._cv = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self.steps = 0  # decode forward passes run
        self.rows = 0  # sequences those passes carried, summed
        self.on_decode: Callable[[int], None] | None = None  # told each decode pass's size

    def start(self) -> Batcher:
        self._thread.start()
        # Ended before the interpreter finalizes: a thread still inside torch's inference-mode
        # guard then makes the C++ runtime abort the process ("terminate called without an
        # active exception") after a clean exit.
        atexit.register(_close_if_alive, weakref.ref(self))
        return self

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Stop, and wait for the thread to leave its loop."""
        self.stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        if job.sampling.seed is not None and job.sampling.temperature > 0:
            job.generator = self.torch.Generator(device=self.device).manual_seed(job.sampling.seed)
        if job.sampling.json_object:
            job.json = JsonPrefix()
        with self._cv:
            self._inbox.append(job)
            self._cv.notify()

    @property
    def running(self) -> int:
        return len(self._active)

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        with self.torch.inference_mode():
            while (new := self._take()) is not None:
                try:
                    self._turn(new)
                except Exception:  # a bug here must not kill the thread all requests wait on
                    log.exception("batcher turn failed")

    def _take(self) -> list[Job] | None:
        """The jobs to start this turn (as many as free slots); waits while there is no work."""
        with self._cv:
            while not self._inbox and not self._active and not self._stopped:
                self._cv.wait()
            if self._stopped:
                return None
            free = self.backend.capacity - len(self._active)
            return [self._inbox.popleft() for _ in range(min(free, len(self._inbox)))]

    def _turn(self, new: list[Job]) -> None:
        now = time.monotonic()
        for job in [*self._active, *new]:
            if job.cancel.is_set():
                self._end(job, Cancelled())
            elif job.deadline is not None and now > job.deadline:
                self._end(job, RequestTimeout())
        new = [j for j in new if not j.done]
        if new:
            self._active.extend(new)
            self._forward(new, self.backend.prefill)
        running = [j for j in self._active if j.pending is not None]
        if running:
            self.steps += 1
            self.rows += len(running)
            if self.on_decode is not None:
                self.on_decode(len(running))
            self._forward(running, self.backend.decode)

    def _forward(self, jobs: list[Job], step: Callable[[list[Job]], list[Any]]) -> None:
        try:
            rows = step(jobs)
        except Exception as exc:
            log.exception("forward pass failed for %d sequences", len(jobs))
            for job in jobs:
                self._end(job, exc)
            return
        for job, logits in zip(jobs, rows, strict=True):
            self._advance(job, logits)

    def _advance(self, job: Job, logits: Any) -> None:
        s = job.sampling
        try:
            token, lp = choose(self.torch, logits, job, self.token_text, self.eos_ids)
        except NoValidToken:
            self._end(job, "length")
            return
        except Exception as exc:
            self._end(job, exc)
            return
        job.generated += 1
        job.pending = None
        eos = token in self.eos_ids and not s.ignore_eos
        if job.json is not None and token not in self.eos_ids:
            job.json = job.json.feed(self.token_text(token))
        try:
            more = job.sink.token(token, lp)
        except Exception as exc:
            self._end(job, exc)
            return
        if not more or eos or (job.json is not None and job.json.complete):
            self._end(job, "stop")
        elif job.generated >= s.max_tokens:
            self._end(job, "length")
        else:
            job.pending = token

    def _end(self, job: Job, finish: str | BaseException) -> None:
        if job.done:
            return
        job.done = True
        self.backend.release(job)
        job.pending = None
        if job in self._active:
            self._active.remove(job)
        try:
            job.sink.end(finish)
        except Exception:
            log.exception("a job's sink failed at its end")


def _close_if_alive(ref: weakref.ref[Batcher]) -> None:
    """At exit: close the batcher if it still exists (the hook keeps no batcher alive)."""
    batcher = ref()
    if batcher is not None:
        batcher.close()
