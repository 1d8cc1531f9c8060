"""What OpenAI clients send by default, against the running server (tiny model, no flags):
logprobs and top_logprobs, n > 1, seed, response_format json_object, stream usage."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tests.serve.servers import Server
from tests.serve.test_api import collect_stream

pytestmark = pytest.mark.worker

MESSAGES = [{"role": "user", "content": "Give me a JSON object about a fox."}]


def chat(server: Server, **body: Any) -> dict[str, Any]:
    r = server.client.post("/v1/chat/completions", json={"messages": MESSAGES, **body})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_completion_logprobs_are_the_greedy_choice(baseline: Server) -> None:
    body = baseline.complete("The quick brown fox", max_tokens=10, logprobs=3)
    lp = body["choices"][0]["logprobs"]
    n = body["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n
    for token, logprob, top in zip(
        lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True
    ):
        assert len(top) == 3 and logprob <= 0
        # greedy: the chosen token is the most likely one
        assert math.isclose(logprob, max(top.values()), rel_tol=1e-6)
        assert top[token] == pytest.approx(logprob)
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    plain = baseline.complete("The quick brown fox", max_tokens=10)["choices"][0]
    assert plain["logprobs"] is None and plain["text"] == body["choices"][0]["text"]


def test_chat_logprobs_whole_and_streamed_agree(baseline: Server) -> None:
    body = chat(baseline, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    for entry in content:
        if not entry["token"].startswith("bytes:"):  # else part of a multi-byte character
            assert entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 2
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"])
    streamed = []
    for ev in baseline.stream(
        "/v1/chat/completions",
        {
            "messages": MESSAGES,
            "max_tokens": 8,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 2,
        },
    ):
        if isinstance(ev, dict) and ev["choices"] and ev["choices"][0]["logprobs"]:
            streamed.extend(ev["choices"][0]["logprobs"]["content"])
    assert [e["token"] for e in streamed] == [e["token"] for e in content]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in content])


def test_n_choices_greedy_equal_and_seeded_reproducible(baseline: Server) -> None:
    one = baseline.complete("Hello", max_tokens=12)["choices"][0]["text"]
    two = baseline.complete("Hello", max_tokens=12, n=2)
    assert [c["index"] for c in two["choices"]] == [0, 1]
    assert [c["text"] for c in two["choices"]] == [one, one]
    assert two["usage"]["completion_tokens"] == 24
    sampled = baseline.complete("Hello", max_tokens=12, n=2, temperature=1.0, seed=5)
    again = baseline.complete("Hello", max_tokens=12, n=2, temperature=1.0, seed=5)
    texts = [c["text"] for c in sampled["choices"]]
    assert texts == [c["text"] for c in again["choices"]]
    assert texts[0] != texts[1]  # each choice its own draw (seed + index)


def test_n_choices_stream_by_index_with_usage(baseline: Server) -> None:
    body = {"prompt": "Numbers:", "max_tokens": 10, "temperature": 0, "n": 2}
    whole = baseline.complete(**body)
    events = list(
        baseline.stream("/v1/completions", {**body, "stream_options": {"include_usage": True}})
    )
    assert events[-1] == "[DONE]"
    texts = ["", ""]
    finishes: dict[int, str] = {}
    for ev in events[:-1]:
        assert isinstance(ev, dict)
        for choice in ev["choices"]:
            texts[choice["index"]] += choice["text"]
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    assert texts == [c["text"] for c in whole["choices"]]
    assert finishes == {0: "length", 1: "length"}
    usage_event = events[-2]
    assert isinstance(usage_event, dict) and usage_event["choices"] == []
    assert usage_event["usage"] == whole["usage"]


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 3}])
def test_json_object_output_is_always_valid_json(
    baseline: Server, sampling: dict[str, Any]
) -> None:
    """A random model would write anything: the constraint lets it write only JSON, so the
    text is an object when it stops, and every streamed prefix can still become one."""
    body = {
        "messages": MESSAGES,
        "max_tokens": 300,
        "response_format": {"type": "json_object"},
        **sampling,
    }
    whole = chat(baseline, **body)
    choice = whole["choices"][0]
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    else:  # out of tokens: still a prefix of an object
        assert choice["message"]["content"].lstrip().startswith("{")
    text, _ = collect_stream(baseline, "/v1/chat/completions", body)
    assert text == choice["message"]["content"]


def test_json_object_on_completions_too(baseline: Server) -> None:
    found = []
    for seed in range(3):
        choice = baseline.complete(
            "JSON:",
            max_tokens=200,
            temperature=0.8,
            seed=seed,
            response_format={"type": "json_object"},
        )["choices"][0]
        if choice["finish_reason"] == "stop":
            found.append(json.loads(choice["text"]))
    assert found and all(isinstance(obj, dict) for obj in found)
