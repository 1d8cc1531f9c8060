"""The HTTP API of a running server (tiny model, no flags): what an OpenAI client sees."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.servers import Server

pytestmark = pytest.mark.worker


def test_ready_only_after_warmup(baseline: Server) -> None:
    # The fixture polled /ready from process start: 503s first, then 200.
    seen = baseline.ready_statuses
    assert seen[-1] == 200
    assert 503 in seen and seen.index(503) < seen.index(200), seen
    startup = baseline.client.get("/startup").json()
    assert list(startup["phases"]) == ["import", "config", "load", "warmup"]
    assert startup["ready"] is True and startup["optimizations"] == []
    assert startup["time_to_ready_seconds"] >= sum(startup["phases"].values()) * 0.99
    assert startup["details"]["bytecode_cached"] in (True, False)  # transformers is installed
    assert baseline.client.get("/health").status_code == 200


def test_models_lists_the_served_model(baseline: Server, tiny_model: Path) -> None:
    body = baseline.client.get("/v1/models").json()
    assert [m["id"] for m in body["data"]] == [tiny_model.name]  # the directory's name
    assert body["data"][0]["object"] == "model"
    named = baseline.complete("hi", max_tokens=1, model=tiny_model.name)
    assert named["model"] == tiny_model.name


def test_completion_shape_and_usage(baseline: Server) -> None:
    body = baseline.complete("The quick brown fox", max_tokens=12)
    choice = body["choices"][0]
    assert body["object"] == "text_completion"
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 12
    assert isinstance(choice["text"], str) and choice["text"]


def collect_stream(server: Server, path: str, body: dict[str, Any]) -> tuple[str, list[Any]]:
    events = list(server.stream(path, body))
    assert events[-1] == "[DONE]"
    text = ""
    for ev in events[:-1]:
        assert isinstance(ev, dict)
        for choice in ev["choices"]:
            text += choice.get("text", "") or choice.get("delta", {}).get("content", "") or ""
    return text, events


def test_streaming_matches_non_streaming_completion(baseline: Server) -> None:
    body = {"prompt": "Hello, world!", "max_tokens": 40, "temperature": 0}
    full = baseline.complete(**body)["choices"][0]["text"]
    streamed, events = collect_stream(baseline, "/v1/completions", body)
    assert streamed == full
    assert len(events) > 3  # really incremental, not one blob
    finishes = [ev["choices"][0]["finish_reason"] for ev in events[:-1] if ev["choices"]]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}


def test_chat_uses_the_chat_template_and_streams_the_same(baseline: Server) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How are you today?"},
    ]
    r = baseline.client.post(
        "/v1/chat/completions", json={"messages": messages, "max_tokens": 30, "temperature": 0}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    # Same prompt by hand through the completions endpoint: the template was applied.
    prompt = "<|system|>\nBe brief.<|end|>\n<|user|>\nHow are you today?<|end|>\n<|assistant|>\n"
    raw = baseline.complete(prompt, max_tokens=30)
    assert raw["choices"][0]["text"] == message["content"]
    assert raw["usage"]["prompt_tokens"] == body["usage"]["prompt_tokens"]
    streamed, events = collect_stream(
        baseline,
        "/v1/chat/completions",
        {
            "messages": messages,
            "max_tokens": 30,
            "temperature": 0,
            "stream_options": {"include_usage": True},
        },
    )
    assert streamed == message["content"]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2]["usage"] == body["usage"]


def test_stop_string_ends_the_text(baseline: Server) -> None:
    full = baseline.complete("Numbers:", max_tokens=40)["choices"][0]["text"]
    stop = full[5:8]
    assert stop, full
    cut = baseline.complete("Numbers:", max_tokens=40, stop=[stop])["choices"][0]
    assert cut["text"] == full[: full.index(stop)]
    assert cut["finish_reason"] == "stop"
    streamed, _ = collect_stream(
        baseline,
        "/v1/completions",
        {"prompt": "Numbers:", "max_tokens": 40, "temperature": 0, "stop": [stop]},
    )
    assert streamed == cut["text"]


def test_seeded_sampling_is_reproducible(baseline: Server) -> None:
    a = baseline.complete("Hello", max_tokens=20, temperature=1.0, seed=7)
    b = baseline.complete("Hello", max_tokens=20, temperature=1.0, seed=7)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_concurrent_requests_are_correct(baseline: Server) -> None:
    prompts = ["Hello", "The quick brown fox", "Numbers: 1 2 3", "Pack my box"]
    expected = {p: baseline.complete(p, max_tokens=15)["choices"][0]["text"] for p in prompts}

    def ask(prompt: str) -> tuple[str, int, str]:
        with httpx.Client(base_url=baseline.url, timeout=60) as c:
            r = c.post(
                "/v1/completions", json={"prompt": prompt, "max_tokens": 15, "temperature": 0}
            )
            return prompt, r.status_code, r.json()["choices"][0]["text"] if r.is_success else ""

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(ask, prompts + prompts[:2]))  # 6 <= 2 running + 4 queued
    for prompt, status, text in results:
        assert status == 200
        assert text == expected[prompt]


MSG = [{"role": "user", "content": "hi"}]
BAD_REQUESTS = [
    ("/v1/completions", {"prompt": "hi", "bogus": 1}, 400, "bogus"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 100000}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "temperature": 5}, 400, "temperature"),
    ("/v1/completions", {"prompt": "hi", "n": 3}, 400, "n"),  # > --max-concurrency 2
    ("/v1/completions", {"prompt": "hi", "n": 0}, 400, "n"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 6}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "echo": True}, 400, "echo"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"5": 100}}, 400, "logit_bias"),
    (
        "/v1/completions",
        {"prompt": "hi", "response_format": {"type": "json_schema", "json_schema": {}}},
        400,
        "response_format.type",
    ),
    ("/v1/chat/completions", {"messages": MSG, "top_logprobs": 2}, 400, "top_logprobs"),
    ("/v1/chat/completions", {"messages": MSG, "tools": [{"type": "function"}]}, 400, "tools"),
    ("/v1/completions", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model"),
    ("/v1/completions", {"prompt": "word " * 2000}, 400, "prompt"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages[0].role",
    ),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ("/v1/embeddings", {"input": "hello"}, 400, "model"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD_REQUESTS)
def test_malformed_requests_get_openai_errors(
    baseline: Server, path: str, body: dict[str, Any], status: int, param: str
) -> None:
    r = baseline.client.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]


def test_non_json_and_wrong_method_and_server_stays_up(baseline: Server) -> None:
    r = baseline.client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    assert baseline.client.post("/v1/completions", json=["a list"]).status_code == 400
    assert baseline.client.get("/v1/completions").status_code == 405
    assert baseline.client.get("/v1/nothing").status_code == 404
    assert baseline.proc.poll() is None
    assert baseline.complete("still alive?", max_tokens=2)["usage"]["completion_tokens"] == 2


def test_metrics_export_startup_and_requests(baseline: Server) -> None:
    baseline.complete("metrics please", max_tokens=3)
    text = baseline.client.get("/metrics").text
    for phase in ("import", "config", "load", "warmup"):
        assert f'glowplug_worker_startup_phase_seconds{{phase="{phase}"}}' in text
    assert "glowplug_worker_startup_seconds " in text
    assert "glowplug_worker_ready 1.0" in text
    assert 'glowplug_worker_requests_total{endpoint="completions",status="200"}' in text
    assert "glowplug_worker_time_to_first_token_seconds_count" in text
    assert "glowplug_worker_tokens_per_second_count" in text
    assert "glowplug_worker_queue_depth 0.0" in text


def _raw_post(server: Server, head: str, body: bytes, timeout: float = 10.0) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        return sock.recv(4096)


def test_an_oversized_body_is_refused_before_it_is_read(baseline: Server) -> None:
    # 200 MiB announced, 1 KiB sent: the answer comes without waiting for (or holding) the rest.
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {200 << 20}\r\n\r\n"
    )
    answer = _raw_post(baseline, head, b" " * 1024)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert baseline.client.get("/ready").status_code == 200


def test_an_oversized_chunked_body_is_cut_at_the_limit(baseline: Server) -> None:
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b" " * (256 << 10)
    body = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 6  # 1.5 MiB, no end chunk
    answer = _raw_post(baseline, head, body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


# A chat template that refuses some conversations (as many published ones do), and breaks on
# others (a bug in it, or messages it was not written for): the first is a 400 with the
# template's words, the second a 400 that does not echo the exception (nor the prompt in it).
REFUSING_TEMPLATE = (
    "{% if messages[0]['role'] == 'assistant' %}"
    "{{ raise_exception('Conversations must start with a user message') }}{% endif %}"
    "{% if messages[0]['content'] == 'explode' %}{{ (messages[0]['content'] | int) // 0 }}"
    "{% endif %}"
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_chat_template_errors_are_400s_without_internals(tiny_model: Path, tmp_path: Path) -> None:
    import json
    import shutil

    model = tmp_path / "refusing"
    shutil.copytree(tiny_model, model)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = REFUSING_TEMPLATE
    config_path.write_text(json.dumps(config))
    server = Server(model, tmp_path / "run").wait_ready()
    try:
        refused = server.client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "assistant", "content": "hi"}], "max_tokens": 2},
        )
        assert refused.status_code == 400, refused.text
        assert "Conversations must start with a user message" in refused.json()["error"]["message"]
        assert refused.json()["error"]["param"] == "messages"

        broken = server.client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "explode"}], "max_tokens": 2},
        )
        assert broken.status_code == 400, broken.text
        assert broken.json()["error"]["param"] == "messages"
        message = broken.json()["error"]["message"]
        assert "ZeroDivision" not in message and "explode" not in message and "id " in message
        error_id = message.split("id ", 1)[1].split(";")[0]
        assert error_id in server.log()  # the details are in the server's log
        ok = server.client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2},
        )
        assert ok.status_code == 200
    finally:
        server.stop()
