"""The `import` phase: torch and transformers, optionally with `background-import` (torch in a
thread, joined and checked before transformers) and `slim-imports` (optional heavy modules kept
out of the import graph).

Why the join comes first: vLLM #40331 imported transformers in a background thread while the
main thread went on and imported it too; the main thread could see a half-initialised module and
startup broke intermittently. Here only `import torch` runs in the background, nothing else
imports torch or transformers until `BackgroundImport.join()` returns, and `join()` fails closed
(a `FlagFailure` blaming `background-import`) if the thread did not finish or left any module
half-initialised.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from glowplug_worker.serve.startup.flags import BACKGROUND_IMPORT, SLIM_IMPORTS
from glowplug_worker.serve.startup.state import FlagFailure

log = logging.getLogger("glowplug.serve")

# Optional packages that transformers (and accelerate) probe with `importlib.util.find_spec` and
# import only behind an availability check, for features a served model does not use:
#   sklearn: assisted-generation heuristics (transformers.generation.candidate_generator);
#   scipy:   Hungarian matching in the DETR-family training losses (transformers.loss.*), pulled
#            in by modeling_utils for every model (~1 s of import on a busy CPU);
#   boto3:   accelerate's SageMaker config helpers (accelerate.commands.config.sagemaker).
# Blocking a package: `sys.modules[name] = None`, so `find_spec` answers "not installed" and an
# import raises ModuleNotFoundError; the libraries then treat the feature as unavailable. Only
# names that are guarded like this belong here (see docs/worker.md).
SLIM_BLOCKLIST: tuple[str, ...] = ("sklearn", "scipy", "boto3")
# Attributes that must exist on a fully initialised torch.
TORCH_ATTRIBUTES = ("Tensor", "nn", "float32", "empty", "inference_mode", "cuda", "__version__")
JOIN_TIMEOUT_SECONDS = 300.0


def bytecode_cached(package: str = "transformers") -> bool | None:
    """Whether `package` has compiled bytecode where this interpreter looks for it (honouring
    PYTHONPYCACHEPREFIX), checked without importing it; None when it is not installed. Without
    it, every start compiles the sources again: about 2.5x the import time for torch and
    transformers (an image installed without bytecode, run by a user who cannot write
    __pycache__)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.cached:
        return None
    return os.path.exists(spec.cached)


def apply_slim_imports(blocklist: tuple[str, ...] = SLIM_BLOCKLIST) -> list[str]:
    """Block the optional modules not imported yet; returns the names blocked."""
    blocked = []
    for name in blocklist:
        if name in sys.modules:
            log.info("%s: %s is already imported, leaving it", SLIM_IMPORTS, name)
            continue
        sys.modules[name] = None  # type: ignore[assignment]
        blocked.append(name)
    return blocked


def half_initialised(prefixes: tuple[str, ...]) -> list[str]:
    """Modules under `prefixes` whose import has started but not finished (Python marks them
    with `__spec__._initializing` until their body has run)."""
    bad = []
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(prefixes):
            continue
        spec = getattr(module, "__spec__", None)
        if spec is not None and getattr(spec, "_initializing", False):
            bad.append(name)
    return sorted(bad)


def check_initialised(root: str, attributes: tuple[str, ...]) -> ModuleType:
    """Fail closed unless `root` is fully imported: in `sys.modules`, no module under it still
    initialising, and the expected attributes present."""
    module = sys.modules.get(root)
    if module is None:
        raise FlagFailure(BACKGROUND_IMPORT, f"{root} is not in sys.modules after the join")
    busy = half_initialised((root, root + "."))
    if busy:
        raise FlagFailure(
            BACKGROUND_IMPORT, f"modules still initialising after the join: {', '.join(busy[:10])}"
        )
    missing = [a for a in attributes if not hasattr(module, a)]
    if missing:
        raise FlagFailure(
            BACKGROUND_IMPORT,
            f"{root} is missing {', '.join(missing)} after the join (partially initialised)",
        )
    return module


