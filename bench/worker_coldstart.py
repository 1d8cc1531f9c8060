"""Benchmark: cold start of `glowplug-worker serve` against a naive transformers start, in one run.

Naive baseline (a fresh interpreter): `import torch; from transformers import ...`, tokenizer,
`from_pretrained(dtype=..., device_map=<device>)` (or `.to(device)` without accelerate), one
generated token. Against it: `glowplug-worker serve` to the first 200 on /ready, with no flags,
each flag alone and all flags. Each configuration runs with the page cache warm and cold.
Wall time is measured by this script from process spawn, for both sides.

    uv run python bench/worker_coldstart.py                 # CUDA when available, else CPU
    uv run python bench/worker_coldstart.py --device cpu --preset small --runs 1

Presets: `7b` is the 7.2 GB bf16 Llama-shaped checkpoint of ../shared/bench/gpu_coldstart_probe.py
(hidden 3072, 28 layers, vocab 128256, 3 shards; random weights; default on CUDA); `small`
(~0.2 GB, default on CPU) and `tiny` for quick checks. Tokenizer: the tiny model's (ids < 384).

Cold cache: `drop_caches` (root; evicts everything, site-packages included, as in the H100
baselines) or `fadvise` (POSIX_FADV_DONTNEED on the weight files only: the polite choice on a
shared machine; imports stay warm). Default: drop_caches on CUDA when root, else fadvise.

Targets (GPU): time to ready <= 0.5x naive in the same run, warm and cold; load >= 10 GB/s.
Prints a table and writes it to bench/results/worker_coldstart_<device>.md (every run in .json).
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
import time
from pathlib import Path
from typing import Any

import httpx
from glowplug_worker.serve.startup.flags import KNOWN_FLAGS

HERE = Path(__file__).resolve().parent
FLAGS = list(KNOWN_FLAGS)
CONFIGS = ["naive", "none", *FLAGS, "all"]
PRESETS: dict[str, dict[str, Any]] = {
    "7b": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        vocab_size=128256,
        shard_bytes=2 << 30,
    ),
    "small": dict(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=32000,
        shard_bytes=64 << 20,
    ),
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=4096,
        shard_bytes=1 << 20,
    ),
}

NAIVE = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
t1 = time.perf_counter()
d, device = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(d)
t2 = time.perf_counter()
try:
    import accelerate  # noqa: F401
    m = AutoModelForCausalLM.from_pretrained(d, dtype="auto", device_map=device)
except ImportError:
    m = AutoModelForCausalLM.from_pretrained(d, dtype="auto").to(device)
if device.startswith("cuda"):
    torch.cuda.synchronize()
t3 = time.perf_counter()
ids = torch.tensor([tok("warmup")["input_ids"]], device=device)
m.generate(ids, max_new_tokens=1, do_sample=False)
if device.startswith("cuda"):
    torch.cuda.synchronize()
t4 = time.perf_counter()
print("RESULT " + json.dumps({"import": t1 - t0, "config": t2 - t1, "load": t3 - t2,
                              "warmup": t4 - t3}), flush=True)
"""


def build_checkpoint(out: Path, preset: str, device: str) -> Path:
    """Random-weight Llama-shaped checkpoint (bf16) plus the tiny tokenizer; reused if there."""
    spec = dict(PRESETS[preset])
    marker = out / ".glowplug-bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return out
    import torch
    from glowplug_worker.devtools.tiny_model import write_tokenizer
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    out.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(out)
    shard_bytes = spec.pop("shard_bytes")
    cfg = LlamaConfig(
        **spec,
        max_position_embeddings=4096,
        dtype="bfloat16",
        tie_word_embeddings=False,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(out)
    with torch.device("meta"):
        shapes = {
            k: v.shape
            for k, v in AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
            .state_dict()
            .items()
        }
    gen_device = "cuda" if device.startswith("cuda") else "cpu"
    g = torch.Generator(device=gen_device).manual_seed(0)
    shard: dict[str, Any] = {}
    size, index, weight_map = 0, 0, {}

    def flush() -> None:
        nonlocal shard, size, index
        if not shard:
            return
        index += 1
        name = f"model-{index:05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        shard, size = {}, 0

    for name, shape in shapes.items():
        t = torch.randn(shape, device=gen_device, dtype=torch.bfloat16, generator=g) * 0.02
        shard[name] = t.cpu()
        size += t.numel() * 2
        if size > shard_bytes:
            flush()
    flush()
    total = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    marker.write_text(json.dumps(PRESETS[preset]))
    return out


def prime_imports() -> bool | None:
    """Import the stack once before measuring, so the first configuration does not pay alone
    for compiling bytecode (where it can be written) or reading site-packages; returns whether
    transformers has compiled bytecode now (see docs/worker.md: without it, every start
    compiles)."""
    from glowplug_worker.serve.startup.imports import bytecode_cached

    subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch, transformers; transformers.AutoModelForCausalLM; "
            "transformers.AutoTokenizer; transformers.LlamaForCausalLM",
        ],
        env=env_for(),
        check=True,
        capture_output=True,
    )
    return bytecode_cached()


