"""The serving engines a ModelServer can run, and the startup flags each one knows.

An engine is what runs in the worker container: glowplug's own server (`builtin`), a stock vLLM,
SGLang or `transformers serve` image, or any image (`custom`). The prefetch init container is the
same for all of them (glowplug's prefetch image); the engine only decides the worker container's
command, its model-path argument (the prefetched directory, hub access off), the paths the
kubelet probes, how `resources.gpus` becomes tensor parallelism, and which named flags exist.

Pure data and pure functions: the builders read it, the docs (docs/engines.md) describe it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

EngineKind = Literal["builtin", "vllm", "sglang", "transformers-serve", "custom"]
ENGINE_KINDS: tuple[str, ...] = ("builtin", "vllm", "sglang", "transformers-serve", "custom")

# Flags that act in the prefetch init container: they apply to every engine.
PREFETCH_FLAGS: tuple[str, ...] = ("prefetch-page-cache",)


@dataclass(frozen=True)
class EngineFlag:
    """A startup flag an engine knows by name: the args and env it sets, what it saves at start
    and what it risks. `signatures` are regular expressions on the container's last log lines
    (rollback/signatures.py) that blame this flag when a start fails with it on."""

    name: str
    saves: str
    risks: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    signatures: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServeParams:
    """What every engine's command line is made of."""

    model_dir: str
    served_name: str
    port: int
    dtype: str
    gpus: int
    max_concurrency: int
    max_model_len: int | None


@dataclass(frozen=True)
class Engine:
    kind: str
    image: str | None  # the public image used when spec.image.worker is unset
    command: tuple[str, ...]
    readiness_path: str
    liveness_path: str
    flags: Mapping[str, EngineFlag]
    # Env the engine always gets: its own hub access and telemetry off.
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Start phases the engine logs itself: phase -> pattern whose group 1 is seconds.
    log_phases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def args(self, params: ServeParams) -> list[str]:
        """The engine's own arguments for this model (flags and spec.engine.args come after)."""
        return _ARGS[self.kind](params)


def _vllm_args(p: ServeParams) -> list[str]:
    args = [
        p.model_dir,
        "--served-model-name", p.served_name,
        "--host", "0.0.0.0",
        "--port", str(p.port),
        "--dtype", p.dtype,
        "--tensor-parallel-size", str(max(1, p.gpus)),
        "--max-num-seqs", str(p.max_concurrency),
    ]  # fmt: skip
    if p.max_model_len:
        args += ["--max-model-len", str(p.max_model_len)]
    return args


def _sglang_args(p: ServeParams) -> list[str]:
    args = [
        "--model-path", p.model_dir,
        "--served-model-name", p.served_name,
        "--host", "0.0.0.0",
        "--port", str(p.port),
        "--dtype", p.dtype,
        "--tp-size", str(max(1, p.gpus)),
        "--max-running-requests", str(p.max_concurrency),
    ]  # fmt: skip
    if p.max_model_len:
        args += ["--context-length", str(p.max_model_len)]
    return args


# `transformers serve DIR` answers only requests that name the model as DIR (or name none): the
# served name becomes a link to the prefetched directory, in the container's writable /tmp.
TRANSFORMERS_SERVE_COMMAND = (
    "/bin/sh",
    "-c",
    'cd /tmp && ln -sfn "$GLOWPLUG_MODEL_DIR" "$GLOWPLUG_SERVED_MODEL_NAME" '
    '&& exec transformers serve "$GLOWPLUG_SERVED_MODEL_NAME" "$@"',
    "transformers-serve",
)


def _transformers_serve_args(p: ServeParams) -> list[str]:
    # The model is the command's (above). One process, one device: `auto` places the model on
    # the GPU(s) it is given, else the CPU.
    return [
        "--host", "0.0.0.0",
        "--port", str(p.port),
        "--dtype", p.dtype,
        "--device", "auto" if p.gpus else "cpu",
    ]  # fmt: skip


def _no_args(p: ServeParams) -> list[str]:
    return []


_ARGS = {
    "vllm": _vllm_args,
    "sglang": _sglang_args,
    "transformers-serve": _transformers_serve_args,
    "custom": _no_args,
    "builtin": _no_args,  # the builtin worker's command line is the builders' own
}

_OFFLINE = MappingProxyType({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})

# The catalogue of known startup failures by engine flag: a signature names the failure in the
# engine's own log words, so a start that fails without glowplug's report still blames the flag.
VLLM_FLAGS = MappingProxyType(
    {
        flag.name: flag
        for flag in (
            EngineFlag(
                "enforce-eager",
                saves="skips CUDA graph capture at start (tens of seconds on large models)",
                risks="slower decoding: every step runs eagerly",
                args=("--enforce-eager",),
            ),
            EngineFlag(
                "runai-streamer",
                saves="streams the safetensors files to the GPU concurrently (Run:ai streamer)",
                risks="needs vllm[runai] in the image; fails on images without it",
                args=("--load-format", "runai_streamer"),
                signatures=(r"No module named '?runai_model_streamer",),
            ),
            EngineFlag(
                "forkserver",
                saves="multi-GPU workers fork from a warm server process instead of spawning",
                risks="CUDA must not be initialised before the fork",
                env=MappingProxyType({"VLLM_WORKER_MULTIPROC_METHOD": "forkserver"}),
                signatures=(r"Cannot re-initialize CUDA in forked subprocess",),
            ),
            EngineFlag(
                "compile-cache",
                saves="torch.compile and CUDA graph artifacts are reused from the shared cache "
                "volume by every later start",
                risks="a cache written by another vLLM or torch version can fail to load",
                env=MappingProxyType({"VLLM_CACHE_ROOT": "{cache}/.vllm"}),
            ),
        )
    }
)

