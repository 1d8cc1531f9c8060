"""Pure pieces of the server: flags, request validation, admission control, detokenization."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from glowplug_operator.rollback.reports import FLAG_PHASES as OPERATOR_FLAG_PHASES
from glowplug_worker.report import PHASES as REPORT_PHASES
from glowplug_worker.serve.http.admission import Overloaded, Scheduler
from glowplug_worker.serve.http.protocol import (
    ApiError,
    parse_chat,
    parse_completion,
    parse_embedding,
)
from glowplug_worker.serve.http.textstream import TextStream
from glowplug_worker.serve.startup.flags import FLAG_PHASES, KNOWN_FLAGS, parse_flags


class TestFlags:
    def test_phase_mapping_agrees_with_the_operator_and_the_report(self) -> None:
        for flag, phase in FLAG_PHASES.items():
            assert OPERATOR_FLAG_PHASES[flag] == phase
            assert phase in REPORT_PHASES

    def test_cli_wins_over_env_and_order_is_canonical(self) -> None:
        assert parse_flags("fast-load, prefetch-weights", "hf-offline").active == (
            "prefetch-weights",
            "fast-load",
        )
        assert parse_flags(None, "HF-Offline,,").active == ("hf-offline",)
        assert parse_flags("", "fast-load").active == ()  # an explicit empty list means none
        assert parse_flags(None, None).active == ()

    def test_unknown_flags_are_ignored_with_a_log_line(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.INFO, logger="glowplug.serve"):
            flags = parse_flags(None, "my-vllm-forkserver,fast-load")
        assert flags.active == ("fast-load",) and flags.ignored == ("my-vllm-forkserver",)
        assert "ignoring unknown optimization 'my-vllm-forkserver'" in caplog.text
        assert set(KNOWN_FLAGS) == set(FLAG_PHASES)


class TestProtocol:
    def test_completion_defaults(self) -> None:
        req = parse_completion({"prompt": "hi"})
        assert (req.max_tokens, req.temperature, req.stream, req.stop) == (16, 1.0, False, [])
        assert parse_completion({"prompt": ["hi"], "stop": "x"}).stop == ["x"]

    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"prompt": "hi", "top_p": 0}, "top_p"),
            ({"prompt": "hi", "max_tokens": True}, "max_tokens"),
            ({"prompt": "hi", "seed": 1.5}, "seed"),
            ({"prompt": "hi", "stream": "yes"}, "stream"),
            ({"prompt": "hi", "presence_penalty": 1}, "presence_penalty"),
            ({"prompt": "hi", "stream_options": {"x": 1}}, "stream_options"),
            ({"prompt": 5}, "prompt"),
            # Found by tests/serve/test_api_fuzz.py: each was a 500 or went through unchecked.
            ({"prompt": "hi", "seed": 2**64}, "seed"),
            ({"prompt": "hi", "user": 5}, "user"),
            ({"prompt": "hi", "stream_options": "x"}, "stream_options"),
            ({"prompt": "hi", "stream_options": {"include_usage": "yes"}}, "stream_options"),
        ],
    )
    def test_completion_errors_name_the_field(self, body: dict[str, object], param: str) -> None:
        with pytest.raises(ApiError) as err:
            parse_completion(body)
        assert err.value.status == 400 and err.value.param == param

    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
            ({"messages": [{"role": "user", "content": "x", "name": 1}]}, "messages[0].name"),
            ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1,
              "max_completion_tokens": None}, "max_tokens"),
        ],
    )  # fmt: skip
    def test_chat_errors_name_the_field(self, body: dict[str, object], param: str) -> None:
        with pytest.raises(ApiError) as err:
            parse_chat(body)
        assert err.value.status == 400 and err.value.param == param

    def test_integral_numbers_are_integers_as_in_json_schema(self) -> None:
        # Found by tests/serve/test_api_fuzz.py: the OpenAPI document's `integer` takes 3.0.
        req = parse_completion({"prompt": "hi", "max_tokens": 3.0, "n": 2.0, "seed": 7.0})
        assert (req.max_tokens, req.n, req.seed) == (3, 2, 7)
        assert all(isinstance(v, int) for v in (req.max_tokens, req.n, req.seed))

    def test_a_vanishing_temperature_decodes_greedily(self) -> None:
        # 5e-324 once made logits / temperature infinite and sampling a 500.
        assert parse_completion({"prompt": "hi", "temperature": 5e-324}).temperature == 0.0
        assert parse_completion({"prompt": "hi", "temperature": 0.5}).temperature == 0.5

    def test_chat_accepts_text_parts_and_max_completion_tokens(self) -> None:
        req = parse_chat(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    }
                ],
                "max_completion_tokens": 3,
            }
        )
        assert req.messages == [{"role": "user", "content": "ab"}] and req.max_tokens == 3

    def test_embedding_inputs(self) -> None:
        assert parse_embedding({"input": "x"}).inputs == ["x"]
        with pytest.raises(ApiError, match="at most 256"):
            parse_embedding({"input": ["x"] * 257})
        with pytest.raises(ApiError, match="encoding_format"):
            parse_embedding({"input": "x", "encoding_format": "int8"})


async def until(condition: Callable[[], bool], deadline: float = 5.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.001)


class TestScheduler:
    @pytest.mark.timeout(30)
    def test_bounds_running_and_queued_then_refuses(self) -> None:
        async def scenario() -> list[str]:
            sched = Scheduler(max_running=1, max_queued=1)
            order: list[str] = []
            release = asyncio.Event()

            async def job(name: str) -> None:
                try:
                    async with sched.slot(timeout=5):
                        order.append(f"start {name}")
                        await release.wait()
                except Overloaded:
                    order.append(f"429 {name}")

            first = asyncio.create_task(job("a"))
            await until(lambda: sched.running == 1)
            second = asyncio.create_task(job("b"))  # queued
            await until(lambda: sched.queued == 1)
            assert (sched.running, sched.queued) == (1, 1)
            await job("c")  # no room: refused at once
            release.set()
            await asyncio.gather(first, second)
            assert await sched.wait_idle(1)
            return order

        assert asyncio.run(scenario()) == ["start a", "429 c", "start b"]

    def test_queue_wait_times_out_and_frees_its_place(self) -> None:
        async def scenario() -> None:
            sched = Scheduler(max_running=1, max_queued=1)
            async with sched.slot(timeout=1):
                with pytest.raises(TimeoutError):
                    async with sched.slot(timeout=0.05):
                        pass
                assert sched.queued == 0
                assert not await sched.wait_idle(0.05)

        asyncio.run(scenario())

    def test_rejects_impossible_limits(self) -> None:
        with pytest.raises(ValueError, match="max-concurrency"):
            Scheduler(0, 1)


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


class TestTextStream:
    def run(self, tokenizer: object, ids: list[int], stop: list[str]) -> tuple[list[str], str]:
        def decode(x: list[int]) -> str:
            return str(tokenizer.decode(x, skip_special_tokens=True))  # type: ignore[attr-defined]

        stream = TextStream(decode, stop)
        deltas = []
        for i in ids:
            deltas.append(stream.push(i))
            if stream.stopped:
                break
        deltas.append(stream.finish())
        return deltas, stream.text

    def test_multibyte_characters_are_never_split(self, tokenizer: object) -> None:
        text = "Unicode: café, 東京 😀 and more"
        ids = tokenizer(text)["input_ids"]  # type: ignore[operator]
        deltas, full = self.run(tokenizer, ids, [])
        assert full == text and "".join(deltas) == text
        assert all("\ufffd" not in d for d in deltas)
        assert sum(1 for d in deltas if d) > 5  # incremental

    def test_invalid_bytes_do_not_stall_the_stream(self, tokenizer: object) -> None:
        # Byte-level tokens for a lone continuation byte, then ordinary text.
        vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
        lone = vocab["\u0124"]  # byte 0x84 in the byte-level alphabet
        ids = [lone, *tokenizer("hello world again")["input_ids"]]  # type: ignore[operator]
        deltas, full = self.run(tokenizer, ids, [])
        assert "".join(deltas) == full
        assert deltas[1].startswith("\ufffd")  # emitted once the next token proved it final

    def test_stop_strings_are_cut_and_held_back(self, tokenizer: object) -> None:
        ids = tokenizer("The quick brown fox jumps")["input_ids"]  # type: ignore[operator]
        deltas, full = self.run(tokenizer, ids, ["brown"])
        assert full == "The quick " and "".join(deltas) == full
        assert not any("b" in d for d in deltas)


class TestJsonPrefix:
    VALID = [
        '{"a": 1}',
        ' \n{"a": [1, -2.5e+3, true, false, null, "x\\u00e9\\n"], "b": {"c": {}}}',
        '{"empty": [], "nested": [[{}]], "esc": "\\"\\\\\\/"}',
        "{}",
    ]
    INVALID = [
        "[1, 2]",
        '"text"',
        "{a: 1}",
        '{"a" 1}',
        '{"a": 01}',
        '{"a": tru}',
        '{"a": 1,}',
        '{"a": 1}}',
        '{"a": 1} x',
        '{"a": "\x01"}',
        '{"a": 1.}',
        '{"a": -}',
    ]

    @pytest.mark.parametrize("text", VALID)
    def test_every_prefix_of_an_object_is_accepted(self, text: str) -> None:
        import json

        from glowplug_worker.serve.batching.json_prefix import JsonPrefix

        state: JsonPrefix | None = JsonPrefix()
        for i, ch in enumerate(text):
            assert state is not None, text[:i]
            assert not state.complete or ch.isspace()
            state = state.feed(ch)
        assert state is not None and state.complete
        assert isinstance(json.loads(text), dict)

    @pytest.mark.parametrize("text", INVALID)
    def test_text_that_cannot_become_an_object_is_refused(self, text: str) -> None:
        from glowplug_worker.serve.batching.json_prefix import JsonPrefix

        state = JsonPrefix().feed(text)
        assert state is None or not state.complete

    def test_feeding_does_not_change_the_state(self) -> None:
        from glowplug_worker.serve.batching.json_prefix import JsonPrefix

        state = JsonPrefix().feed('{"a": ')
        assert state is not None
        assert state.feed("x") is None and state.feed("1}") is not None  # same state, twice

    def test_partial_characters_are_allowed_inside_strings_only(self) -> None:
        from glowplug_worker.serve.batching.json_prefix import JsonPrefix

        assert JsonPrefix().feed('{"caf\ufffd') is not None
        assert JsonPrefix().feed("{\ufffd") is None


class TestOpenAIFields:
    def test_n_logprobs_and_response_format(self) -> None:
        req = parse_completion(
            {"prompt": "hi", "n": 3, "logprobs": 2, "response_format": {"type": "json_object"}}
        )
        assert (req.n, req.logprobs, req.json_object) == (3, 2, True)
        msgs = [{"role": "user", "content": "x"}]
        assert parse_chat({"messages": msgs, "logprobs": True}).logprobs == 0
        assert parse_chat({"messages": msgs, "logprobs": True, "top_logprobs": 4}).logprobs == 4
        assert parse_chat({"messages": msgs, "logprobs": False}).logprobs is None
        assert not parse_chat({"messages": msgs, "response_format": {"type": "text"}}).json_object

    def test_unsupported_fields_pass_when_empty_and_are_named_when_set(self) -> None:
        msgs = [{"role": "user", "content": "x"}]
        parse_chat({"messages": msgs, "tools": [], "logit_bias": None, "store": False})
        for name, value in (("tools", [{"type": "function"}]), ("logit_bias", {"1": 5})):
            with pytest.raises(ApiError) as err:
                parse_chat({"messages": msgs, name: value})
            assert err.value.param == name and "not supported" in err.value.message


class TestWeightedAdmission:
    def test_a_request_with_n_choices_takes_n_slots(self) -> None:
        async def scenario() -> None:
            s = Scheduler(max_running=3, max_queued=0)
            async with s.slot(1.0, weight=2):
                assert s.running == 2
                with pytest.raises(Overloaded):
                    async with s.slot(1.0, weight=2):
                        pass
                async with s.slot(1.0):
                    assert s.running == 3
            assert s.running == 0 and s.in_flight == 0

        asyncio.run(scenario())


class TestClosingStream:
    def test_closes_even_when_the_client_left_before_the_first_byte(self) -> None:
        from glowplug_worker.serve.http.app import ClosingStream

        started, closed = [], []

        async def body():  # type: ignore[no-untyped-def]
            started.append(True)
            yield "data: x\n\n"

        async def on_close() -> None:
            closed.append(True)

        async def receive() -> dict[str, object]:
            return {"type": "http.disconnect"}

        async def send(message: object) -> None:
            await asyncio.sleep(10)  # a client that never reads

        async def scenario() -> None:
            response = ClosingStream(body(), on_close)
            scope = {"type": "http", "asgi": {"spec_version": "2.3"}}
            await asyncio.wait_for(response(scope, receive, send), 5)

        asyncio.run(scenario())
        assert closed == [True]


class TestCacheLength:
    def test_the_context_when_it_fits_else_what_fits(self) -> None:
        from glowplug_worker.serve.batching.backends import CacheTooSmall, cache_length

        assert cache_length(4, 1000, 2048, None) == 2048  # unknown free memory: as asked
        assert cache_length(4, 1000, 2048, 4000 * 4096) == 2048
        assert cache_length(4, 1000, 2048, 4000 * 512) == 512  # the context limit is lowered
        with pytest.raises(CacheTooSmall, match="--max-concurrency"):
            cache_length(128, 1 << 20, 8192, 1 << 30)  # 8 positions
