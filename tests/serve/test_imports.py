"""The import-phase flags in clean interpreters: background-import fails closed, slim-imports keeps
scikit-learn out without breaking transformers, and nothing heavy is imported before the phase."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from glowplug_worker.serve.startup.imports import check_initialised
from glowplug_worker.serve.startup.state import FlagFailure


def run_python(code: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env_path = [str(path)] if path else []
    script = f"import sys; sys.path[:0] = {env_path!r}\n" + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )


def write_module(root: Path, name: str, body: str) -> None:
    (root / f"{name}.py").write_text(textwrap.dedent(body))


def test_serve_modules_import_nothing_heavy() -> None:
    proc = run_python("""
        import glowplug_worker.serve.cli, glowplug_worker.serve.server
        import glowplug_worker.serve.http.app, glowplug_worker.serve.http.server
        import glowplug_worker.serve.engine, glowplug_worker.serve.startup.fast_load
        import glowplug_worker.serve.startup.loading, glowplug_worker.serve.startup.weight_prefetch
        import glowplug_worker.serve.startup.imports, glowplug_worker.devtools.tiny_model
        import glowplug_worker.serve.native.support, glowplug_worker.serve.native.tokenizer
        import sys, threading
        heavy = [m for m in ("torch", "transformers", "safetensors") if m in sys.modules]
        assert not heavy, heavy
        assert threading.active_count() == 1
    """)
    assert proc.returncode == 0, proc.stderr


def test_background_import_joins_a_finished_module(tmp_path: Path) -> None:
    write_module(tmp_path, "slowmod", "import time; time.sleep(0.2); VALUE = 1\n")
    proc = run_python(
        """
        from glowplug_worker.serve.startup.imports import BackgroundImport
        bg = BackgroundImport("slowmod", attributes=("VALUE",)).start()
        assert bg.join().VALUE == 1 and bg.seconds >= 0.2
    """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr


def test_background_import_fails_closed_when_still_running(tmp_path: Path) -> None:
    write_module(tmp_path, "stuckmod", "import time; time.sleep(5)\n")
    proc = run_python(
        """
        from glowplug_worker.serve.startup.imports import BackgroundImport
        from glowplug_worker.serve.startup.state import FlagFailure
        bg = BackgroundImport("stuckmod", attributes=()).start()
        try:
            bg.join(timeout=0.2)
        except FlagFailure as exc:
            print(exc.flag, exc)
        import os; os._exit(0)
    """,
        tmp_path,
    )
    assert "background-import background import of stuckmod still running" in proc.stdout


def test_background_import_refuses_after_transformers_was_imported(tmp_path: Path) -> None:
    write_module(tmp_path, "fine", "X = 1\n")
    proc = run_python(
        """
        import sys, types
        from glowplug_worker.serve.startup.imports import BackgroundImport
        from glowplug_worker.serve.startup.state import FlagFailure
        bg = BackgroundImport("fine", attributes=()).start()
        sys.modules["transformers"] = types.ModuleType("transformers")  # the unsafe ordering
        try:
            bg.join()
        except FlagFailure as exc:
            print(exc.flag, exc)
    """,
        tmp_path,
    )
    assert "background-import transformers was imported before" in proc.stdout, proc.stderr


def test_import_errors_in_the_thread_surface_unchanged(tmp_path: Path) -> None:
    write_module(tmp_path, "broken", "raise ImportError('libcuda.so.1: cannot open')\n")
    proc = run_python(
        """
        from glowplug_worker.serve.startup.imports import BackgroundImport
        try:
            BackgroundImport("broken", attributes=()).start().join()
        except ImportError as exc:
            print("ImportError", exc)
    """,
        tmp_path,
    )
    assert "ImportError libcuda.so.1: cannot open" in proc.stdout, proc.stderr


def test_half_initialised_module_is_detected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module that checks itself while its own body is still running: really half-initialised.
    write_module(
        tmp_path,
        "halfmod",
        """
        from glowplug_worker.serve.startup.imports import check_initialised
        from glowplug_worker.serve.startup.state import FlagFailure
        try:
            check_initialised("halfmod", ())
        except FlagFailure as exc:
            RESULT = str(exc)
        else:
            RESULT = "passed"
    """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import halfmod  # type: ignore[import-not-found]

    assert halfmod.RESULT == "modules still initialising after the join: halfmod"
    assert check_initialised("halfmod", ("RESULT",)) is halfmod  # finished now
    with pytest.raises(FlagFailure, match="missing NOPE"):
        check_initialised("halfmod", ("NOPE",))


def test_slim_imports_keeps_optional_packages_out() -> None:
    # That transformers still loads and serves the model with them blocked is checked by the
    # slim-imports server in test_flags_outputs.py.
    proc = run_python("""
        from glowplug_worker.serve.startup.imports import apply_slim_imports
        blocked = apply_slim_imports()
        assert blocked == ["sklearn", "scipy", "boto3"], blocked
        import importlib.util, sys
        assert importlib.util.find_spec("scipy") is None
        try:
            import sklearn
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("sklearn imported")
        from transformers.utils import is_scipy_available, is_sklearn_available
        assert not is_sklearn_available() and not is_scipy_available()
        assert "torch" not in sys.modules
    """)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.worker
def test_import_phase_resolves_the_model_class_without_architectures(
    tmp_path: Path, tiny_model: Path
) -> None:
    import json
    import shutil

    from glowplug_worker.serve.startup.imports import model_classes

    model = Path(shutil.copytree(tiny_model, tmp_path / "m"))
    config = json.loads((model / "config.json").read_text())
    del config["architectures"]
    (model / "config.json").write_text(json.dumps(config))
    assert model_classes(model, "generate") == ["LlamaForCausalLM"]
    assert model_classes(model, "embed") == ["LlamaModel"]
    assert model_classes(tmp_path / "missing", "generate") == []


def test_bytecode_cached_tells_whether_a_start_compiles_sources(tmp_path: Path) -> None:
    """An image without .pyc files (or one whose user cannot write __pycache__) compiles torch and
    transformers on every start; the worker reports it without importing anything."""
    package = tmp_path / "src" / "glowplug_probe_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    env = {
        **os.environ,
        "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "src"), *sys.path]),
    }
    probe = (
        "import sys; from glowplug_worker.serve.startup.imports import bytecode_cached; "
        "print(bytecode_cached('glowplug_probe_pkg'), bytecode_cached('no_such_package_here'), "
        "'glowplug_probe_pkg' in sys.modules)"
    )

    def ask() -> str:
        proc = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert ask() == "False None False"
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(tmp_path / "src")], env=env, check=True
    )
    assert ask() == "True None False"