class BackgroundImport:
    """`import torch` in a daemon thread, started as early as possible."""

    def __init__(
        self, module: str = "torch", attributes: tuple[str, ...] = TORCH_ATTRIBUTES
    ) -> None:
        self.module = module
        self.attributes = attributes
        self.error: BaseException | None = None
        self.seconds: float | None = None
        self._thread = threading.Thread(target=self._run, name="background-import", daemon=True)

    def start(self) -> BackgroundImport:
        if "transformers" in sys.modules:
            raise FlagFailure(
                BACKGROUND_IMPORT, "transformers was imported before the background import started"
            )
        self._thread.start()
        return self

    def _run(self) -> None:
        begin = time.perf_counter()
        try:
            importlib.import_module(self.module)
        except BaseException as exc:  # reported by join() in the main thread
            self.error = exc
        self.seconds = time.perf_counter() - begin

    def join(self, timeout: float = JOIN_TIMEOUT_SECONDS) -> ModuleType:
        """Wait for the thread, then check that the import is complete. Must be called before
        anything imports transformers."""
        if "transformers" in sys.modules:
            raise FlagFailure(
                BACKGROUND_IMPORT,
                "transformers was imported before the background torch import was "
                "joined (the unsafe form of vLLM #40331)",
            )
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise FlagFailure(
                BACKGROUND_IMPORT,
                f"background import of {self.module} still running after {timeout:.0f} s",
            )
        if self.error is not None:
            # The import itself is broken (it would be without the flag too): re-raise as is.
            raise self.error
        return check_initialised(self.module, self.attributes)


def model_classes(model_dir: Path, task: str) -> list[str]:
    """The model class names for config.json (`architectures`, else the auto mapping of its
    `model_type`), or [] when it cannot be read (the config phase reports that properly).

    Importing the class here keeps the modeling imports (most of transformers' import cost) in
    the import phase, where they belong, instead of inside `from_pretrained`."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
        names = list(config.get("architectures") or [])
        model_type = config.get("model_type")
    except (OSError, ValueError, AttributeError, TypeError):
        return []
    if not names and isinstance(model_type, str):
        from transformers.models.auto import modeling_auto

        mapping = (
            modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            if task == "generate"
            else modeling_auto.MODEL_MAPPING_NAMES
        )
        name = mapping.get(model_type)
        names = [name] if isinstance(name, str) else []
    return [n for n in names if isinstance(n, str) and n.isidentifier()]


@dataclass(frozen=True)
class MlStack:
    """What the import phase imported for the later phases. Library objects are `Any`: torch
    and transformers are imported here, never at module import."""

    torch: Any
    config_loader: Any  # has `from_pretrained(model_dir, local_files_only=...)`
    tokenizer_loader: Any  # has `from_pretrained(model_dir, local_files_only=...)`
    model_loader: Any = None  # transformers' Auto class for the task; None for `native`
    # The model's own class, imported here so that the load phase times weights, not imports.
    model_class: Any = None
    # glowplug's own model code when `native-model` serves the model (transformers is not
    # imported at all then).
    native: ModuleType | None = None


def import_stack(task: str, model_dir: Path) -> MlStack:
    """Import torch, the transformers pieces `task` needs and the model's own class module."""
    import torch
    import transformers

    model_class = None
    for arch in model_classes(model_dir, task)[:1]:
        model_class = getattr(transformers, arch, None)
    return MlStack(
        torch=torch,
        config_loader=transformers.AutoConfig,
        tokenizer_loader=transformers.AutoTokenizer,
        model_loader=(
            transformers.AutoModelForCausalLM if task == "generate" else transformers.AutoModel
        ),
        model_class=model_class,
    )


def import_native_stack() -> MlStack:
    """`native-model`: torch and glowplug's own Llama code; transformers is never imported."""
    import torch

    from glowplug_worker.serve.native import llama

    return MlStack(
        torch=torch,
        config_loader=llama.NativeConfig,
        tokenizer_loader=llama.NativeTokenizerLoader,
        native=llama,
    )
