"""Check: an engine starts and answers with the exact command line glowplug renders for it.

Renders a ModelServer's worker container with the operator's own builders (engine, flags,
GPUs), then runs that command and env here as a process, on a model directory that stands in for
the prefetched one: waits for the readiness path, sends one chat completion, and prints the
seconds from start to ready and to the answer. No Kubernetes: this is the check for a machine
with a GPU and the engine installed (vLLM or SGLang in their images or a venv), where the local
cluster cannot run; on CPU it runs the transformers-serve engine with glowplug's own environment.

    uv run python bench/engines_check.py --engine transformers-serve --model DIR
    python bench/engines_check.py --engine vllm --model DIR --gpus 1 [--flag enforce-eager]

Writes the table to bench/results/engines_check.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator" / "src"))

from glowplug_operator.builders import Owner, build_deployment  # noqa: E402
from glowplug_operator.settings import Settings  # noqa: E402
from glowplug_operator.spec import parse_spec  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "engines_check.md"


def rendered(engine: str, model: Path, gpus: int, flags: list[str], port: int) -> dict:
    body = {
        "metadata": {"name": "check", "namespace": "bench", "uid": "u"},
        "spec": {
            "engine": {"kind": engine},
            "model": {"source": "file:///unused"},
            "resources": {"gpus": gpus},
            "serving": {"port": port},
            "startup": {"optimizations": [{"name": f} for f in flags]},
        },
    }
    spec = parse_spec(body)
    settings = Settings()
    deployment = build_deployment(Owner("check", "bench", "u"), spec, settings, flags, "0" * 16)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    # The prefetched directory of the pod is this machine's model directory here.
    pod_dir = next(e["value"] for e in container["env"] if e["name"] == "GLOWPLUG_MODEL_DIR")
    swap = {pod_dir: str(model), settings.cache_mount_path: str(model.parent)}

    def local(text: str) -> str:
        for old, new in swap.items():
            text = text.replace(old, new)
        return text

    env = {e["name"]: local(e.get("value", "")) for e in container["env"]}
    env["HOME"] = os.environ.get("HOME", "/tmp")
    return {
        "argv": [local(a) for a in container["command"] + container["args"]],
        "env": env,
        "ready": container["readinessProbe"]["httpGet"]["path"],
    }


def get(url: str, body: bytes | None = None, timeout: float = 5) -> tuple[int, bytes]:
    request = urllib.request.Request(url, body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", required=True, choices=["vllm", "sglang", "transformers-serve"])
    parser.add_argument("--model", required=True, type=Path, help="a model directory")
    parser.add_argument("--gpus", type=int, default=0)
    parser.add_argument("--flag", action="append", default=[], help="an engine flag, by name")
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    run = rendered(args.engine, args.model.resolve(), args.gpus, args.flag, args.port)
    print("$", " ".join(run["argv"]))
    base = f"http://127.0.0.1:{args.port}"
    log = RESULTS.with_suffix(f".{args.engine}.log")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("w") as out:
        server = subprocess.Popen(
            run["argv"], env={**os.environ, **run["env"]}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        ready = None
        while time.monotonic() - started < args.timeout and server.poll() is None:
            if get(base + run["ready"])[0] == 200:
                ready = time.monotonic() - started
                break
            time.sleep(0.5)
        if ready is None:
            print(log.read_text()[-3000:])
            sys.exit(f"{args.engine} was not ready (exit code {server.poll()}); log: {log}")
        chat = json.dumps(
            {
                "model": "check",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
                "temperature": 0,
            }
        ).encode()
        status, answer = get(base + "/v1/chat/completions", chat, timeout=300)
        answered = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(30)
    table = (
        "| engine | gpus | flags | start -> ready s | start -> first answer s | HTTP |\n"
        "|---|---|---|---|---|---|\n"
        f"| {args.engine} | {args.gpus} | {','.join(args.flag) or '-'} | {ready:.1f} | "
        f"{answered:.1f} | {status} |\n"
    )
    print(table)
    print(answer.decode(errors="replace")[:400])
    with RESULTS.open("a") as out:
        out.write(table + "\n")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
