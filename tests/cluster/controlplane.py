"""Restart one component of the local control plane (hack/cluster.sh) in place: the same binary
with the same flags, read from the running process, its log appended to, its pid file updated."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.cluster.kube import LOCAL_KUBECONFIG, wait_until

CLUSTER_DIR = Path(os.environ.get("GLOWPLUG_CLUSTER_DIR") or LOCAL_KUBECONFIG.parent)


def _pid(name: str, cluster_dir: Path) -> int:
    return int((cluster_dir / "pids" / name).read_text().strip())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # An exited child of this process stays a zombie until reaped; count it as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def restart(
    name: str,
    *,
    sig: int = signal.SIGKILL,
    down_seconds: float = 0.0,
    cluster_dir: Path = CLUSTER_DIR,
) -> float:
    """Stop component `name` (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
    kwok) with `sig`, keep it down for `down_seconds`, start it again exactly as hack/cluster.sh
    did. Returns the monotonic time it was started again."""
    pid = _pid(name, cluster_dir)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    if not argv:
        raise RuntimeError(f"{name} (pid {pid}) is not running")
    os.killpg(pid, sig)  # hack/cluster.sh starts each one with setsid: pid == process group
    wait_until(f"{name} (pid {pid}) to exit", lambda: not _alive(pid), timeout=30, interval=0.05)
    if down_seconds:
        time.sleep(down_seconds)  # the outage itself, not a wait for a condition
    with (cluster_dir / "logs" / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (cluster_dir / "pids" / name).write_text(f"{proc.pid}\n")
    return time.monotonic()


def is_local(kubeconfig: str) -> bool:
    """True when `kubeconfig` is this cluster directory's (so its processes can be restarted)."""
    return Path(kubeconfig).resolve() == (CLUSTER_DIR / "kubeconfig").resolve()
