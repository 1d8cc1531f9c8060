"""Batching: concurrent requests share forward passes and get exactly the tokens they get alone
(greedy), on both model paths (the native Llama's continuous batching over a slot cache, and
transformers' cohorts); a client that goes away frees its slot and stops its generation."""

from __future__ import annotations

import concurrent.futures
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from glowplug_worker.serve.engine import Engine, Sampling
from glowplug_worker.serve.startup.imports import import_native_stack, import_stack
from glowplug_worker.serve.startup.loading import load_native, load_plain, prepare

from tests.serve.servers import Server

pytestmark = pytest.mark.worker

PROMPTS = [
    "Hello",
    "The quick brown fox",
    "Numbers: 1 2 3",
    "Pack my box with five dozen liquor jugs.",
    "A glow plug pre-heats a diesel engine so that it starts in the cold.",
    "東京",
]


def engine(model_dir: Path, native: bool, slots: int = 8) -> Engine:
    stack = import_native_stack() if native else import_stack("generate", model_dir)
    prep = prepare(stack, model_dir, "generate", "auto", "cpu", True, None)
    model, _ = load_native(stack, prep) if native else load_plain(stack, prep, True)
    return Engine(
        torch, model, prep.tokenizer, prep.device, "generate", prep.max_model_len, slots=slots
    )


