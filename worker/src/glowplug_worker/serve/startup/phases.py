"""The timed startup phases of `serve`, in order: import, config, load, warmup. Each flag's work
happens inside the phase `flags.FLAG_PHASES` names for it (the operator blames by phase).

The HTTP server starts inside the import phase (its imports are disjoint from the ML stack's), so
/health and /ready answer while the model loads.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from glowplug_worker.serve.options import Options
from glowplug_worker.serve.startup import flags as F
from glowplug_worker.serve.startup.state import Interrupted, StartupError, StartupState

__all__ = ["Failed", "Interrupted", "Started", "start_up"]

if TYPE_CHECKING:
    from glowplug_worker.serve.engine import Engine
    from glowplug_worker.serve.http.server import Http
    from glowplug_worker.serve.startup.download import Download
    from glowplug_worker.serve.startup.fast_load import WeightStream
    from glowplug_worker.serve.startup.imports import MlStack
    from glowplug_worker.serve.startup.loading import Prepared
    from glowplug_worker.serve.startup.weight_prefetch import Prefetcher

log = logging.getLogger("glowplug.serve")


class Failed(Exception):
    """A phase failed. What to stop on the way out: the weight prefetcher when the import phase
    failed, the HTTP server when a later phase did."""

    def __init__(self, error: StartupError, prefetcher: Prefetcher | None, http: Http | None):
        super().__init__(str(error))
        self.error, self.prefetcher, self.http = error, prefetcher, http


@dataclass(frozen=True)
class Started:
    """A finished startup: the server, answering /ready now, and the model behind it."""

    http: Http
    engine: Engine
    load_stats: dict[str, Any]


@dataclass
class _Imported:
    """What the import phase leaves to the next phases."""

    http: Http
    stack: MlStack
    prefetcher: Prefetcher | None
    weight_stream: WeightStream | None


def start_up(opts: Options, state: StartupState, stop: threading.Event) -> Started:
    """Run the phases; raises `Failed` or `Interrupted` (checked between phases)."""
    imported = import_phase(opts, state)
    if stop.is_set():
        raise Interrupted(None)
    http = imported.http
    offline = F.HF_OFFLINE in opts.flags or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        prep = config_phase(opts, state, imported.stack, offline)
        if stop.is_set():
            raise Interrupted(http)
        model, stats = load_phase(opts, state, imported, prep, offline)
        if stop.is_set():
            raise Interrupted(http)
        engine = warmup_phase(opts, state, imported.stack, prep, model)
    except StartupError as err:
        raise Failed(err, None, http) from err
    return Started(http, engine, stats)


def import_phase(opts: Options, state: StartupState) -> _Imported:
    """Begins at process start (`opts.started`): torch and transformers (or the native stack),
    the HTTP server, and the flags that overlap the imports with other work."""
    prefetcher = None
    try:
        with state.phase("import", begin=opts.started):
            download = _start_download(opts)
            check_bytecode(state)
            if download is None:  # the model directory is complete: read it from the start
                native, prefetcher = _model_dir_steps(opts, state)
            if F.SLIM_IMPORTS in opts.flags:
                from glowplug_worker.serve.startup.imports import apply_slim_imports

                state.details["slim_imports_blocked"] = apply_slim_imports()
            background = None
            if F.BACKGROUND_IMPORT in opts.flags:
                from glowplug_worker.serve.startup.imports import BackgroundImport

                background = BackgroundImport("torch").start()
            http = _start_http(opts, state)  # disjoint work: no torch, no transformers
            if background is not None:
                background.join()
                state.details["background_import_seconds"] = round(background.seconds or 0, 4)
            if download is not None:
                import torch  # noqa: F401  # the import the download overlaps; both stacks need it

                if not _finish_download(download, state):
                    raise Interrupted(http)
                native, prefetcher = _model_dir_steps(opts, state)
            if F.NATIVE_MODEL in opts.flags and not native:  # asked for, but does not apply
                http.service.metrics.optimization.labels(F.NATIVE_MODEL).set(0)
            from glowplug_worker.serve.startup.imports import import_native_stack, import_stack

            weight_stream = None
            if F.FAST_LOAD in opts.flags:
                # torch only: the weights stream to the device while transformers imports.
                from glowplug_worker.serve.startup.fast_load import start_early

                weight_stream = start_early(opts.model, opts.device)
            stack = import_native_stack() if native else import_stack(opts.task, opts.model)
    except StartupError as err:
        raise Failed(err, prefetcher, None) from err
    return _Imported(http, stack, prefetcher, weight_stream)


def _model_dir_steps(opts: Options, state: StartupState) -> tuple[bool, Prefetcher | None]:
    """The import-phase steps that read the model directory: whether `native-model` applies,
    and `prefetch-weights`' page-cache readers."""
    native = F.NATIVE_MODEL in opts.flags and native_model_fits(opts, state)
    if F.PREFETCH_WEIGHTS not in opts.flags:
        return native, None
    from glowplug_worker.serve.startup.weight_prefetch import start_prefetch

    return native, start_prefetch(opts.model)