def make_cold(model: Path, method: str) -> None:
    if method == "drop_caches":
        subprocess.run(["sync"], check=False)
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            return
        except OSError as exc:  # not privileged (a container): evict the weights at least
            print(f"  drop_caches failed ({exc}); using fadvise on the weights", flush=True)
    if method in ("fadvise", "drop_caches"):
        for p in model.glob("*.safetensors"):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def make_warm(model: Path) -> None:
    for p in sorted(model.glob("*.safetensors")):
        with open(p, "rb") as fh:
            while fh.read(64 << 20):
                pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("GLOWPLUG_OPTIMIZATIONS", None)
    return {**env, **(extra or {})}


def run_naive(model: Path, device: str) -> dict[str, Any]:
    """Wall time to the RESULT line (the first token is done), not to interpreter exit."""
    with tempfile.TemporaryFile(mode="w+") as log:
        begin = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", NAIVE, str(model), device],
            env=env_for(),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert proc.stdout is not None
        wall, result = None, None
        for line in proc.stdout:
            if line.startswith("RESULT "):
                wall = time.perf_counter() - begin
                result = json.loads(line[7:])
                break
        proc.communicate(timeout=900)
        if wall is None or result is None:
            log.seek(0)
            return {"error": log.read()[-600:]}
    return {"wall": wall, "phases": result, "gbps": None}


def run_worker(model: Path, device: str, flags: str) -> dict[str, Any]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "glowplug_worker.cli",
        "serve",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        device,
        "--optimizations",
        flags,
    ]
    # The log goes to a file: an unread pipe fills up and blocks the worker's logging.
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in the finally below)
    begin = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env_for({"GLOWPLUG_TERMINATION_PATH": os.devnull}),
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wall = None
    try:
        with httpx.Client(base_url=url, timeout=2.0) as client:
            deadline = begin + 900
            while time.perf_counter() < deadline and proc.poll() is None:
                try:
                    if client.get("/ready").status_code == 200:
                        wall = time.perf_counter() - begin
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
            if wall is None:
                proc.kill()
                proc.wait(30)
                log.seek(0)
                return {"error": log.read()[-600:]}
            startup = client.get("/startup").json()
            out = client.post(
                "/v1/completions", json={"prompt": "Hello", "max_tokens": 8, "temperature": 0}
            ).json()
    finally:
        exit_seconds = stop(proc)
        log.close()
    load = startup["details"].get("load", {})
    return {
        "wall": wall,
        "phases": startup["phases"],
        "gbps": load.get("gb_per_second"),
        "text": out["choices"][0]["text"],
        "exit_after_sigterm": exit_seconds,
    }


