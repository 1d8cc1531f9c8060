"""The forward passes of the batcher, one class per model path.

`NativeSlots` (the `native-model` Llama): continuous batching over a preallocated slot cache. A
new sequence is prefilled alone into a free slot, then decodes in one forward pass with every
other running sequence, whatever their lengths; a finished one frees its slot at once.

`TransformersCohorts` (any other causal LM, through transformers): batched decoding in cohorts.
The sequences admitted together are prefilled together (left-padded, with an attention mask and
position ids) and decode together in the model's own cache; a finished sequence leaves its cohort
(`batch_select_indices`); cohorts admitted at different times take turns, a forward pass each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from glowplug_worker.serve.batching.job import Job


class Backend(Protocol):
    capacity: int

    def prefill(self, jobs: list[Job]) -> list[Any]:
        """Run the prompts of new jobs; the last position's logits of each (1-D)."""

    def decode(self, jobs: list[Job]) -> list[Any]:
        """One token (`job.pending`) more for each job; the logits of each (1-D)."""

    def release(self, job: Job) -> None:
        """Forget a finished job's cache."""


CACHE_SHARE_CUDA = 0.9  # of the GPU memory free after loading
CACHE_SHARE_CPU = 0.5  # of MemAvailable
MIN_CACHE_TOKENS = 16


class CacheTooSmall(ValueError):
    """Not even MIN_CACHE_TOKENS per slot fit in memory."""


def cache_length(slots: int, bytes_per_token: int, max_len: int, free_bytes: int | None) -> int:
    """Tokens per slot of the preallocated cache: the context limit, or less when `slots` such
    rows do not fit in `free_bytes` (then the server's context limit is lowered to it)."""
    if free_bytes is None:
        return max_len
    fits = free_bytes // max(1, slots * bytes_per_token)
    if fits < MIN_CACHE_TOKENS:
        raise CacheTooSmall(
            f"a KV cache of {slots} slots does not fit in memory ({free_bytes >> 20} MiB free, "
            f"{slots * bytes_per_token} bytes per token position); lower --max-concurrency"
        )
    return int(min(max_len, fits))


def free_memory(torch: Any, device: Any) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * CACHE_SHARE_CUDA)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * CACHE_SHARE_CPU)
    except OSError:
        pass
    return None


class NativeSlots:
    def __init__(self, torch: Any, model: Any, slots: int, length: int, device: Any) -> None:
        from glowplug_worker.serve.native.llama import SlotCache

        dtype = next(model.parameters()).dtype
        self.torch, self.model, self.device = torch, model, device
        config = model.config
        per_token = (
            2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
        ) * torch.empty((), dtype=dtype).element_size()
        self.length = cache_length(slots, per_token, length, free_memory(torch, device))
        self.cache = SlotCache(config, slots, self.length, dtype, device)
        self.capacity = slots
        self._free = list(range(slots - 1, -1, -1))

    def _tensor(self, values: list[int] | list[list[int]]) -> Any:
        return self.torch.tensor(values, dtype=self.torch.long, device=self.device)

    def prefill(self, jobs: list[Job]) -> list[Any]:
        rows = []
        for job in jobs:
            job.slot = self._free.pop()
            logits = self.model.forward_slots(
                self._tensor([job.prompt_ids]),
                self._tensor([job.slot]),
                self._tensor([0]),
                self.cache,
            )
            job.length = len(job.prompt_ids)
            rows.append(logits[0])
        return rows

    def decode(self, jobs: list[Job]) -> list[Any]:
        logits = self.model.forward_slots(
            self._tensor([[j.pending or 0] for j in jobs]),
            self._tensor([j.slot for j in jobs]),
            self._tensor([j.length for j in jobs]),
            self.cache,
        )
        for job in jobs:
            job.length += 1
        return list(logits)

    def release(self, job: Job) -> None:
        if job.slot >= 0:
            self._free.append(job.slot)
            job.slot = -1


@dataclass(eq=False)
class Cohort:
    jobs: list[Job]
    cache: dict[str, Any] = field(default_factory=dict)  # the model's cache, as it takes it
    mask: Any = None  # (B, length): 1 where a row has a token


class TransformersCohorts:
    def __init__(self, torch: Any, model: Any, slots: int, device: Any, pad_id: int) -> None:
        self.torch, self.model, self.device, self.pad_id = torch, model, device, pad_id
        self.capacity = slots
        self.cohorts: list[Cohort] = []

    def prefill(self, jobs: list[Job]) -> list[Any]:
        torch = self.torch
        width = max(len(j.prompt_ids) for j in jobs)
        ids = [[self.pad_id] * (width - len(j.prompt_ids)) + j.prompt_ids for j in jobs]
        mask = [[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in jobs]
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        attention = torch.tensor(mask, dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {"attention_mask": attention}
        if len(jobs) > 1:  # one unpadded row: exactly the unbatched call
            kwargs["position_ids"] = (attention.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, use_cache=True, **kwargs)
        cohort = Cohort(list(jobs), cache_kwargs(out), attention)
        self.cohorts.append(cohort)
        for job in jobs:
            job.backend_state = cohort
            job.length = len(job.prompt_ids)
        return list(out.logits[:, -1, :])

    def decode(self, jobs: list[Job]) -> list[Any]:
        torch = self.torch
        wanted = set(jobs)
        rows: dict[Job, Any] = {}
        for cohort in self.cohorts:
            if not wanted.intersection(cohort.jobs):
                continue
            ids = [[j.pending or self.pad_id] for j in cohort.jobs]
            ones = torch.ones((len(cohort.jobs), 1), dtype=torch.long, device=self.device)
            cohort.mask = torch.cat([cohort.mask, ones], dim=-1)
            positions = [[j.length] for j in cohort.jobs]
            out = self.model(
                input_ids=torch.tensor(ids, dtype=torch.long, device=self.device),
                attention_mask=cohort.mask,
                position_ids=torch.tensor(positions, dtype=torch.long, device=self.device),
                use_cache=True,
                **cohort.cache,
            )
            cohort.cache = cache_kwargs(out)
            for i, job in enumerate(cohort.jobs):
                job.length += 1
                rows[job] = out.logits[i, -1, :]
        return [rows[j] for j in jobs]

    def release(self, job: Job) -> None:
        cohort = job.backend_state
        if not isinstance(cohort, Cohort) or job not in cohort.jobs:
            return
        keep = [i for i, j in enumerate(cohort.jobs) if j is not job]
        job.backend_state = None
        if not keep:
            self.cohorts.remove(cohort)
            return
        index = self.torch.tensor(keep, dtype=self.torch.long, device=self.device)
        for cache in cohort.cache.values():
            cache.batch_select_indices(index)
        cohort.mask = cohort.mask[index]
        cohort.jobs = [cohort.jobs[i] for i in keep]


def cache_kwargs(out: Any) -> dict[str, Any]:
    """The KV cache of a forward pass, as the next call takes it (transformers >= 5.x names it
    `cache`; older model classes `past_key_values`)."""
    cache = getattr(out, "cache", None)
    if cache is not None:
        return {"cache": cache}
    return {"past_key_values": out.past_key_values}