def _start_download(opts: Options) -> Download | None:
    if opts.download is None:
        return None
    from glowplug_worker.serve.startup.download import Download

    return Download(opts.download).start()


def _finish_download(download: Download, state: StartupState) -> bool:
    """Wait for the download thread; False when SIGTERM came first. A failed download fails
    phase `download` with the prefetcher's own error (its type tells the operator whether a flag
    can be to blame)."""
    try:
        outcome = download.wait(lambda: state.draining)
    except Exception as exc:
        raise state.failure("download", exc) from exc
    if outcome is None:
        return False
    state.record("download", outcome.seconds)
    state.details["download"] = {
        "bytes": outcome.fetched_bytes,
        "files": outcome.files,
        "reused": outcome.reused,
    }
    return True


def _start_http(opts: Options, state: StartupState) -> Http:
    from glowplug_worker.serve.http.server import start_http

    try:
        return start_http(
            state,
            host=opts.host,
            port=opts.port,
            active_flags=opts.flags.active,
            max_concurrency=opts.max_concurrency,
            max_queue=opts.max_queue,
            model_name=opts.served_model_name,
            task=opts.task,
            request_timeout=opts.request_timeout,
        )
    except OSError as exc:
        raise StartupError("serve", exc) from exc


def config_phase(opts: Options, state: StartupState, stack: MlStack, offline: bool) -> Prepared:
    from glowplug_worker.serve.startup.loading import prepare

    with state.phase("config"):
        return prepare(
            stack, opts.model, opts.task, opts.dtype, opts.device, offline, opts.max_model_len
        )


def load_phase(
    opts: Options, state: StartupState, imported: _Imported, prep: Prepared, offline: bool
) -> tuple[Any, dict[str, Any]]:
    from glowplug_worker.serve.startup.loading import load_fast, load_native, load_plain

    with state.phase("load"):
        if imported.prefetcher is not None:
            imported.prefetcher.stop()
            state.details["prefetch"] = imported.prefetcher.summary()
        stack, stream = imported.stack, imported.weight_stream
        if prep.placement.spread and (stack.native is not None or F.FAST_LOAD in opts.flags):
            native = stack.native is not None
            log.warning(
                "%d GPUs visible: %s loads onto one device; %s",
                prep.placement.gpus,
                F.NATIVE_MODEL if native else F.FAST_LOAD,
                "the model goes on cuda:0 only"
                if native
                else "loading with transformers' device map instead",
            )
            state.details["spread_fallback"] = F.NATIVE_MODEL if native else F.FAST_LOAD
        if stack.native is not None:
            model, stats = load_native(stack, prep, stream)
        elif F.FAST_LOAD in opts.flags and not prep.placement.spread:
            model, stats = load_fast(stack, prep, stream)
        else:  # the baseline, and fast-load's fallback when the model spreads over GPUs
            model, stats = load_plain(stack, prep, offline)
        state.details["load"] = stats
    return model, stats


def warmup_phase(
    opts: Options, state: StartupState, stack: MlStack, prep: Prepared, model: Any
) -> Engine:
    from glowplug_worker.serve.engine import Engine

    with state.phase("warmup"):
        engine = Engine(
            stack.torch,
            model,
            prep.tokenizer,
            prep.device,
            opts.task,
            prep.max_model_len,
            prep.pooling,
            slots=opts.max_concurrency,
        )
        engine.warmup()
    return engine


def check_bytecode(state: StartupState) -> None:
    """Record (and warn) when this start will compile the Python sources of the ML stack."""
    from glowplug_worker.serve.startup.imports import bytecode_cached

    cached = state.details["bytecode_cached"] = bytecode_cached()
    if cached is False:
        log.warning(
            "no compiled bytecode for transformers: this start compiles the Python sources of "
            "torch and transformers (imports ~2.5x slower); build the image with compiled "
            "bytecode (pip does by default, uv with --compile-bytecode)"
        )


def native_model_fits(opts: Options, state: StartupState) -> bool:
    """`native-model`: whether glowplug's own code can serve this model (else transformers does,
    as without the flag); decided from the model's files before anything heavy is imported."""
    from glowplug_worker.serve.native.support import unsupported_reason
    from glowplug_worker.serve.startup.devices import visible_gpus_from_env

    reason = unsupported_reason(opts.model, opts.task)
    gpus = visible_gpus_from_env()
    if reason is None and gpus is not None and gpus > 1 and opts.device in ("auto", "cuda"):
        reason = f"{gpus} GPUs visible (native-model runs on one; transformers spreads the model)"
    state.details["native_model"] = {"used": reason is None, "reason": reason}
    if reason:
        log.info("%s: %s; loading with transformers", F.NATIVE_MODEL, reason)
    return reason is None
