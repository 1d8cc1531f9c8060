"""GitOps health verdicts on ModelServer objects, from the real checkers: kstatus (the Go library
Flux and kpt use, built by hack/build-kstatus.sh) and the Argo CD health Lua in examples/argocd/
(run with lupa's Lua 5.1, the dialect of Argo CD's gopher-lua)."""

from __future__ import annotations

import functools
import json
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from tests.cluster.kube import ROOT, Kubectl, watched_objects

ARGOCD_LUA = ROOT / "examples" / "argocd" / "health.lua"


@functools.cache
def kstatus_binary() -> str:
    """The kstatus checker, built once per machine (cached in ~/.cache/glowplug/bin)."""
    done = subprocess.run(
        [str(ROOT / "hack" / "build-kstatus.sh")], capture_output=True, text=True, check=True
    )
    return done.stdout.strip().splitlines()[-1]


def kstatus(objects: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """kstatus's verdict per object: {"name", "status" (InProgress, Current, Failed, ...),
    "message"}."""
    done = subprocess.run(
        [kstatus_binary()],
        input=json.dumps(list(objects)),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def argocd_health(obj: Mapping[str, Any]) -> dict[str, str]:
    """What Argo CD shows for `obj` with examples/argocd/health.lua: {"status", "message"}."""
    from lupa import lua51

    lua = lua51.LuaRuntime()
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(ARGOCD_LUA.read_text())
    return {"status": str(result["status"]), "message": str(result["message"] or "")}


def _to_lua(lua: Any, value: Any) -> Any:
    """JSON into Lua tables as Argo CD converts objects: lists 1-indexed."""
    if isinstance(value, Mapping):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


class ObjectWatch:
    """`kubectl get KIND -w -o json` on one object, from before it exists: every version the API
    server stores (each status write), in order, read in a thread."""

    def __init__(self, kubectl: Kubectl, kind: str, name: str) -> None:
        cmd = [kubectl.binary, f"--kubeconfig={kubectl.kubeconfig}"]
        if kubectl.namespace:
            cmd.append(f"--namespace={kubectl.namespace}")
        cmd += ["get", kind, "-w", "-o", "json", "--field-selector", f"metadata.name={name}"]
        self.objects: list[dict[str, Any]] = []
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for obj in watched_objects(self._proc.stdout):
            self.objects.append(obj)

    def stop(self) -> list[dict[str, Any]]:
        """The versions seen, one per resourceVersion."""
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._thread.join(timeout=10)
        seen: dict[str, dict[str, Any]] = {}
        for obj in self.objects:
            seen.setdefault(obj["metadata"]["resourceVersion"], obj)
        return list(seen.values())
