"""The life of one `serve` process: start the HTTP server (so /health and /ready answer at once),
run the timed startup phases, serve, and on SIGTERM turn readiness off and drain.

Threads: the main thread runs the startup phases and then waits for shutdown; uvicorn runs its
event loop in the `http` thread; model calls run in a small worker pool.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from glowplug_worker import report
from glowplug_worker.serve import flags as F
from glowplug_worker.serve.state import StartupError, StartupState

log = logging.getLogger("glowplug.serve")


@dataclass
class Options:
    model: Path
    task: str
    host: str
    port: int
    dtype: str
    device: str
    flags: F.Flags
    served_model_name: str
    max_concurrency: int
    max_queue: int
    request_timeout: float
    drain_seconds: float
    max_model_len: int | None
    started: float


class Shutdown(Exception):
    """SIGTERM arrived during startup."""


def run(opts: Options) -> int:
    state = StartupState(
        optimizations=list(opts.flags.active),
        ignored_optimizations=list(opts.flags.ignored),
        started=opts.started,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: readiness off, draining", signal.Signals(signum).name)
        state.draining = True
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # -- import phase (begins at process start, see cli.main) ----------------------------------
    prefetcher = background = weight_stream = None
    blocked: list[str] = []
    try:
        with state.phase("import", begin=opts.started):
            check_bytecode(state)
            native = F.NATIVE_MODEL in opts.flags and native_model_fits(opts, state)
            if F.SLIM_IMPORTS in opts.flags:
                from glowplug_worker.serve.imports import apply_slim_imports

                blocked = apply_slim_imports()
                state.details["slim_imports_blocked"] = blocked
            if F.PREFETCH_WEIGHTS in opts.flags:
                from glowplug_worker.serve.prefetch import start_prefetch

                prefetcher = start_prefetch(opts.model)
            if F.BACKGROUND_IMPORT in opts.flags:
                from glowplug_worker.serve.imports import BackgroundImport

                background = BackgroundImport("torch").start()
            try:
                http = start_http(opts, state)  # disjoint work: no torch, no transformers
            except OSError as exc:
                raise StartupError("serve", exc) from exc
            if F.NATIVE_MODEL in opts.flags and not native:  # asked for, but does not apply
                http.service.metrics.optimization.labels(F.NATIVE_MODEL).set(0)
            from glowplug_worker.serve.imports import import_native_stack, import_stack

            if background is not None:
                background.join()
                state.details["background_import_seconds"] = round(background.seconds or 0, 4)
            if F.FAST_LOAD in opts.flags:
                # torch only: the weights stream to the device while transformers imports.
                from glowplug_worker.serve.fast_load import start_early

                weight_stream = start_early(opts.model, opts.device)
            stack = import_native_stack() if native else import_stack(opts.task, opts.model)
    except StartupError as err:
        return fail(state, err, prefetcher)
    if stop.is_set():
        return finish(state, None, None, "startup interrupted by a signal")
    return serve_after_import(opts, state, stack, http, stop, prefetcher, weight_stream)


def check_bytecode(state: StartupState) -> None:
    """Record (and warn) when this start will compile the Python sources of the ML stack."""
    from glowplug_worker.serve.imports import bytecode_cached

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
    from glowplug_worker.serve.native_support import unsupported_reason

    reason = unsupported_reason(opts.model, opts.task)
    state.details["native_model"] = {"used": reason is None, "reason": reason}
    if reason:
        log.info("%s: %s; loading with transformers", F.NATIVE_MODEL, reason)
    return reason is None


def serve_after_import(
    opts: Options,
    state: StartupState,
    stack: dict[str, Any],
    http: Any,
    stop: threading.Event,
    prefetcher: Any,
    weight_stream: Any,
) -> int:
    from glowplug_worker.serve.engine import Engine
    from glowplug_worker.serve.model_loading import load_fast, load_native, load_plain, prepare

    offline = F.HF_OFFLINE in opts.flags or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        with state.phase("config"):
            prep = prepare(
                stack, opts.model, opts.task, opts.dtype, opts.device, offline, opts.max_model_len
            )
        if stop.is_set():
            raise Shutdown()
        with state.phase("load"):
            if prefetcher is not None:
                prefetcher.stop()
                state.details["prefetch"] = prefetcher.summary()
            if "native" in stack:
                model, stats = load_native(stack, prep, weight_stream)
            elif F.FAST_LOAD in opts.flags:
                model, stats = load_fast(stack, prep, weight_stream)
            else:
                model, stats = load_plain(stack, prep, offline)
            state.details["load"] = stats
        if stop.is_set():
            raise Shutdown()
        with state.phase("warmup"):
            engine = Engine(
                stack["torch"],
                model,
                prep.tokenizer,
                prep.device,
                opts.task,
                prep.max_model_len,
                prep.pooling,
            )
            engine.warmup()
    except StartupError as err:
        return fail(state, err, None, http)
    except Shutdown:
        return finish(state, http, None, "startup interrupted by a signal")
    http.service.engine = engine
    state.mark_ready()
    m = http.service.metrics
    for name, seconds in state.phases.items():
        m.phase_seconds.labels(name).set(seconds)
    m.time_to_ready.set(state.time_to_ready or 0)
    m.ready.set(1)
    if stats.get("gb_per_second"):
        m.load_bytes_per_second.set(stats["gb_per_second"] * 1e9)
    log.info(
        "ready in %.2f s: %s (optimizations: %s)",
        state.time_to_ready,
        ", ".join(f"{k} {v:.2f} s" for k, v in state.phases.items()),
        ",".join(state.optimizations) or "none",
    )
    stop.wait()
    m.ready.set(0)
    drained = http.drain(opts.drain_seconds)
    return finish(state, http, drained, None)


def fail(state: StartupState, err: StartupError, prefetcher: Any, http: Any = None) -> int:
    if prefetcher is not None:
        prefetcher.stop()
    log.error("startup failed in phase %s: %s", err.phase, err, exc_info=err.cause)
    report.write(
        report.TerminationReport(
            command="serve",
            outcome="failed",
            phase=err.phase,
            optimizations=list(state.optimizations),
            flag=err.flag,
            error=report.ErrorInfo.from_exception(err.cause),
            phases=dict(state.phases),
        )
    )
    if http is not None:
        http.stop()
    return 1


def finish(state: StartupState, http: Any, drained: bool | None, note: str | None) -> int:
    if note:
        log.info("%s", note)
    if drained is False:
        log.warning("grace period over with requests still in flight; exiting anyway")
    if http is not None:
        http.stop()
    report.write(
        report.TerminationReport(
            command="serve",
            outcome="succeeded",
            optimizations=list(state.optimizations),
            phases=dict(state.phases),
        )
    )
    return 0


class Http:
    """uvicorn in a background thread."""

    def __init__(self, server: Any, service: Any, thread: threading.Thread) -> None:
        self.server, self.service, self.thread = server, service, thread

    def drain(self, grace: float) -> bool:
        import asyncio

        loop = getattr(self.server, "_glowplug_loop", None)
        if loop is None:
            return True
        future = asyncio.run_coroutine_threadsafe(self.service.scheduler.wait_idle(grace), loop)
        try:
            return bool(future.result(grace + 1))
        except Exception:
            return False

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        if self.service.pool is not None:
            self.service.pool.shutdown(wait=False, cancel_futures=True)


def start_http(opts: Options, state: StartupState) -> Http:
    import asyncio

    import uvicorn

    from glowplug_worker.serve.api import Service, build_app
    from glowplug_worker.serve.metrics import Metrics
    from glowplug_worker.serve.scheduler import Scheduler

    metrics = Metrics()
    for name in opts.flags.active:
        metrics.optimization.labels(name).set(1)
    service = Service(
        state=state,
        metrics=metrics,
        scheduler=Scheduler(opts.max_concurrency, opts.max_queue),
        model_name=opts.served_model_name,
        task=opts.task,
        request_timeout=opts.request_timeout,
        pool=ThreadPoolExecutor(opts.max_concurrency, thread_name_prefix="model"),
    )
    config = uvicorn.Config(
        build_app(service),
        host=opts.host,
        port=opts.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    started = threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        loop = asyncio.new_event_loop()
        server._glowplug_loop = loop  # type: ignore[attr-defined]
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(_serve(server, started))
        except BaseException as exc:
            errors.append(exc)
        finally:
            started.set()
            loop.close()

    thread = threading.Thread(target=serve, name="http", daemon=True)
    thread.start()
    started.wait(30)
    if errors or not server.started:
        raise OSError(
            f"could not serve HTTP on {opts.host}:{opts.port}: "
            f"{errors[0] if errors else 'server did not start'}"
        )
    return Http(server, service, thread)


async def _serve(server: Any, started: threading.Event) -> None:
    import asyncio

    task = asyncio.ensure_future(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    started.set()
    await task
    if server.started is False and not task.cancelled() and task.exception():
        raise task.exception()  # type: ignore[misc]


def configure_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.Formatter.converter = time.gmtime