@pytest.mark.parametrize("native", [True, False], ids=["native-slots", "transformers-cohorts"])
def test_greedy_tokens_alone_and_together_are_identical(tiny_model: Path, native: bool) -> None:
    eng = engine(tiny_model, native)
    # Different lengths, so the batch mixes short and long sequences and some end early.
    samplings = [Sampling(max_tokens=20 + 7 * i, temperature=0.0) for i in range(len(PROMPTS))]
    alone = [list(eng.generate(eng.encode(p), s)) for p, s in zip(PROMPTS, samplings, strict=True)]
    before = (eng.batcher.steps, eng.batcher.rows)
    together: list[list[int]] = [[] for _ in PROMPTS]
    start = threading.Barrier(len(PROMPTS))

    def run(i: int) -> None:
        start.wait()
        together[i] = list(eng.generate(eng.encode(PROMPTS[i]), samplings[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone
    steps, rows = eng.batcher.steps - before[0], eng.batcher.rows - before[1]
    assert rows / steps > 2, (steps, rows)  # the sequences really shared forward passes


def test_a_sequence_joins_a_running_batch_with_the_same_tokens(tiny_model: Path) -> None:
    """Continuous batching: a request that arrives while others decode starts at once (it does
    not wait for the batch to finish) and gets the tokens it gets alone."""
    eng = engine(tiny_model, native=True)
    long = Sampling(max_tokens=400, temperature=0.0, ignore_eos=True)
    short = Sampling(max_tokens=15, temperature=0.0)
    alone = list(eng.generate(eng.encode("Hello, world!"), short))
    tokens = eng.generate(eng.encode("The operator watches readiness"), long)
    next(tokens)  # the long one is decoding
    joined = list(eng.generate(eng.encode("Hello, world!"), short))
    remaining = sum(1 for _ in tokens)
    assert joined == alone
    assert remaining > 0  # the long one was still running when the short one finished


def test_the_slot_cache_is_preallocated_once(tiny_model: Path) -> None:
    eng = engine(tiny_model, native=True, slots=3)
    backend: Any = eng.batcher.backend
    cache = backend.cache
    assert (cache.slots, cache.length) == (3, eng.max_model_len)
    pointers = [t.data_ptr() for t in cache.keys]
    list(eng.generate(eng.encode("Hello"), Sampling(max_tokens=30, temperature=0.0)))
    assert [t.data_ptr() for t in cache.keys] == pointers  # written in place, never regrown


# -- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tiny_model,
        tmp_path_factory.mktemp("wide"),
        flags="native-model",
        extra=["--max-concurrency", "8", "--max-queue", "8"],
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def batch_sizes(server: Server) -> tuple[float, float]:
    text = server.client.get("/metrics").text
    total = float(re.search(r"glowplug_worker_decode_batch_size_sum (\S+)", text)[1])  # type: ignore[index]
    count = float(re.search(r"glowplug_worker_decode_batch_size_count (\S+)", text)[1])  # type: ignore[index]
    return total, count


def test_concurrent_http_requests_share_forward_passes(wide: Server) -> None:
    body = {"max_tokens": 40, "temperature": 0, "ignore_eos": True}
    expected = {p: wide.complete(p, **body)["choices"][0]["text"] for p in PROMPTS}
    rows0, steps0 = batch_sizes(wide)

    def ask(prompt: str) -> tuple[str, str]:
        with httpx.Client(base_url=wide.url, timeout=60) as c:
            r = c.post("/v1/completions", json={"prompt": prompt, **body})
            assert r.status_code == 200, r.text
            return prompt, r.json()["choices"][0]["text"]

    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(ask, PROMPTS))
    assert dict(results) == expected
    rows, steps = batch_sizes(wide)
    assert (rows - rows0) / (steps - steps0) > 2  # mean sequences per decode pass


def generated_tokens(server: Server) -> float:
    text = server.client.get("/metrics").text
    return float(re.search(r"^glowplug_worker_generated_tokens_total (\S+)$", text, re.M)[1])  # type: ignore[index]


@pytest.fixture
def single(tiny_model: Path, tmp_path: Path) -> Iterator[Server]:
    """One slot, no queue: a second request while one runs is a 429."""
    server = Server(
        tiny_model,
        tmp_path,
        flags="native-model",
        extra=["--max-concurrency", "1", "--max-queue", "0"],
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


LONG = {"prompt": "Hello", "max_tokens": 1000, "temperature": 0, "ignore_eos": True}


def wait_until_free(server: Server, deadline: float = 10.0) -> int:
    """Ask until a request is admitted; the status of the first that is not a 429."""
    end = time.monotonic() + deadline
    while True:
        r = server.client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
        if r.status_code != 429 or time.monotonic() > end:
            return r.status_code
        time.sleep(0.05)


def test_a_stream_client_that_disconnects_frees_its_slot_and_stops(single: Server) -> None:
    with (
        httpx.Client(base_url=single.url, timeout=30) as c,
        c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r,
    ):
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
        busy = single.client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert busy.status_code == 429  # the one slot is taken while it streams
    assert wait_until_free(single) == 200
    after = generated_tokens(single)
    time.sleep(0.5)
    assert generated_tokens(single) == after  # nothing generates for the gone client
    assert after < LONG["max_tokens"]


def test_a_non_streaming_client_that_disconnects_frees_its_slot_and_stops(
    single: Server,
) -> None:
    import json

    body = json.dumps(LONG).encode()
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", single.port), timeout=10) as sock:
        sock.sendall(head + body)
        time.sleep(0.3)  # generating
        busy = single.client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert busy.status_code == 429
    assert wait_until_free(single) == 200
    after = generated_tokens(single)
    time.sleep(0.5)
    assert generated_tokens(single) == after
    assert after < LONG["max_tokens"]


def test_a_long_prompt_does_not_stall_ready(single: Server) -> None:
    """Tokenizing a ~1 MiB prompt runs in a model thread, after admission: /ready answers while
    it runs (and the prompt is then refused as too long for the context)."""
    prompt = "The quick brown fox jumps over the lazy dog. " * 22000  # ~990 KB
    result: dict[str, Any] = {}

    def send() -> None:
        with httpx.Client(base_url=single.url, timeout=60) as c:
            r = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1})
            result["status"], result["done"] = r.status_code, time.monotonic()

    sender = threading.Thread(target=send)
    sender.start()
    ready_times = []
    while sender.is_alive():
        t0 = time.monotonic()
        r = single.client.get("/ready", timeout=5)
        ready_times.append((t0, time.monotonic() - t0, r.status_code))
        time.sleep(0.02)
    sender.join()
    assert result["status"] == 400
    during = [(lat, status) for t0, lat, status in ready_times if t0 < result["done"] - 0.1]
    assert during, "the long prompt finished before /ready was asked"
    assert all(status == 200 for _, status in during)
    assert max(lat for lat, _ in during) < 1.0, during


def test_a_vanishing_top_p_keeps_the_most_likely_token() -> None:
    # Found by tests/serve/test_api_fuzz.py: top_p 5e-324 is 0 in float32, kept no token, and
    # sampling failed with a 500.
    from glowplug_worker.serve.batching.choose import choose
    from glowplug_worker.serve.batching.job import Job, Sampling

    logits = torch.tensor([0.1, 3.0, 0.2, -1.0])
    job = Job([1], Sampling(max_tokens=1, temperature=1.0, top_p=5e-324), sink=None)  # type: ignore[arg-type]
    assert [choose(torch, logits, job, str, set())[0] for _ in range(20)] == [1] * 20
