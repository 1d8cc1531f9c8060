"""Every version of a namespace's ModelServers, as `kubectl get -w` shows them, and the Ready
flaps in them (tests/e2e/test_chaos.py)."""

from __future__ import annotations

import subprocess
import threading
from typing import Any

from tests.cluster.kube import Kubectl, watched_objects


class ReadyWatch:
    """`kubectl get modelservers -w -o json` over a namespace, in a thread, started again when
    the watch ends (an API server restart cuts it): every version seen, in order."""

    def __init__(self, kubectl: Kubectl) -> None:
        self.kubectl = kubectl
        self.versions: list[dict[str, Any]] = []
        self.restarts = 0
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        k = self.kubectl
        cmd = [k.binary, f"--kubeconfig={k.kubeconfig}", f"--namespace={k.namespace}"]
        cmd += ["get", "modelservers", "-w", "-o", "json"]
        while not self._stop.is_set():
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            assert self._proc.stdout is not None
            for obj in watched_objects(self._proc.stdout):
                self.versions.append(obj)
            self._proc.wait()
            if not self._stop.is_set():
                self.restarts += 1
                self._stop.wait(0.5)  # back off before watching again

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
        self._thread.join(timeout=15)
        return self.versions


def ready_status(ms: dict[str, Any]) -> str | None:
    """The Ready condition's status, None before the operator wrote one."""
    for c in (ms.get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready":
            return str(c["status"])
    return None


def flaps(versions: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Ready True -> False for the generation the status was already Ready for (no spec change
    caused it): the flaps. Also counted: Ready True -> False as the operator takes up a new
    generation (an edit's rollout; the old pods still serve, the new ones are not Ready yet)."""
    found: list[str] = []
    dips = 0
    ready_at: dict[str, int] = {}
    seen: set[str] = set()
    for ms in versions:
        meta, status = ms["metadata"], ms.get("status") or {}
        if meta["resourceVersion"] in seen:
            continue
        seen.add(meta["resourceVersion"])
        name, observed, ready = meta["name"], status.get("observedGeneration"), ready_status(ms)
        if ready == "True":
            ready_at[name] = observed
        elif ready is not None and name in ready_at:
            if ready_at.pop(name) == observed:
                cond = next(c for c in status["conditions"] if c["type"] == "Ready")
                found.append(f"{name} gen {observed}: {cond.get('reason')}: {cond.get('message')}")
            else:
                dips += 1
    return found, dips
