"""`fast-load`: a streaming safetensors loader.

The model is built with its parameters on the meta device (no memory, no random init); buffers
stay real. Tensor bytes are read with parallel `pread`s:

* CPU: straight into each tensor's own memory (no intermediate copy, no pinned memory).
* CUDA: into a small ring of pinned host buffers, allocated once and reused (pinning one big
  buffer per shard is slower than plain loading), each chunk copied to its GPU tensor
  asynchronously on a side stream while the readers fill the next buffers.

Then the tensors are cast to the serving dtype on the device and assigned to the model.
Only safetensors checkpoints are supported; anything this loader cannot map raises a
`FlagFailure` blaming `fast-load`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from glowplug_worker.serve.startup.flags import FAST_LOAD
from glowplug_worker.serve.startup.safetensors_io import (
    TORCH_DTYPES,
    CheckpointError,
    TensorEntry,
    checkpoint_files,
    pread_into,
    read_header,
)
from glowplug_worker.serve.startup.state import FlagFailure

log = logging.getLogger("glowplug.serve")

READ_THREADS = 8
CHUNK_BYTES = 64 << 20  # one pinned ring slot
RING_SLOTS = 6
# Checkpoint keys that old checkpoints carry for buffers the model recomputes itself.
IGNORABLE_SUFFIXES = ("position_ids", "rotary_emb.inv_freq", "attn.masked_bias", "attn.bias")


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every parameter on the meta device (buffers stay real): the model costs no memory
    and its random init does nothing."""
    import torch

    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            cls = type(param)
            module._parameters[name] = cls(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def read_entries(model_dir: Path) -> list[TensorEntry]:
    files = checkpoint_files(model_dir)
    if not files:
        if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
            raise FlagFailure(
                FAST_LOAD,
                f"{model_dir} has only pickle (.bin/.pt) weights; "
                "fast-load reads safetensors only (turn the flag off)",
            )
        raise CheckpointError(f"{model_dir}: no weight files (*.safetensors) found")
    entries: list[TensorEntry] = []
    for path in files:
        entries.extend(read_header(path))
    return entries


def map_keys(entries: list[TensorEntry], model: Any) -> dict[str, TensorEntry]:
    """Checkpoint name -> model state-dict name, allowing the base-model prefix to differ."""
    wanted = set(model.state_dict().keys())
    prefix = getattr(model, "base_model_prefix", "") or ""
    mapped: dict[str, TensorEntry] = {}
    unknown = []
    for entry in entries:
        name = entry.name
        candidates = [name]
        if prefix:
            candidates += [f"{prefix}.{name}"]
            if name.startswith(prefix + "."):
                candidates.append(name[len(prefix) + 1 :])
        target = next((c for c in candidates if c in wanted), None)
        if target is not None:
            mapped[target] = entry
        elif not name.endswith(IGNORABLE_SUFFIXES):
            unknown.append(name)
    if unknown:
        raise FlagFailure(
            FAST_LOAD,
            f"checkpoint tensors with no place in {type(model).__name__}: {', '.join(unknown[:8])}",
        )
    return mapped


def _read_cpu(jobs: list[tuple[TensorEntry, Any]]) -> None:
    """Read each entry into its uint8 tensor, in parallel."""

    def one(job: tuple[TensorEntry, Any, int, int]) -> None:
        entry, buf, start, length = job
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            pread_into(fd, memoryview(buf.numpy())[start : start + length], entry.offset + start)
        finally:
            os.close(fd)

    parts = [
        (e, b, s, min(CHUNK_BYTES, e.nbytes - s))
        for e, b in jobs
        for s in range(0, e.nbytes, CHUNK_BYTES)
    ]
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="fast-load") as pool:
        list(pool.map(one, parts))


def make_ring(jobs: list[tuple[TensorEntry, Any]]) -> list[tuple[Any, Any]]:
    """The pinned buffers (and their copy-done events), allocated once per load."""
    import torch

    slot_bytes = min(CHUNK_BYTES, max(e.nbytes for e, _ in jobs))
    return [
        (torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=True), torch.cuda.Event())
        for _ in range(RING_SLOTS)
    ]


def _read_cuda(
    jobs: list[tuple[TensorEntry, Any]], device: Any, ring: list[tuple[Any, Any]] | None = None
) -> None:
    """Stream each entry through a ring of pinned buffers into its GPU uint8 tensor."""
    import torch

    slots = ring if ring is not None else make_ring(jobs)
    slot_bytes = int(slots[0][0].numel())
    free: queue.Queue[int] = queue.Queue()
    for i in range(RING_SLOTS):
        free.put(i)
    filled: queue.Queue[tuple[int, Any, int, int] | BaseException] = queue.Queue()
    parts = [
        (e, dst, s, min(slot_bytes, e.nbytes - s))
        for e, dst in jobs
        for s in range(0, e.nbytes, slot_bytes)
    ]
    work: queue.Queue[tuple[TensorEntry, Any, int, int]] = queue.Queue()
    for p in parts:
        work.put(p)
    stream = torch.cuda.Stream(device=device)

    def reader() -> None:
        while True:
            try:
                entry, dst, start, length = work.get_nowait()
            except queue.Empty:
                return
            slot = free.get()
            try:
                slots[slot][1].synchronize()  # the previous copy out of this slot is done
                fd = os.open(entry.path, os.O_RDONLY)
                try:
                    pread_into(
                        fd, memoryview(slots[slot][0].numpy())[:length], entry.offset + start
                    )
                finally:
                    os.close(fd)
            except BaseException as exc:
                filled.put(exc)
                return
            filled.put((slot, dst, start, length))

    threads = [
        threading.Thread(target=reader, name=f"fast-load-{i}", daemon=True)
        for i in range(min(READ_THREADS, len(parts)))
    ]
    for t in threads:
        t.start()
    with torch.cuda.stream(stream):
        for _ in range(len(parts)):
            item = filled.get()
            if isinstance(item, BaseException):
                raise item
            slot, dst, start, length = item
            dst[start : start + length].copy_(slots[slot][0][:length], non_blocking=True)
            slots[slot][1].record(stream)
            free.put(slot)
    stream.synchronize()
    for t in threads:
        t.join()


