"""The worker's OpenAPI 3.1 document (`GET /openapi.json`): what each route takes and answers,
written from the limits `protocol` enforces, so that clients, and the fuzz suite in
tests/serve/test_api_fuzz.py, can check one against the other."""

from __future__ import annotations

from typing import Any

from glowplug_worker.serve.http import protocol as p

# What `protocol` accepts for a field it does not implement: nothing, or an empty value.
EMPTY_VALUES: list[Any] = [None, False, 0, "", {}, []]


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or null (the field's default)."""
    return {"anyOf": [schema, {"type": "null"}]}


def _common() -> dict[str, Any]:
    non_empty = {"type": "string", "minLength": 1}
    return {
        "model": _nullable({"type": "string", "description": "the served model's name"}),
        "max_tokens": _nullable({"type": "integer", "minimum": 1}),
        "temperature": _nullable({"type": "number", "minimum": 0, "maximum": 2}),
        "top_p": _nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
        "n": _nullable({"type": "integer", "minimum": 1, "maximum": p.MAX_N}),
        "stream": {"type": "boolean"},
        "stream_options": _nullable(
            {
                "type": "object",
                "properties": {"include_usage": {"type": "boolean"}},
                "additionalProperties": False,
            }
        ),
        "stop": _nullable(
            {"anyOf": [non_empty, {"type": "array", "items": non_empty, "maxItems": p.MAX_STOP}]}
        ),
        "seed": _nullable({"type": "integer", "minimum": p.SEED_MIN, "maximum": p.SEED_MAX}),
        "user": _nullable({"type": "string"}),
        "presence_penalty": _nullable({"const": 0, "description": "not supported: 0 or absent"}),
        "frequency_penalty": _nullable({"const": 0, "description": "not supported: 0 or absent"}),
        "ignore_eos": {"type": "boolean", "description": "generate exactly max_tokens (vLLM's)"},
        "response_format": _nullable(
            {
                "type": "object",
                "properties": {"type": {"enum": ["text", "json_object"]}},
                "required": ["type"],
            }
        ),
        **{
            name: {"enum": EMPTY_VALUES, "description": "not supported: absent or empty"}
            for name in sorted(p.UNSUPPORTED)
        },
    }


def _request(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def completion_request() -> dict[str, Any]:
    prompt = {"type": "string", "minLength": 1}
    return _request(
        {
            **_common(),
            "prompt": {
                "anyOf": [prompt, {"type": "array", "items": prompt, "minItems": 1, "maxItems": 1}]
            },
            "logprobs": _nullable(
                {"type": "integer", "minimum": 0, "maximum": p.MAX_COMPLETION_LOGPROBS}
            ),
        },
        ["prompt"],
    )


def chat_request() -> dict[str, Any]:
    text_part = {
        "type": "object",
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
        "required": ["type", "text"],
    }
    message = {
        "type": "object",
        "properties": {
            "role": {"enum": sorted(p.ROLES)},
            "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": text_part}]},
            "name": {"type": "string"},
        },
        "required": ["role", "content"],
        "additionalProperties": False,
    }
    schema = _request(
        {
            **_common(),
            "messages": {"type": "array", "items": message, "minItems": 1},
            "max_completion_tokens": _nullable({"type": "integer", "minimum": 1}),
            "logprobs": _nullable({"type": "boolean"}),
            "top_logprobs": _nullable(
                {"type": "integer", "minimum": 0, "maximum": p.MAX_TOP_LOGPROBS}
            ),
        },
        ["messages"],
    )
    # top_logprobs (other than null) needs logprobs: true.
    schema["dependentSchemas"] = {
        "top_logprobs": {
            "anyOf": [
                {"properties": {"top_logprobs": {"type": "null"}}},
                {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]},
            ]
        }
    }
    return schema


def embedding_request() -> dict[str, Any]:
    text = {"type": "string", "minLength": 1}
    return _request(
        {
            "model": _nullable({"type": "string"}),
            "input": {
                "anyOf": [
                    text,
                    {"type": "array", "items": text, "minItems": 1, "maxItems": p.MAX_EMBED_INPUTS},
                ]
            },
            "encoding_format": {"enum": ["float", "base64"]},
            "user": _nullable({"type": "string"}),
            "dimensions": {"type": "null", "description": "not supported"},
        },
        ["input"],
    )


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "invalid request: `error.param` names the field",
        404: "the model named is not the one served",
        413: "body over 1 MiB",
        408: "the body did not arrive in time",
        429: "the queue is full",
        503: "not ready yet, or draining",
        504: "the request ran past its timeout",
    }
    error = {"$ref": "#/components/schemas/Error"}
    return {
        str(code): {
            "description": meaning[code],
            "content": {"application/json": {"schema": error}},
        }
        for code in codes
    }


def _post(summary: str, schema: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                },
            },
            "responses": {
                "200": {"description": "the result (server-sent events when `stream` is true)"},
                **_errors(400, 404, 408, 413, 429, 503, 504),
            },
        }
    }


def _get(summary: str, codes: tuple[int, ...] = ()) -> dict[str, Any]:
    return {
        "get": {"summary": summary, "responses": {"200": {"description": "OK"}, **_errors(*codes)}}
    }


def _ready() -> dict[str, Any]:
    operation = _get("readiness: the model is loaded and warm", (400, 503))
    operation["get"]["parameters"] = [
        {
            "name": "wait",
            "in": "query",
            "required": False,
            "description": "hold a not-ready answer up to this many seconds, answering as soon "
            "as the model is ready (the startup probe's way to see the start end at once)",
            "schema": {"type": "number", "minimum": 0, "maximum": p.READY_WAIT_MAX},
        }
    ]
    return operation


def document(model_name: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": f"glowplug worker serving {model_name}", "version": "v1"},
        "paths": {
            "/health": _get("liveness: the process answers"),
            "/ready": _ready(),
            "/startup": _get("the startup phases and their timings"),
            "/metrics": _get("Prometheus metrics"),
            "/v1/models": _get("the served model"),
            "/openapi.json": _get("this document"),
            "/v1/completions": _post("text completion", "CompletionRequest"),
            "/v1/chat/completions": _post("chat completion", "ChatCompletionRequest"),
            "/v1/embeddings": _post(
                "embeddings (a server started with --task embed)", "EmbeddingRequest"
            ),
        },
        "components": {
            "schemas": {
                "CompletionRequest": completion_request(),
                "ChatCompletionRequest": chat_request(),
                "EmbeddingRequest": embedding_request(),
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]},
                            },
                            "required": ["message", "type", "param", "code"],
                        }
                    },
                    "required": ["error"],
                },
            }
        },
    }
