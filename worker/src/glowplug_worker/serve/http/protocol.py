"""OpenAI-style request validation and error bodies. Pure Python: a request body (parsed JSON)
in, a typed request or an `ApiError` naming the field out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stop",
    "seed",
    "user",
    "stream_options",
    "presence_penalty",
    "frequency_penalty",
    "ignore_eos",  # vLLM's extension: generate exactly max_tokens (benchmarks, tests)
    "response_format",
    "logprobs",
}
# Fields of the OpenAI API this server does not implement: accepted when empty or off (null,
# false, {}, [] as some clients send by default), else a 400 that names them.
UNSUPPORTED = {
    "logit_bias",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "echo",
    "best_of",
    "suffix",
    "store",
    "metadata",
    "modalities",
    "audio",
    "prediction",
    "reasoning_effort",
    "service_tier",
    "web_search_options",
}
COMPLETION_FIELDS = COMMON | {"prompt"}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens", "top_logprobs"}
MAX_N = 16
MAX_COMPLETION_LOGPROBS = 5  # as OpenAI's completions API
MAX_TOP_LOGPROBS = 20  # as OpenAI's chat API
EMBEDDING_FIELDS = {"model", "input", "encoding_format", "user", "dimensions"}
MAX_STOP = 4
GREEDY_BELOW = 1e-5
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch's generators take
MAX_EMBED_INPUTS = 256
ROLES = {"system", "user", "assistant", "developer"}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type_: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class GenerationRequest:
    model: str | None
    prompt: str | None = None  # completions
    messages: list[dict[str, str]] | None = None  # chat
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False
    n: int = 1
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the top k
    json_object: bool = False


@dataclass
class EmbeddingRequest:
    model: str | None
    inputs: list[str]
    encoding_format: str = "float"


def _object(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    for name in sorted(set(body) & UNSUPPORTED):
        if body[name]:
            raise bad(f"'{name}' is not supported by this server; leave it out", param=name)
    unknown = sorted(set(body) - allowed - UNSUPPORTED)
    if unknown:
        raise bad(
            f"unknown field {unknown[0]!r}; allowed fields: {', '.join(sorted(allowed))}",
            param=unknown[0],
        )
    for name in ("model", "user"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise bad(f"'{name}' must be a string", param=name)
    return body


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise bad(f"'{name}' must be a number between {low} and {high}", param=name)
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int, high: int | None) -> int | None:
    """An integer field between `low` and `high` (None: no bound), or None when absent or null.
    As in JSON Schema, 3.0 is the integer 3."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise bad(f"'{name}' must be an integer {bounds}", param=name)
    return value


def _common(body: dict[str, Any], req: GenerationRequest, max_tokens_field: str) -> None:
    # Chat's max_completion_tokens wins over its older name, max_tokens; both are checked.
    value = _integer(body, max_tokens_field, 1, None) or _integer(body, "max_tokens", 1, None)
    if value is not None:
        req.max_tokens = value
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    # Below GREEDY_BELOW, logits / temperature overflows: decode greedily (vLLM does the same).
    req.temperature = temperature if temperature >= GREEDY_BELOW else 0.0
    req.top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if req.top_p == 0.0:
        raise bad("'top_p' must be greater than 0", param="top_p")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, 0.0, -2.0, 2.0) != 0.0:
            raise bad(f"'{name}' is not supported by this server; leave it out or 0", param=name)
    req.n = _integer(body, "n", 1, MAX_N) or 1
    req.json_object = _response_format(body.get("response_format"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("'stream' must be true or false", param="stream")
    req.stream = stream
    options = body.get("stream_options")
    if options is not None:
        if (
            not isinstance(options, dict)
            or set(options) - {"include_usage"}
            or not isinstance(options.get("include_usage", False), bool)
        ):
            raise bad(
                "'stream_options' may only hold 'include_usage': true or false",
                param="stream_options",
            )
        req.include_usage = options.get("include_usage", False)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if (
            not isinstance(stop, list)
            or len(stop) > MAX_STOP
            or not all(isinstance(s, str) and s for s in stop)
        ):
            raise bad(
                f"'stop' must be a string or a list of at most {MAX_STOP} non-empty strings",
                param="stop",
            )
        req.stop = stop
    req.seed = _integer(body, "seed", SEED_MIN, SEED_MAX)
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise bad("'ignore_eos' must be true or false", param="ignore_eos")
    req.ignore_eos = ignore_eos


def _response_format(value: Any) -> bool:
    """True for `{"type": "json_object"}`; `text` (or none) is plain text; anything else a 400."""
    if value is None:
        return False
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise bad("'response_format' must be an object with a 'type'", param="response_format")
    kind = value["type"]
    if kind == "text":
        return False
    if kind == "json_object":
        return True
    raise bad(
        f"response_format type {kind!r} is not supported; use 'json_object' or 'text'",
        param="response_format.type",
    )


def parse_completion(body: Any) -> GenerationRequest:
    obj = _object(body, COMPLETION_FIELDS)
    prompt = obj.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad("'prompt' must be a non-empty string", param="prompt")
    req = GenerationRequest(model=obj.get("model"), prompt=prompt, max_tokens=16)
    _common(obj, req, "max_tokens")
    req.logprobs = _integer(obj, "logprobs", 0, MAX_COMPLETION_LOGPROBS)
    return req


def parse_chat(body: Any) -> GenerationRequest:
    obj = _object(body, CHAT_FIELDS)
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", param="messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content", "name"}:
            raise bad(
                f"messages[{i}] must be an object with 'role' and 'content'", param=f"messages[{i}]"
            )
        if not isinstance(m.get("role"), str) or m["role"] not in ROLES:
            raise bad(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}",
                param=f"messages[{i}].role",
            )
        if not isinstance(m.get("name", ""), str):
            raise bad(f"messages[{i}].name must be a string", param=f"messages[{i}].name")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                for p in content
            ):
                raise bad(
                    f"messages[{i}].content: only text parts are supported",
                    param=f"messages[{i}].content",
                )
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        clean.append({"role": m["role"], "content": content})
    req = GenerationRequest(model=obj.get("model"), messages=clean)
    _common(obj, req, "max_completion_tokens")
    logprobs = obj.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise bad("'logprobs' must be true or false", param="logprobs")
    top = _integer(obj, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not logprobs:
        raise bad("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    req.logprobs = (top or 0) if logprobs else None
    return req


def parse_embedding(body: Any) -> EmbeddingRequest:
    obj = _object(body, EMBEDDING_FIELDS)
    inputs = obj.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(s, str) and s for s in inputs)
    ):
        raise bad(
            "'input' must be a non-empty string or a list of non-empty strings", param="input"
        )
    if len(inputs) > MAX_EMBED_INPUTS:
        raise bad(
            f"'input' holds {len(inputs)} texts; at most {MAX_EMBED_INPUTS} per request",
            param="input",
        )
    fmt = obj.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise bad("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    if obj.get("dimensions") is not None:
        raise bad("'dimensions' is not supported by this model", param="dimensions")
    return EmbeddingRequest(model=obj.get("model"), inputs=inputs, encoding_format=fmt)


READY_WAIT_MAX = 10.0


def ready_wait(value: str | None) -> float:
    """/ready's `wait` query parameter: seconds from 0 to READY_WAIT_MAX (absent: 0)."""
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= READY_WAIT_MAX:  # also refuses nan
        raise ApiError(400, f"wait must be seconds from 0 to {READY_WAIT_MAX:g}", param="wait")
    return seconds