SGLANG_FLAGS = MappingProxyType(
    {
        flag.name: flag
        for flag in (
            EngineFlag(
                "skip-warmup",
                saves="Ready without the warmup request",
                risks="the first requests pay for kernel compilation and may time out",
                args=("--skip-server-warmup",),
            ),
            EngineFlag(
                "disable-cuda-graph",
                saves="skips CUDA graph capture at start",
                risks="slower decoding",
                args=("--disable-cuda-graph",),
            ),
            EngineFlag(
                "compile-cache",
                saves="torch.compile (inductor) artifacts are reused from the shared cache volume",
                risks="a cache written by another torch version can fail to load",
                env=MappingProxyType({"TORCHINDUCTOR_CACHE_DIR": "{cache}/.inductor"}),
            ),
        )
    }
)

TRANSFORMERS_SERVE_FLAGS = MappingProxyType(
    {
        flag.name: flag
        for flag in (
            EngineFlag(
                "flash-attention",
                saves="faster prefill and warmup with FlashAttention 2 kernels",
                risks="needs the flash-attn package and a recent NVIDIA GPU; fails at load "
                "without them",
                args=("--attn-implementation", "flash_attention_2"),
                signatures=(
                    r"FlashAttention2 has been toggled on",
                    r"No module named '?flash_attn",
                ),
            ),
            EngineFlag(
                "continuous-batching",
                saves="requests share forward passes (paged attention) once it serves",
                risks="models or attention kernels without paged attention support fail",
                args=("--continuous-batching",),
            ),
        )
    }
)

ENGINES: Mapping[str, Engine] = MappingProxyType(
    {
        "builtin": Engine(
            kind="builtin",
            image=None,  # the operator's worker image (settings)
            command=("glowplug-worker",),
            readiness_path="/ready",
            liveness_path="/health",
            flags=MappingProxyType({}),
        ),
        "vllm": Engine(
            kind="vllm",
            image="vllm/vllm-openai:v0.18.0",
            command=("vllm", "serve"),
            readiness_path="/health",
            liveness_path="/health",
            flags=VLLM_FLAGS,
            env=MappingProxyType({**_OFFLINE, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}),
            # vLLM's own log lines (its model runner, compilation monitor and engine core).
            log_phases=MappingProxyType(
                {
                    "load": r"Model loading took [\d.]+ GiB(?: memory)? and ([\d.]+) ?s",
                    "compile": r"torch\.compile takes ([\d.]+) s in total",
                    "graphCapture": r"Graph capturing finished in ([\d.]+) secs",
                    "engineInit": r"init engine \(profile, create kv cache, warmup model\) "
                    r"took ([\d.]+) seconds",
                }
            ),
        ),
        "sglang": Engine(
            kind="sglang",
            image="lmsysorg/sglang:v0.5.9",
            command=("python3", "-m", "sglang.launch_server"),
            readiness_path="/health",
            liveness_path="/health",
            flags=SGLANG_FLAGS,
            env=_OFFLINE,
            log_phases=MappingProxyType(
                {
                    "load": r"Load weight end\. elapsed=([\d.]+) s",
                    "graphCapture": r"Capture cuda graph end\. Time elapsed: ([\d.]+) s",
                }
            ),
        ),
        "transformers-serve": Engine(
            kind="transformers-serve",
            image=None,  # glowplug's worker image ships transformers with its serving extra
            command=TRANSFORMERS_SERVE_COMMAND,
            readiness_path="/health",
            liveness_path="/health",
            flags=TRANSFORMERS_SERVE_FLAGS,
            env=_OFFLINE,
        ),
        "custom": Engine(
            kind="custom",
            image=None,
            command=(),
            readiness_path="/health",
            liveness_path="/health",
            flags=MappingProxyType({}),
            env=_OFFLINE,
        ),
    }
)


def engine(kind: str) -> Engine:
    return ENGINES[kind]


def known_flag(kind: str, name: str) -> EngineFlag | None:
    """The engine's own flag of this name, if it has one."""
    return ENGINES[kind].flags.get(name)


def phases_from_log(kind: str, log: str) -> dict[str, float]:
    """The start phases an engine logged itself (the last of each), in seconds."""
    phases: dict[str, float] = {}
    for phase, pattern in ENGINES[kind].log_phases.items():
        found = re.findall(pattern, log)
        if found:
            phases[phase] = round(float(found[-1]), 3)
    return phases
