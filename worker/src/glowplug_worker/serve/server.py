"""The life of one `serve` process: run the timed startup phases (the HTTP server starts in the
first, so /health and /ready answer at once), serve, and on SIGTERM turn readiness off and drain.

Threads: the main thread runs the startup phases and then waits for shutdown; uvicorn runs its
event loop in the `http` thread; model calls run in a small pool of `model` threads.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

from glowplug_worker import report
from glowplug_worker.serve.options import Options
from glowplug_worker.serve.startup.phases import Failed, Interrupted, Started, start_up
from glowplug_worker.serve.startup.state import StartupError, StartupState

if TYPE_CHECKING:
    from glowplug_worker.serve.http.server import Http
    from glowplug_worker.serve.startup.weight_prefetch import Prefetcher

log = logging.getLogger("glowplug.serve")


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
    try:
        started = start_up(opts, state, stop)
    except Failed as failed:
        return fail(state, failed.error, failed.prefetcher, failed.http)
    except Interrupted as interrupted:
        return finish(state, interrupted.http, None, str(interrupted))
    serve(state, started)
    stop.wait()
    started.http.service.metrics.ready.set(0)
    drained = started.http.drain(opts.drain_seconds)
    return finish(state, started.http, drained, None)


def serve(state: StartupState, started: Started) -> None:
    """Hand the model to the HTTP side and turn readiness on."""
    http = started.http
    http.service.engine = started.engine
    if started.engine.task == "generate":
        started.engine.batcher.on_decode = http.service.metrics.decode_batch.observe
    state.mark_ready()
    m = http.service.metrics
    for name, seconds in state.phases.items():
        m.phase_seconds.labels(name).set(seconds)
    m.time_to_ready.set(state.time_to_ready or 0)
    m.ready.set(1)
    if started.load_stats.get("gb_per_second"):
        m.load_bytes_per_second.set(started.load_stats["gb_per_second"] * 1e9)
    log.info(
        "ready in %.2f s: %s (optimizations: %s)",
        state.time_to_ready,
        ", ".join(f"{k} {v:.2f} s" for k, v in state.phases.items()),
        ",".join(state.optimizations) or "none",
    )


def fail(
    state: StartupState, err: StartupError, prefetcher: Prefetcher | None, http: Http | None
) -> int:
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


def finish(state: StartupState, http: Http | None, drained: bool | None, note: str | None) -> int:
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


def configure_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.Formatter.converter = time.gmtime
