"""What the containers run: the worker container's command line, args and env for each engine,
and the env the operator gives the prefetcher and the worker."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from glowplug_operator.cache import PrefetchKey, model_dir
from glowplug_operator.contract import TERMINATION_PATH
from glowplug_operator.engines import PREFETCH_FLAGS as PREFETCH_ONLY
from glowplug_operator.engines import ServeParams, engine, known_flag
from glowplug_operator.settings import Settings
from glowplug_operator.spec import OVERLAP_DOWNLOAD, ModelServerSpec, Optimization

PVC_MOUNT_ROOT = "/mnt/pvc"

Manifest = dict[str, Any]


def container_env(
    flags: Sequence[Optimization], settings: Settings, *, worker: bool
) -> list[Manifest]:
    """The container's env: the operator's own variables, then the custom flags' (which may
    override anything but GLOWPLUG_*). One entry per name."""
    env = {
        "GLOWPLUG_OPTIMIZATIONS": ",".join(f.name for f in flags),
        "GLOWPLUG_TERMINATION_PATH": TERMINATION_PATH,
        "GLOWPLUG_PVC_ROOT": PVC_MOUNT_ROOT,
        "HF_HOME": f"{settings.cache_mount_path}/.hf",
        # The root filesystem is read-only: caches of custom images (vLLM, torch) go to /tmp.
        "HOME": "/tmp",
    }
    if worker:
        if any(f.name == "hf-offline" for f in flags):
            env["HF_HUB_OFFLINE"] = "1"
        for flag in flags:
            env.update({k: v for k, v in flag.env.items() if not k.startswith("GLOWPLUG_")})
    return _env_entries(env)


def prefetch_args(spec: ModelServerSpec, settings: Settings, namespace: str) -> list[str]:
    """`glowplug-worker prefetch`'s arguments for this ModelServer's weights."""
    args = PrefetchKey.of(spec).args(model_dir(spec, settings, namespace))
    if spec.cache.kind == "HostPath":
        args.append("--verify-reuse")  # others on the node can write there: trust no sizes
    return args


def downloads_in_worker(spec: ModelServerSpec, flags: Sequence[Optimization]) -> bool:
    """`overlap-download` on the builtin engine: the worker fetches the weights itself, and the
    pod has no prefetch init container."""
    return spec.engine.kind == "builtin" and any(f.name == OVERLAP_DOWNLOAD for f in flags)


def engine_flag_definition(
    spec: ModelServerSpec, flag: Optimization, settings: Settings
) -> tuple[list[str], dict[str, str]]:
    """A flag's args and env on this ModelServer's engine: its own when the spec gives any, else
    the engine catalogue's (engines.py), with {cache} meaning the cache volume's mount path."""
    if flag.args or flag.env:
        return list(flag.args), dict(flag.env)
    known = known_flag(spec.engine.kind, flag.name)
    if known is None:
        return [], {}
    env = {k: v.replace("{cache}", settings.cache_mount_path) for k, v in known.env.items()}
    return list(known.args), env


def engine_command(
    name: str,
    namespace: str,
    spec: ModelServerSpec,
    settings: Settings,
    flags: Sequence[Optimization],
) -> tuple[list[str], list[str], list[Manifest]]:
    kind = engine(spec.engine.kind)
    params = ServeParams(
        model_dir=model_dir(spec, settings, namespace),
        served_name=name,
        port=spec.serving.port,
        dtype=spec.serving.dtype,
        gpus=spec.resources.gpus,
        max_concurrency=spec.serving.max_concurrency,
        max_model_len=spec.serving.max_model_len,
    )
    args = kind.args(params) + list(spec.engine.args)
    env = {
        # For the args of any engine, as $(GLOWPLUG_MODEL_DIR): Kubernetes expands them.
        "GLOWPLUG_MODEL_DIR": params.model_dir,
        "GLOWPLUG_SERVED_MODEL_NAME": params.served_name,
        **kind.env,
        "HF_HOME": f"{settings.cache_mount_path}/.hf",
        # The root filesystem is read-only: the engine's caches go to /tmp.
        "HOME": "/tmp",
    }
    for flag in flags:
        if spec.engine.kind != "builtin" and flag.name in PREFETCH_ONLY:
            continue  # acts in the init container
        flag_args, flag_env = engine_flag_definition(spec, flag, settings)
        args += flag_args
        env.update(flag_env)
    command = list(spec.engine.command or kind.command)
    return command, args, _env_entries(env)


def builtin_command(
    name: str,
    namespace: str,
    spec: ModelServerSpec,
    settings: Settings,
    flags: Sequence[Optimization],
) -> tuple[list[str], list[str], list[Manifest]]:
    serving = spec.serving
    args = [
        "serve",
        "--model", model_dir(spec, settings, namespace),
        # Clients name the model as they name the ModelServer.
        "--served-model-name", name,
        "--task", spec.model.task,
        "--port", str(serving.port),
        "--dtype", serving.dtype,
        "--max-concurrency", str(serving.max_concurrency),
        "--max-queue", str(serving.max_queue),
        "--request-timeout", str(serving.request_timeout_seconds),
    ]  # fmt: skip
    if serving.max_model_len:
        args += ["--max-model-len", str(serving.max_model_len)]
    if downloads_in_worker(spec, flags):
        args += ["--download", shlex.join(prefetch_args(spec, settings, namespace))]
    for flag in flags:
        args += flag.args
    return ["glowplug-worker"], args, container_env(flags, settings, worker=True)


def worker_image(spec: ModelServerSpec, settings: Settings) -> str:
    """The worker container's image: the spec's, else the engine's public one, else (builtin)
    the operator's worker image."""
    return spec.image.worker or engine(spec.engine.kind).image or settings.worker_image


def _env_entries(env: dict[str, str]) -> list[Manifest]:
    """A container's env list; empty values are left out, as the API server stores them, so a
    converged Deployment compares equal."""
    return [{"name": k, "value": v} if v else {"name": k} for k, v in env.items()]
