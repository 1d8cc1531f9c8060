"""The operator distribution stays small: no torch in its locked dependencies or its imports."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "nvidia-", "triton")


def test_operator_lock_has_no_ml_stack() -> None:
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "uv",
            "export",
            "--frozen",
            "--no-dev",
            "--package",
            "glowplug-operator",
            "--no-emit-workspace",
            "--no-hashes",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = [line.split("==")[0] for line in exported.splitlines() if "==" in line]
    assert "kopf" in names
    assert not [n for n in names if n.startswith(HEAVY)], names


def test_operator_imports_no_torch() -> None:
    code = (
        "import sys, glowplug_operator.controller.registration; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_kubectl_plugin_is_installed_with_the_operator() -> None:
    """kubectl finds `kubectl glowplug` as the executable kubectl-glowplug on PATH."""
    from importlib.metadata import distribution

    scripts = {e.name: e.value for e in distribution("glowplug-operator").entry_points}
    assert scripts["kubectl-glowplug"] == "glowplug_operator.kubectl.cli:main"
    shown = subprocess.run(
        [sys.executable, "-m", "glowplug_operator.kubectl.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "{status,retry,explain-rollback}" in shown
