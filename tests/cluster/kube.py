"""A small kubectl-based client for the tests: what a user types, with JSON back."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
LOCAL_KUBECONFIG = ROOT / ".cluster" / "kubeconfig"


class KubectlError(RuntimeError):
    def __init__(self, args: Iterable[str], returncode: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} failed ({returncode}): {stderr.strip()}")
        self.stderr = stderr
        self.returncode = returncode


@dataclass(frozen=True)
class Kubectl:
    kubeconfig: str
    namespace: str | None = None
    binary: str = "kubectl"

    def in_namespace(self, namespace: str) -> Kubectl:
        return Kubectl(self.kubeconfig, namespace, self.binary)

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> str:
        cmd = [self.binary, f"--kubeconfig={self.kubeconfig}"]
        if self.namespace:
            cmd.append(f"--namespace={self.namespace}")
        proc = subprocess.run(
            [*cmd, *args], input=stdin, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise KubectlError(args, proc.returncode, proc.stderr)
        return proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json"))

    def get(self, kind: str, name: str | None = None, *, selector: str | None = None) -> Any:
        args = ["get", kind] + ([name] if name else [])
        if selector:
            args += ["-l", selector]
        return self.json(*args)

    def exists(self, kind: str, name: str) -> bool:
        out = self.run("get", kind, name, "--ignore-not-found", "-o", "name")
        return bool(out.strip())

    def apply(self, *objects: dict[str, Any] | str, server_side: bool = False) -> str:
        docs = [o if isinstance(o, str) else yaml.safe_dump(o) for o in objects]
        args = ["apply", "-f", "-"] + (["--server-side"] if server_side else [])
        return self.run(*args, stdin="\n---\n".join(docs))

    def try_apply(self, manifest: str) -> tuple[bool, str]:
        """Apply and return (accepted, output or error), for checking refusals."""
        cmd = [self.binary, f"--kubeconfig={self.kubeconfig}", "apply", "-f", "-"]
        if self.namespace:
            cmd.append(f"--namespace={self.namespace}")
        proc = subprocess.run(cmd, input=manifest, capture_output=True, text=True, timeout=60)
        return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def make_namespace(kubectl: Kubectl, prefix: str) -> str:
    """A fresh namespace PREFIX-xxxxxxxx, labelled as a test's and PodSecurity `restricted`."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "glowplug.dev/test": "true",
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )
    return name


def watched_objects(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The objects `kubectl get -w -o json` prints, one after another (each spans many lines)."""
    decoder, buffer = json.JSONDecoder(), ""
    for line in lines:
        buffer += line
        try:
            obj, end = decoder.raw_decode(buffer.strip())
        except json.JSONDecodeError:
            continue
        buffer = buffer.strip()[end:]
        yield obj


def kubeconfig_path() -> str:
    return os.environ.get("KUBECONFIG") or str(LOCAL_KUBECONFIG)


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float = 60, interval: float = 0.25
) -> T:
    """Poll probe until it returns a truthy value; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
