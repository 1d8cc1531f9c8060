"""The operator as the tests run it: a real `glowplug-operator` process against the cluster,
watching only the test's namespace, that a test can kill and start again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.kube import ROOT


class OperatorProcess:
    def __init__(self, kubeconfig: str, namespace: str, log_dir: Path, **settings: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.metrics_port = s.getsockname()[1]
        self.env = {
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "GLOWPLUG_NAMESPACES": namespace,
            "GLOWPLUG_METRICS_PORT": str(self.metrics_port),
            "GLOWPLUG_HEALTH_PORT": "0",
            "PYTHONUNBUFFERED": "1",
            **{f"GLOWPLUG_{k.upper()}": v for k, v in settings.items()},
        }
        self.log_path = log_dir / f"operator-{namespace}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> OperatorProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "glowplug_operator"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        if self._log:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        """The operator's Prometheus exposition text."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def samples(self) -> Samples:
        """The metrics as {(name, labels): value}; look up with any label order."""
        found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                found[sample.name, frozenset(sample.labels.items())] = sample.value
        return Samples(found)


class Samples:
    def __init__(self, found: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> None:
        self.found = found

    def __getitem__(self, key: tuple[str, dict[str, str]]) -> float | None:
        name, labels = key
        return self.found.get((name, frozenset(labels.items())))
