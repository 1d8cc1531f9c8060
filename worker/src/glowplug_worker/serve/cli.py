"""`glowplug-worker serve`: argument parsing and the entry point. Imports nothing heavy: torch
and transformers arrive inside the timed `import` phase (startup/phases.py)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from glowplug_worker import report
from glowplug_worker.serve.startup import flags as F
from glowplug_worker.serve.startup.loading import DTYPE_CHOICES, model_dir_problem

if TYPE_CHECKING:
    from glowplug_worker.prefetch.options import Options as PrefetchOptions


class UsageError(ValueError):
    """A command-line argument that cannot work; the message names it and the fix."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glowplug-worker serve",
        description="Serve a local transformers model over an OpenAI-compatible HTTP API, timing "
        "each startup phase. See docs/worker.md.",
    )
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        help="model directory (config.json, tokenizer, *.safetensors)",
    )
    p.add_argument(
        "--task",
        choices=("generate", "embed"),
        default="generate",
        help="generate: /v1/completions and /v1/chat/completions; "
        "embed: /v1/embeddings (default: generate)",
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="weights dtype; auto = the checkpoint's (default: auto)",
    )
    p.add_argument(
        "--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda or cuda:N"
    )
    p.add_argument(
        "--optimizations",
        default=None,
        help=f"comma-separated startup flags ({', '.join(F.KNOWN_FLAGS)}); "
        f"default: ${F.ENV_VAR}; unknown names are ignored",
    )
    p.add_argument(
        "--served-model-name",
        default=None,
        help="the model id clients send (default: the model directory's name)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=4,
        help="requests running on the model at once (default: 4)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=32,
        help="requests waiting for a slot before 429 answers (default: 32)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=120.0,
        help="seconds per request, queueing included (default: 120)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=25.0,
        help="after SIGTERM, how long in-flight requests may finish (default: 25)",
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="context limit in tokens (default: the model's)",
    )
    p.add_argument(
        "--download",
        default=None,
        metavar="PREFETCH_ARGS",
        help="fetch the model first, while the imports run: one shell-quoted string of "
        "`glowplug-worker prefetch` arguments (--source, --dest, ...); --model must be "
        "where they publish it (the overlap-download flag; the operator sets this)",
    )
    return p


def validate(args: argparse.Namespace) -> PrefetchOptions | None:
    """Refuse arguments that cannot work; the parsed `--download`, if given."""
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: use a port between 1 and 65535")
    if args.max_concurrency < 1:
        raise UsageError("--max-concurrency must be at least 1")
    if args.max_queue < 0:
        raise UsageError("--max-queue must be 0 or more")
    if args.request_timeout <= 0 or args.drain_seconds < 0:
        raise UsageError("--request-timeout must be > 0 and --drain-seconds >= 0")
    if args.max_model_len is not None and args.max_model_len < 2:
        raise UsageError("--max-model-len must be at least 2")
    dev = args.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise UsageError(f"--device {dev!r}: use auto, cpu, cuda or cuda:N")
    if args.download is not None:
        return _download_options(args.download, args.model)
    if (problem := model_dir_problem(args.model)) is not None:
        raise UsageError(problem)
    return None


def _download_options(value: str, model: Path) -> PrefetchOptions:
    """`--download`, parsed by the prefetcher's own parser; it must publish to `--model`."""
    from glowplug_worker.prefetch.errors import UsageError as PrefetchUsage
    from glowplug_worker.serve.startup.download import parse_download

    try:
        options = parse_download(value, os.environ)
    except (PrefetchUsage, ValueError) as exc:
        raise UsageError(f"--download: {exc}") from exc
    except SystemExit as exc:  # --help inside the string
        raise UsageError("--download: give prefetch arguments, not --help") from exc
    if Path(options.dest).resolve() != model.resolve():
        raise UsageError(f"--download publishes to {options.dest}, but --model is {model}")
    return options


def main(argv: list[str]) -> int:
    started = time.perf_counter()
    from glowplug_worker.serve.options import Options
    from glowplug_worker.serve.server import configure_logging, run

    configure_logging()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the problem
        return int(exc.code or 0)
    flags = F.parse_flags(args.optimizations, os.environ.get(F.ENV_VAR))
    try:
        download = validate(args)
    except UsageError as exc:
        parser.print_usage()
        print(f"glowplug-worker serve: error: {exc}")
        report.write(
            report.TerminationReport(
                command="serve",
                outcome="failed",
                optimizations=list(flags.active),
                error=report.ErrorInfo.from_exception(exc),
            )
        )
        return 2
    if F.HF_OFFLINE in flags:
        # Read by huggingface_hub and transformers at import: set before the import phase.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    opts = Options(
        model=args.model,
        task=args.task,
        host=args.host,
        port=args.port,
        dtype=args.dtype,
        device=args.device,
        flags=flags,
        served_model_name=args.served_model_name or args.model.resolve().name,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        request_timeout=args.request_timeout,
        drain_seconds=args.drain_seconds,
        max_model_len=args.max_model_len,
        started=started,
        download=download,
    )
    return run(opts)
