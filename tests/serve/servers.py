"""Run the real `glowplug-worker serve` in a subprocess on 127.0.0.1 and talk to it over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

START_DEADLINE = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(
        self,
        model: Path,
        workdir: Path,
        *,
        flags: str = "",
        task: str = "generate",
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.report_path = workdir / "termination.json"
        self.log_path = workdir / "server.log"
        self.ready_statuses: list[int] = []
        cmd = [
            sys.executable,
            "-m",
            "glowplug_worker.cli",
            "serve",
            "--model",
            str(model),
            "--task",
            task,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            *(extra or []),
        ]
        full_env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "GLOWPLUG_OPTIMIZATIONS": flags,
            "GLOWPLUG_TERMINATION_PATH": str(self.report_path),
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        }
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=60.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, deadline: float = START_DEADLINE) -> Server:
        """Poll /ready until 200, recording every status seen; fail if the process exits."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = self.client.get("/ready", timeout=2.0)
                self.ready_statuses.append(r.status_code)
                if r.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {deadline} s:\n{self.log()}")

    def wait_exit(self, deadline: float = START_DEADLINE) -> int:
        try:
            return self.proc.wait(deadline)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"server still running after {deadline} s:\n{self.log()}") from exc

    def report(self) -> dict[str, Any]:
        return dict(json.loads(self.report_path.read_text()))

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.client.close()
        self._log.close()

    # -- helpers ----------------------------------------------------------------------------
    def complete(self, prompt: str, **kw: Any) -> dict[str, Any]:
        r = self.client.post("/v1/completions", json={"prompt": prompt, "temperature": 0, **kw})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any] | str]:
        """Yield each SSE event's JSON (or the string "[DONE]")."""
        with self.client.stream("POST", path, json={**body, "stream": True}) as r:
            assert r.status_code == 200, r.read().decode()
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                yield "[DONE]" if data == "[DONE]" else json.loads(data)


@contextmanager
def all_running(servers: dict[str, Server]) -> Iterator[dict[str, Server]]:
    """Wait until every server is ready; stop them all on the way out (their shutdowns
    overlap: SIGTERM to all first)."""
    try:
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.terminate()
        for server in servers.values():
            server.stop()
