"""`glowplug-worker prefetch`: parse the command line, run, print one-line errors, write the
termination report on success and on failure, and a Prometheus-style summary."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping

from glowplug_worker import report
from glowplug_worker.prefetch.errors import PrefetchError, TerminatedError, UsageError
from glowplug_worker.prefetch.options import (
    DEFAULT_PVC_ROOT,
    Options,
    parse_optimizations,
    parse_sha256,
    parse_source,
)

MIB = 1024 * 1024


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see glowplug-worker prefetch --help)")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = _Parser(
        prog="glowplug-worker prefetch",
        description="Fetch model weights into DEST, verify them and publish them atomically.",
    )
    p.add_argument(
        "--source",
        required=True,
        help="hf://org/name[@rev], https://, s3://, pvc://claim/path or file:///path",
    )
    p.add_argument("--dest", required=True, help="directory to publish the files in")
    p.add_argument("--revision", help="revision (hf: branch/tag/commit; others: a label)")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="only files matching GLOB (repeatable)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=int(env.get("GLOWPLUG_PREFETCH_CONCURRENCY", "16")),
        help="parallel connections (default 16)",
    )
    p.add_argument("--chunk-mib", type=int, default=32, help="byte-range size in MiB")
    p.add_argument(
        "--timeout",
        type=float,
        default=float(env.get("GLOWPLUG_PREFETCH_TIMEOUT", str(6 * 3600))),
        help="overall deadline in seconds, waiting and retries included",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=30.0,
        help="seconds without a byte before a connection is retried",
    )
    p.add_argument("--retries", type=int, default=8, help="attempts per byte range")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        help="seconds between progress lines (0: none)",
    )
    p.add_argument(
        "--local-mode",
        choices=("copy", "in-place"),
        default=env.get("GLOWPLUG_PREFETCH_LOCAL_MODE", "copy"),
        help="pvc:// and file://: copy into DEST, or verify and link in place",
    )
    p.add_argument(
        "--verify-reuse",
        action="store_true",
        help="reuse a completed cache only after every file matches its recorded sha256 "
        "(a cache others can write: a shared host path); otherwise fetch it again",
    )
    p.add_argument(
        "--sha256",
        help="http(s) sources: the sha256 of the body at the URL (the file, or the manifest); "
        "a download that does not match is refused and nothing is published",
    )
    p.add_argument(
        "--pvc-root",
        default=env.get("GLOWPLUG_PVC_ROOT", DEFAULT_PVC_ROOT),
        help="where pvc:// claims are mounted",
    )
    p.add_argument("--metrics-file", help="also write the Prometheus-style summary here")
    return p


def parse_options(
    argv: list[str], env: Mapping[str, str], optimizations: tuple[str, ...] = ()
) -> tuple[Options, str | None]:
    """The options from the command line and the GLOWPLUG_PREFETCH_* environment;
    `optimizations` is the flag list `main` read from GLOWPLUG_OPTIMIZATIONS."""
    try:
        args = build_parser(env).parse_args(argv)
    except ValueError as exc:  # a bad env default
        raise UsageError(f"bad GLOWPLUG_PREFETCH_* value: {exc}") from exc
    if args.concurrency < 1 or args.concurrency > 256:
        raise UsageError("--concurrency must be between 1 and 256")
    if args.local_mode not in ("copy", "in-place"):
        raise UsageError("GLOWPLUG_PREFETCH_LOCAL_MODE must be 'copy' or 'in-place'")
    if args.chunk_mib < 1:
        raise UsageError("--chunk-mib must be at least 1")
    if args.timeout <= 0 or args.stall_timeout <= 0 or args.retries < 1:
        raise UsageError("--timeout and --stall-timeout must be positive, --retries at least 1")
    source = parse_source(args.source)
    opts = Options(
        source=source,
        dest=args.dest,
        revision=args.revision,
        includes=tuple(args.include),
        concurrency=args.concurrency,
        chunk_bytes=args.chunk_mib * MIB,
        timeout_s=args.timeout,
        stall_timeout_s=args.stall_timeout,
        max_attempts=args.retries,
        progress_interval_s=args.progress_interval,
        local_mode=args.local_mode,
        pvc_root=args.pvc_root,
        optimizations=optimizations,
        verify_reuse=args.verify_reuse,
        sha256=parse_sha256(args.sha256, source),
    )
    return opts, args.metrics_file


def metrics_text(values: dict[str, float]) -> str:
    lines = []
    for name, value in values.items():
        lines.append(f"# TYPE glowplug_prefetch_{name} gauge")
        text = str(value) if isinstance(value, int) else f"{value:.3f}"
        lines.append(f"glowplug_prefetch_{name} {text}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    env = os.environ
    started = time.monotonic()
    flags = parse_optimizations(env.get("GLOWPLUG_OPTIMIZATIONS"))
    optimizations = list(flags)
    metrics_file: str | None = None
    _exit_on_sigterm(optimizations, started)
    try:
        opts, metrics_file = parse_options(argv, env, flags)
        from glowplug_worker.prefetch.run import prefetch

        outcome = prefetch(opts, env)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (PrefetchError, OSError, KeyboardInterrupt) as exc:
        seconds = time.monotonic() - started
        _report_failure(exc, optimizations, seconds)
        _emit({"success": 0, "seconds": seconds}, metrics_file)
        code = exc.exit_code if isinstance(exc, PrefetchError) else 1
        return 130 if isinstance(exc, KeyboardInterrupt) else code
    summary = report.DownloadSummary(
        bytes=outcome.fetched_bytes,
        files=outcome.files,
        seconds=round(outcome.seconds, 3),
        throughput_bytes_per_second=round(outcome.throughput, 1),
        reused=outcome.reused,
    )
    report.write(
        report.TerminationReport(
            command="prefetch",
            outcome="succeeded",
            optimizations=optimizations,
            phases={"download": outcome.seconds},
            download=summary,
        )
    )
    _emit(
        {
            "success": 1,
            "reused": int(outcome.reused),
            "fetched_bytes": outcome.fetched_bytes,
            "resumed_bytes": outcome.resumed_bytes,
            "published_bytes": outcome.total_bytes,
            "files": outcome.files,
            "seconds": outcome.seconds,
            "throughput_bytes_per_second": outcome.throughput,
        },
        metrics_file,
    )
    return 0


def _exit_on_sigterm(optimizations: list[str], started: float) -> None:
    """On SIGTERM (pod deleted, deadline passed) write the failed report and exit at once:
    worker threads may sit in a stalled read, and the staging area is resumable as it is."""

    def handler(signum: int, frame: object) -> None:
        exc = TerminatedError("terminated by SIGTERM; a rerun resumes the partial download")
        _report_failure(exc, optimizations, time.monotonic() - started)
        os._exit(exc.exit_code)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _report_failure(exc: BaseException, optimizations: list[str], seconds: float) -> None:
    message = f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        message += " (the prefetcher cannot write there: check --dest, the volume's readOnly and"
        message += " the pod's fsGroup/runAsUser)"
    print(f"glowplug-worker prefetch: error: {message}", file=sys.stderr, flush=True)
    report.write(
        report.TerminationReport(
            command="prefetch",
            outcome="failed",
            phase="download",
            optimizations=optimizations,
            error=report.ErrorInfo.from_exception(exc),
            phases={},
            download=report.DownloadSummary(0, 0, round(seconds, 3), 0.0, False),
        )
    )


def _emit(values: dict[str, float], path: str | None) -> None:
    text = metrics_text(values)
    sys.stdout.write(text)
    sys.stdout.flush()
    if path:
        try:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            print(f"glowplug-worker prefetch: cannot write --metrics-file: {exc}", file=sys.stderr)