class WeightStream:
    """Streams every tensor of the checkpoint onto the device in a background thread, started
    as soon as torch is imported so that it overlaps the transformers imports. The thread only
    reads files (`pread`, GIL released) and issues copies; CUDA initialisation, the device
    buffers and the pinned ring are set up by the caller's thread in `start()`. Any error is kept
    and raised by `result()`, inside the load phase."""

    def __init__(self, model_dir: Path, device: Any) -> None:
        self.model_dir = model_dir
        self.device = device
        self.error: BaseException | None = None
        self.raw: dict[str, tuple[TensorEntry, Any]] = {}
        self.seconds = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> WeightStream:
        import torch

        try:
            self.device = torch.device(self.device)
            entries = read_entries(self.model_dir)
            self.raw = {
                e.name: (e, torch.empty(e.nbytes, dtype=torch.uint8, device=self.device))
                for e in entries
            }
            jobs = [r for r in self.raw.values() if r[0].nbytes]
            ring = make_ring(jobs) if self.device.type == "cuda" and jobs else None
        except BaseException as exc:  # raised in the load phase by result()
            self.error = exc
            return self
        self._thread = threading.Thread(
            target=self._run, args=(jobs, ring), name="fast-load", daemon=True
        )
        self._thread.start()
        return self

    def _run(self, jobs: list[tuple[TensorEntry, Any]], ring: Any) -> None:
        begin = time.perf_counter()
        try:
            if jobs and self.device.type == "cuda":
                _read_cuda(jobs, self.device, ring)
            elif jobs:
                _read_cpu(jobs)
        except BaseException as exc:
            self.error = exc
        self.seconds = time.perf_counter() - begin

    def result(self) -> dict[str, tuple[TensorEntry, Any]]:
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error
        return self.raw


def load_weights(
    model: Any, model_dir: Path, device: Any, dtype: Any, stream: WeightStream | None = None
) -> dict[str, Any]:
    """Put the checkpoint into `model` (built with `parameters_on_meta`); returns stats. With a
    `stream` started earlier for the same directory and device, its bytes are used."""
    import torch

    begin = time.perf_counter()
    device = torch.device(device)
    if stream is None or stream.model_dir != model_dir or stream.device != device:
        stream = WeightStream(model_dir, device).start()
    by_name = stream.result()
    mapped = map_keys([entry for entry, _ in by_name.values()], model)
    raw = [(entry, by_name[entry.name][1]) for entry in mapped.values()]
    state: dict[str, Any] = {}
    for (name, entry), (_, buf) in zip(mapped.items(), raw, strict=True):
        tensor = buf.view(getattr(torch, TORCH_DTYPES[entry.dtype])).reshape(entry.shape)
        if tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        state[name] = tensor
    result = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if still_meta:
        raise CheckpointError(
            f"{model_dir}: the checkpoint lacks weights for {', '.join(still_meta[:8])}"
        )
    for module in model.modules():
        for key, buf in module._buffers.items():
            if buf is not None and buf.device != device:
                module._buffers[key] = buf.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - begin
    total = sum(e.nbytes for e in mapped.values())
    streamed = stream.seconds or seconds
    stream.raw = {}  # drop the buffers of tensors the model did not take
    log.debug("fast-load: unexpected keys ignored: %s", result.unexpected_keys)
    return {
        "loader": "fast-load",
        "bytes": total,
        "stream_seconds": round(stream.seconds, 4),
        "seconds": round(seconds, 4),
        # Throughput of the byte stream (files -> device), which may have begun during imports.
        "gb_per_second": round(total / streamed / 1e9, 3) if streamed > 0 else None,
    }


def start_early(model_dir: Path, device: str) -> WeightStream | None:
    """Start streaming the weights right after `import torch` (before transformers); None when
    the device cannot be known yet (the load phase then streams itself) or when the model will
    be spread over several GPUs (transformers' device map loads it then)."""
    import torch

    from glowplug_worker.serve.startup.devices import placement

    cuda = torch.cuda.is_available()
    if device.startswith("cuda") and not cuda:
        return None
    place = placement(device, cuda, torch.cuda.device_count() if cuda else 0)
    if place.spread:
        return None
    return WeightStream(model_dir, place.device).start()
