"""The HTTP API (Starlette): OpenAI-compatible endpoints plus /health, /ready, /startup and
/metrics. Model work runs in worker threads; the event loop only validates, admits and streams."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from glowplug_worker.serve.engine import Engine, RequestTimeout, Sampling
from glowplug_worker.serve.generation_run import GenerationRun
from glowplug_worker.serve.metrics import Metrics
from glowplug_worker.serve.protocol import (
    ApiError,
    GenerationRequest,
    bad,
    parse_chat,
    parse_completion,
    parse_embedding,
)
from glowplug_worker.serve.scheduler import Overloaded, Scheduler
from glowplug_worker.serve.state import StartupState

MAX_BODY_BYTES = 1 << 20


@dataclass
class Service:
    state: StartupState
    metrics: Metrics
    scheduler: Scheduler
    model_name: str
    task: str
    request_timeout: float
    engine: Engine | None = None
    pool: ThreadPoolExecutor | None = None
    created: int = field(default_factory=lambda: int(time.time()))


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def unavailable(state: StartupState) -> ApiError:
    if state.draining:
        return ApiError(503, "the server is shutting down", type_="service_unavailable")
    return ApiError(
        503,
        f"the model is not ready yet (startup phase: {state.current})",
        type_="service_unavailable",
    )


def build_app(svc: Service) -> Starlette:
    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        snap = svc.state.snapshot()
        body = {
            "ready": snap["ready"],
            "phase": snap["current_phase"],
            "draining": snap["draining"],
        }
        return JSONResponse(body, status_code=200 if snap["ready"] else 503)

    async def startup(_: Request) -> Response:
        return JSONResponse(svc.state.snapshot())

    async def metrics(_: Request) -> Response:
        svc.metrics.queue_depth.set(svc.scheduler.queued)
        svc.metrics.running.set(svc.scheduler.running)
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    async def models(_: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": svc.model_name,
                        "object": "model",
                        "created": svc.created,
                        "owned_by": "glowplug",
                    }
                ],
            }
        )

    def endpoint(name: str, handler: Callable[[Request, Engine, float], Any]) -> Any:
        async def run(request: Request) -> Response:
            began = time.monotonic()
            try:
                if not svc.state.serving or svc.engine is None:
                    raise unavailable(svc.state)
                response: Response = await handler(request, svc.engine, began)
            except ApiError as err:
                response = error_response(err)
            except Exception as exc:  # a bug or a model failure: 500, and the server stays up
                response = error_response(
                    ApiError(
                        500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error"
                    )
                )
            svc.metrics.requests.labels(name, str(response.status_code)).inc()
            if not isinstance(response, StreamingResponse):
                svc.metrics.latency.labels(name).observe(time.monotonic() - began)
            return response

        return run

    async def read_json(request: Request) -> Any:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad(f"the request body is not valid JSON: {exc}") from exc

    def check_model(name: str | None) -> None:
        if name is not None and name != svc.model_name:
            raise ApiError(
                404,
                f"the model {name!r} does not exist; this server serves {svc.model_name!r}",
                param="model",
                code="model_not_found",
            )

    async def completions(request: Request, engine: Engine, began: float) -> Response:
        return await generation(
            parse_completion(await read_json(request)), engine, began, chat=False
        )

    async def chat(request: Request, engine: Engine, began: float) -> Response:
        return await generation(parse_chat(await read_json(request)), engine, began, chat=True)

    async def generation(
        req: GenerationRequest, engine: Engine, began: float, chat: bool
    ) -> Response:
        if svc.task != "generate":
            raise bad("this server embeds (--task embed); use /v1/embeddings", param="model")
        check_model(req.model)
        if chat:
            try:
                prompt = engine.chat_prompt(req.messages or [])
            except ValueError as exc:
                raise bad(str(exc), param="messages") from exc
        else:
            prompt = req.prompt or ""
        ids = engine.encode(prompt)
        room = engine.max_model_len - len(ids)
        if room < 1:
            raise bad(
                f"the prompt is {len(ids)} tokens; this model's context is {engine.max_model_len}",
                param="messages" if chat else "prompt",
                code="context_length_exceeded",
            )
        max_tokens = req.max_tokens if req.max_tokens is not None else min(room, 256)
        if max_tokens > room:
            raise bad(
                f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds this "
                f"model's context of {engine.max_model_len} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        sampling = Sampling(
            max_tokens, req.temperature, req.top_p, req.seed, req.stop, req.ignore_eos
        )
        stack = AsyncExitStack()
        await admit(stack, began)
        run = GenerationRun(svc, engine, ids, sampling, began, "chatcmpl" if chat else "cmpl")
        run.start(asyncio.get_running_loop())
        if req.stream:
            return StreamingResponse(sse(run, stack, req, chat), media_type="text/event-stream")
        try:
            async with stack:
                text, finish, n = await run.collect()
        except RequestTimeout as exc:
            raise ApiError(504, "the request ran past its timeout", type_="timeout_error") from exc
        return JSONResponse(completion_body(chat, run.id, text, finish, len(ids), n))

    async def admit(stack: AsyncExitStack, began: float) -> None:
        remaining = svc.request_timeout - (time.monotonic() - began)
        try:
            await stack.enter_async_context(svc.scheduler.slot(max(remaining, 0.001)))
        except Overloaded as exc:
            raise ApiError(
                429,
                "the server is at capacity; retry later",
                type_="rate_limit_error",
                code="overloaded",
            ) from exc
        except TimeoutError as exc:
            raise ApiError(504, "timed out waiting for a free slot", type_="timeout_error") from exc

    def completion_body(
        chat: bool, rid: str, text: str, finish: str, prompt_n: int, n: int
    ) -> dict[str, Any]:
        usage = {"prompt_tokens": prompt_n, "completion_tokens": n, "total_tokens": prompt_n + n}
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "finish_reason": finish,
                "logprobs": None,
                "message": {"role": "assistant", "content": text},
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": svc.model_name,
            "choices": [choice],
            "usage": usage,
        }

    async def sse(
        run: GenerationRun, stack: AsyncExitStack, req: GenerationRequest, chat: bool
    ) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                d: dict[str, Any] = (
                    {"role": "assistant", "content": ""}
                    if first
                    else ({} if delta is None else {"content": delta})
                )
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": d,
                    "finish_reason": finish,
                    "logprobs": None,
                }
            else:
                choice = {
                    "index": 0,
                    "text": delta or "",
                    "finish_reason": finish,
                    "logprobs": None,
                }
            body = {
                "id": run.id,
                "object": obj,
                "created": int(time.time()),
                "model": svc.model_name,
                "choices": [choice],
            }
            return f"data: {json.dumps(body)}\n\n"

        try:
            async with stack:
                if chat:
                    yield chunk(None, None, first=True)
                async for kind, value in run.events():
                    if kind == "delta" and value:
                        yield chunk(value, None)
                    elif kind == "done":
                        yield chunk(None, value)
                if req.include_usage:
                    usage = {
                        "prompt_tokens": len(run.prompt_ids),
                        "completion_tokens": run.tokens,
                        "total_tokens": len(run.prompt_ids) + run.tokens,
                    }
                    yield (
                        "data: "
                        + json.dumps(
                            {
                                "id": run.id,
                                "object": obj,
                                "created": int(time.time()),
                                "model": svc.model_name,
                                "choices": [],
                                "usage": usage,
                            }
                        )
                        + "\n\n"
                    )
        except RequestTimeout:
            err = ApiError(504, "the request ran past its timeout", type_="timeout_error")
            yield f"data: {json.dumps(err.body())}\n\n"
        finally:
            run.cancel.set()
            svc.metrics.latency.labels("chat" if chat else "completions").observe(
                time.monotonic() - run.began
            )
        yield "data: [DONE]\n\n"

    async def embeddings(request: Request, engine: Engine, began: float) -> Response:
        req = parse_embedding(await read_json(request))
        if svc.task != "embed":
            raise bad(
                "this server generates text (--task generate); /v1/embeddings needs a "
                "server started with --task embed",
                param="model",
            )
        check_model(req.model)
        stack = AsyncExitStack()
        await admit(stack, began)
        async with stack:
            loop = asyncio.get_running_loop()
            vectors, tokens = await loop.run_in_executor(svc.pool, engine.embed, req.inputs)
        svc.metrics.prompt_tokens.inc(tokens)
        data = []
        for i, vec in enumerate(vectors):
            emb: Any = vec
            if req.encoding_format == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": svc.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(ApiError(404, f"no route {request.url.path}", type_="not_found"))

    async def bad_method(request: Request, exc: Exception) -> Response:
        return error_response(
            ApiError(405, f"method {request.method} is not allowed on {request.url.path}")
        )

    routes = [
        Route("/health", health),
        Route("/ready", ready),
        Route("/startup", startup),
        Route("/metrics", metrics),
        Route("/v1/models", models),
        Route("/v1/completions", endpoint("completions", completions), methods=["POST"]),
        Route("/v1/chat/completions", endpoint("chat", chat), methods=["POST"]),
        Route("/v1/embeddings", endpoint("embeddings", embeddings), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})