def stop(proc: subprocess.Popen[str], grace: float = 30.0) -> float | None:
    """SIGTERM, as the kubelet sends it; seconds until the worker exited (None: killed)."""
    if proc.poll() is not None:
        return 0.0
    begin = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
        return time.perf_counter() - begin
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores"
    if device.startswith("cuda"):
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        desc = f"{gpu}; {desc}"
    return desc


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(results: dict[tuple[str, str], list[dict[str, Any]]], caches: list[str]) -> list[str]:
    rows = [
        "| cache | config | wall to ready (s) | x naive | import | config | load | warmup "
        "| load GB/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cache in caches:
        naive = median([r["wall"] for r in results.get((cache, "naive"), []) if "wall" in r])
        for config in CONFIGS:
            runs = [r for r in results.get((cache, config), []) if "wall" in r]
            if not runs:
                errs = results.get((cache, config), [])
                if errs:
                    rows.append(
                        f"| {cache} | {config} | failed: "
                        f"{errs[0].get('error', '')[-120:]!r} |||||||"
                    )
                continue
            wall = median([r["wall"] for r in runs])
            ph = {
                k: median([r["phases"].get(k, 0.0) for r in runs])
                for k in ("import", "config", "load", "warmup")
            }
            gbps = median([r["gbps"] for r in runs if r.get("gbps")])
            ratio = wall / naive if naive and wall else None
            rows.append(
                f"| {cache} | {config} | {fmt(wall)} | {fmt(ratio)} | {fmt(ph['import'])} "
                f"| {fmt(ph['config'])} | {fmt(ph['load'])} | {fmt(ph['warmup'])} "
                f"| {fmt(gbps)} |"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None)
    ap.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="where to build/reuse the checkpoint (default: /tmp/glowplug-bench-<preset>)",
    )
    ap.add_argument("--runs", type=int, default=1, help="rounds; medians are reported")
    ap.add_argument("--cold", choices=("auto", "drop_caches", "fadvise", "skip"), default="auto")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    ap.add_argument("--caches", default="warm,cold", help="warm, cold or both (default: warm,cold)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)

    device = args.device
    if device == "auto":
        probe = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
            capture_output=True,
            text=True,
        )
        device = "cuda" if probe.stdout.strip() == "True" else "cpu"
    preset = args.preset or ("7b" if device.startswith("cuda") else "small")
    cold = args.cold
    if cold == "auto":
        cold = "drop_caches" if device.startswith("cuda") and os.geteuid() == 0 else "fadvise"
    configs = [c for c in CONFIGS if c in args.configs.split(",")]
    if "naive" not in configs:
        configs.insert(0, "naive")
    wanted = args.caches.split(",")
    caches = (["warm"] if "warm" in wanted else []) + (
        [f"cold ({cold})"] if "cold" in wanted and cold != "skip" else []
    )
    model = build_checkpoint(
        args.model_dir or Path(f"/tmp/glowplug-bench-{preset}"), preset, device
    )
    size = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    bytecode = prime_imports()
    print(
        f"model {model} ({size / 1e9:.2f} GB, preset {preset}) on {device}; cold = {cold}",
        flush=True,
    )

    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    texts: dict[str, str] = {}
    for _round in range(args.runs):
        for cache in caches:
            for config in configs:
                if cache == "warm":
                    make_warm(model)
                else:
                    make_cold(model, cold)
                if config == "naive":
                    r = run_naive(model, device)
                else:
                    flags = {"none": "", "all": ",".join(FLAGS)}.get(config, config)
                    r = run_worker(model, device, flags)
                    if "text" in r:
                        texts[config] = r["text"]
                results.setdefault((cache, config), []).append(r)
                exit_note = ""
                if "exit_after_sigterm" in r:
                    exit_note = f"(exit after SIGTERM: {fmt(r['exit_after_sigterm'])} s) "
                print(
                    f"  {cache:22s} {config:18s} "
                    f"{fmt(r.get('wall'))} s {exit_note}{r.get('error', '')[-200:]}",
                    flush=True,
                )

    same = len(set(texts.values())) <= 1
    rows = table(results, caches)
    header = [
        f"# Worker cold start, {device} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"Machine: {machine(device)}. Python {platform.python_version()}.",
        f"Model: preset `{preset}`, {size / 1e9:.2f} GB bf16 in "
        f"{len(list(model.glob('*.safetensors')))} safetensors files. Runs: {args.runs} "
        f"(medians). Cold cache: `{cold}`.",
        "Wall = spawn to ready (naive: to its result line after one token; worker: first 200 "
        "on /ready), measured by the benchmark. Phases: naive's own timers / the worker's /startup "
        "(import counts from the start of `serve`'s main, not interpreter start).",
        f"Greedy outputs identical across worker configurations: {'yes' if same else 'NO'}.",
        "Compiled bytecode for transformers: "
        + ("yes." if bytecode else "NO: every start compiled the sources (docs/worker.md)."),
        "",
    ]
    text = "\n".join(header + rows) + "\n"
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    dest = args.out / f"worker_coldstart_{'cuda' if device.startswith('cuda') else 'cpu'}.md"
    dest.write_text(text)
    raw = {f"{cache} | {config}": runs for (cache, config), runs in results.items()}
    dest.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    print(f"wrote {dest} and its runs as {dest.with_suffix('.json').name}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
