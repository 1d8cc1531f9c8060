"""Benchmark: serving throughput and time to first token of glowplug's built-in server beside
`transformers serve` with its continuous batching on, on the same model, same machine, same run.

    uv run python bench/serving_throughput.py                  # tiny and small
    uv run python bench/serving_throughput.py --presets tiny --rounds 2

(The worker's `serve` extra includes transformers' `serving` extra, which `transformers serve`
needs.)

Both servers start once per preset and stay up; then, for several rounds, each concurrency
(1, 4, 16 clients) runs against one server and then the other (the order alternates between
rounds), so a busy neighbour on a shared machine slows both alike. Each client sends
`--requests` streamed chat completions one after another (temperature 0, `--max-tokens`); a
request's time to first token is from sending to the first chunk with text; throughput is every
generated token (the usage chunk) over the wall time of the whole concurrency level. The table
shows the medians over the rounds.

Presets (random-weight Llama-shaped models with the tiny tokenizer, float32): `tiny` is the test
model (hidden 64, 2 layers); `small` hidden 384, 4 layers, 6 heads (2 KV heads), MLP 1024.
glowplug runs with `native-model` (its continuous-batching path) and `--max-concurrency 16`;
`transformers serve` with `--continuous-batching`. Same thread count for both (`--threads`).

Targets: throughput >= 1.0x transformers serve at concurrency 1 and >= 1.5x at 16; TTFT p50 <=
its own. Prints a table and writes it to bench/results/serving_throughput.md (raw runs: .json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
START_DEADLINE = 600.0
PROMPTS = [
    "Tell me about glow plugs.",
    "Why does a diesel engine need pre-heating in the cold?",
    "Write a short poem about a fox.",
    "List five numbers and their squares.",
    "What does an operator do when a flag breaks a start?",
    "Summarise: the weights load from the page cache in a second or two.",
    "Translate 'hello, world' into French.",
    "How are you today?",
]
SMALL = dict(
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=6,
    num_key_value_heads=2,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_model(out: Path, preset: str) -> Path:
    from glowplug_worker.devtools.tiny_model import make_tiny_model

    make_tiny_model(out)
    if preset == "tiny":
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    raw = json.loads((out / "config.json").read_text())
    raw.update(SMALL, head_dim=SMALL["hidden_size"] // SMALL["num_attention_heads"])
    raw.pop("architectures", None)
    raw.pop("model_type", None)
    cfg = LlamaConfig(**{k: v for k, v in raw.items() if k != "dtype"}, dtype="float32")
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # a spread like the tiny model's: varied greedy text
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.25)
    for f in out.glob("*.safetensors*"):
        f.unlink()
    model.save_pretrained(out)
    return out


@dataclass
class Server:
    name: str
    url: str
    model: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def spawn(name: str, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_answering(server: Server) -> None:
    """Until a one-token chat completion answers 200 (loads the model if it loads lazily)."""
    end = time.monotonic() + START_DEADLINE
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "temperature": 0,
    }
    while time.monotonic() < end:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.name} exited:\n{server.log.read_text()[-3000:]}")
        try:
            r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
            if r.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{server.name} not answering after {START_DEADLINE} s")


@contextmanager
def servers(model: Path, workdir: Path, threads: int, flags: str) -> Iterator[list[Server]]:
    env = {
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
    }
    gp, ts = free_port(), free_port()
    glowplug_cmd = [
        sys.executable, "-m", "glowplug_worker.cli", "serve", "--model", str(model),
        "--device", "cpu", "--host", "127.0.0.1", "--port", str(gp),
        "--max-concurrency", "16", "--max-queue", "64", "--request-timeout", "600",
    ]  # fmt: skip
    tserve_cmd = [
        str(Path(sys.executable).parent / "transformers"), "serve", str(model),
        "--continuous-batching", "--device", "cpu", "--host", "127.0.0.1", "--port", str(ts),
    ]  # fmt: skip
    started = [
        Server(
            "glowplug",
            f"http://127.0.0.1:{gp}",
            model.name,
            spawn("glowplug", glowplug_cmd, {**env, "GLOWPLUG_OPTIMIZATIONS": flags},
                  workdir / "glowplug.log"),
            workdir / "glowplug.log",
        ),
        Server(
            "transformers serve",
            f"http://127.0.0.1:{ts}",
            str(model),
            spawn("transformers", tserve_cmd, env, workdir / "transformers.log"),
            workdir / "transformers.log",
        ),
    ]  # fmt: skip
    try:
        for s in started:
            wait_answering(s)
        yield started
    finally:
        for s in started:
            s.stop()


@dataclass
class Level:
    """One concurrency level against one server, one round."""

    tokens: int = 0
    wall: float = 0.0
    ttft: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0


def one_request(
    client: httpx.Client, server: Server, prompt: str, max_tokens: int
) -> tuple[float | None, int]:
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.monotonic()
    first, chunks, usage = None, 0, None
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"{server.name}: {r.status_code} {r.text[:200]}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]["completion_tokens"]
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if first is None:
                        first = time.monotonic() - sent
    return first, usage if usage is not None else chunks


def run_level(server: Server, clients: int, requests: int, max_tokens: int) -> Level:
    level = Level()
    lock = threading.Lock()

    def client_loop(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            for j in range(requests):
                prompt = PROMPTS[(k * requests + j) % len(PROMPTS)]
                try:
                    ttft, tokens = one_request(client, server, prompt, max_tokens)
                except Exception as exc:  # counted and shown; the run goes on
                    print(f"  {server.name}: {exc}", file=sys.stderr)
                    with lock:
                        level.errors += 1
                    continue
                with lock:
                    level.tokens += tokens
                    if ttft is not None:
                        level.ttft.append(ttft)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    begin = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    level.wall = time.monotonic() - begin
    return level


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", default="tiny,small")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=2, help="requests per client per level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of both servers")
    p.add_argument("--flags", default="native-model", help="GLOWPLUG_OPTIMIZATIONS of glowplug")
    p.add_argument("--out", type=Path, default=HERE / "results" / "serving_throughput.md")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    raw: list[dict[str, Any]] = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="glowplug-serving-") as tmp:
        for preset in args.presets.split(","):
            model = build_model(Path(tmp) / f"model-{preset}", preset)
            work = Path(tmp) / f"run-{preset}"
            work.mkdir()
            print(f"[{preset}] starting both servers ...", flush=True)
            with servers(model, work, args.threads, args.flags) as both:
                results: dict[tuple[str, int], list[Level]] = {}
                for rnd in range(args.rounds):
                    order = both if rnd % 2 == 0 else both[::-1]
                    for c in levels:
                        for server in order:
                            lv = run_level(server, c, args.requests, args.max_tokens)
                            results.setdefault((server.name, c), []).append(lv)
                            raw.append(
                                {"preset": preset, "round": rnd, "server": server.name,
                                 "concurrency": c, "tokens": lv.tokens, "wall": lv.wall,
                                 "ttft": lv.ttft, "errors": lv.errors}
                            )  # fmt: skip
                            print(
                                f"[{preset}] round {rnd + 1} c={c:<2} {server.name:<18} "
                                f"{lv.tokens_per_second:7.1f} tok/s  ttft p50 "
                                f"{percentile(lv.ttft, 0.5) * 1000:7.0f} ms  errors {lv.errors}",
                                flush=True,
                            )
            for c in levels:
                summary = {}
                for name in ("glowplug", "transformers serve"):
                    runs = results[(name, c)]
                    summary[name] = (
                        statistics.median(r.tokens_per_second for r in runs),
                        statistics.median(percentile(r.ttft, 0.5) for r in runs),
                        statistics.median(percentile(r.ttft, 0.95) for r in runs),
                        sum(r.errors for r in runs),
                    )
                base = summary["transformers serve"][0]
                for name, (tps, p50, p95, errors) in summary.items():
                    rows.append((preset, c, name, tps, tps / base if base else float("nan"),
                                 p50, p95, errors))  # fmt: skip
    header = (
        "| preset | clients | server | tokens/s | x transformers | TTFT p50 (ms) | TTFT p95 (ms) "
        "| errors |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for preset, c, name, tps, ratio, p50, p95, errors in rows:
        bold = "**" if name == "glowplug" else ""
        lines.append(
            f"| {preset} | {c} | {name} | {tps:.1f} | {bold}{ratio:.2f}{bold} | {p50 * 1000:.0f} "
            f"| {p95 * 1000:.0f} | {errors} |"
        )
    table = "\n".join(lines)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}"
    note = (
        f"Medians of {args.rounds} rounds; {args.requests} streamed chat requests per client per "
        f"level, max_tokens {args.max_tokens}, temperature 0; both servers OMP_NUM_THREADS="
        f"{args.threads}; glowplug flags: {args.flags or 'none'}; machine: {machine}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
    )
    print("\n" + table + "\n\n" + note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Serving throughput\n\n{table}\n\n{note}\n")
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
