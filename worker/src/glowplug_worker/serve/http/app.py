"""The HTTP API (Starlette): OpenAI-compatible endpoints plus /health, /ready, /startup and
/metrics. Model work runs in the `model` threads; the event loop only validates, admits and
streams."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from glowplug_worker.serve.engine import Cancelled, Engine, RequestTimeout, Sampling
from glowplug_worker.serve.http import openai, openapi
from glowplug_worker.serve.http.admission import Scheduler, admit
from glowplug_worker.serve.http.generation_run import Delta, GenerationRun
from glowplug_worker.serve.http.protocol import (
    ApiError,
    GenerationRequest,
    bad,
    parse_chat,
    parse_completion,
    parse_embedding,
    ready_wait,
)
from glowplug_worker.serve.metrics import Metrics
from glowplug_worker.serve.startup.state import StartupState

MAX_BODY_BYTES = 1 << 20
BODY_READ_SECONDS = 10.0  # at most: a slow client must not hold a connection and a buffer forever
log = logging.getLogger("glowplug.serve")
_BACKGROUND: set[asyncio.Task[None]] = set()
ModelHandler = Callable[[Request, Engine, float], Awaitable[Response]]


@dataclass
class Service:
    """What the handlers share: startup state, metrics, admission, and the model once loaded."""

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


READY_POLL_SECONDS = 0.01


def timed_out() -> ApiError:
    return ApiError(504, "the request ran past its timeout", type_="timeout_error")


async def read_json(request: Request, seconds: float) -> Any:
    """The JSON body, read only up to MAX_BODY_BYTES and within `seconds`: a larger
    Content-Length is refused before any byte is read, and a body without one (chunked) stops at
    the limit, so an oversized request never sits whole in memory; a body still arriving after
    `seconds` is a 408."""
    too_big = ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise too_big
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise too_big
                chunks.append(chunk)
    except TimeoutError as exc:
        raise ApiError(408, f"the request body did not arrive within {seconds:g} s") from exc
    body = b"".join(chunks)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"the request body is not valid JSON: {exc}") from exc


class ClosingStream(StreamingResponse):
    """A streamed response that runs `on_close` however it ends: finished, failed, or cancelled
    because the client went away, even before the first byte (then the body generator never
    starts, and a `finally` inside it would never run)."""

    def __init__(
        self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(content, media_type="text/event-stream")
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


async def cancel_on_disconnect(request: Request, run: GenerationRun) -> None:
    """Cancel `run` when the client disconnects (the body has been read: the next message the
    server gives is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            run.cancel()
            return


class Routes:
    """The route handlers, over one `Service`."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    # -- probes and metadata ---------------------------------------------------------------

    async def health(self, _: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """`?wait=S`: a not-ready answer is held up to S seconds and given as soon as the model is
        ready. The startup probe asks so: the kubelet then sees the start the moment it ends,
        not at its next probe tick."""
        try:
            wait = ready_wait(request.query_params.get("wait"))
        except ApiError as err:
            return error_response(err)
        state = self.svc.state
        deadline = time.monotonic() + wait
        while not (state.serving or state.draining or state.failed) and time.monotonic() < deadline:
            await asyncio.sleep(READY_POLL_SECONDS)
        snap = state.snapshot()
        body = {
            "ready": snap["ready"],
            "phase": snap["current_phase"],
            "draining": snap["draining"],
        }
        return JSONResponse(body, status_code=200 if snap["ready"] else 503)

    async def startup(self, _: Request) -> Response:
        return JSONResponse(self.svc.state.snapshot())

    async def metrics(self, _: Request) -> Response:
        svc = self.svc
        svc.metrics.queue_depth.set(svc.scheduler.queued)
        svc.metrics.running.set(svc.scheduler.running)
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    async def models(self, _: Request) -> Response:
        return JSONResponse(openai.model_list(self.svc.model_name, self.svc.created))

    async def openapi(self, _: Request) -> Response:
        return JSONResponse(openapi.document(self.svc.model_name))

    # -- model endpoints -------------------------------------------------------------------

    def on_model(
        self, name: str, handler: ModelHandler
    ) -> Callable[[Request], Awaitable[Response]]:
        """`handler` behind the readiness check, with errors as OpenAI error bodies and request
        metrics under `name`."""
        svc = self.svc

        async def run(request: Request) -> Response:
            began = time.monotonic()
            try:
                if not svc.state.serving or svc.engine is None:
                    raise unavailable(svc.state)
                response = await handler(request, svc.engine, began)
            except ApiError as err:
                response = error_response(err)
            except Exception:  # a bug or a model failure: 500, and the server stays up
                # The exception's text stays in the server log: it can hold paths, prompts or
                # internals; the client gets an id to quote.
                error_id = uuid.uuid4().hex[:12]
                log.exception("internal error %s in %s", error_id, name)
                response = error_response(
                    ApiError(
                        500,
                        f"internal error (id {error_id}; the server log has the details)",
                        type_="server_error",
                    )
                )
            svc.metrics.requests.labels(name, str(response.status_code)).inc()
            if not isinstance(response, StreamingResponse):
                svc.metrics.latency.labels(name).observe(time.monotonic() - began)
            return response

        return run

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.svc.model_name:
            raise ApiError(
                404,
                f"the model {name!r} does not exist; this server serves {self.svc.model_name!r}",
                param="model",
                code="model_not_found",
            )

    async def body(self, request: Request) -> Any:
        return await read_json(request, min(BODY_READ_SECONDS, self.svc.request_timeout))

    async def _admit(self, stack: AsyncExitStack, began: float, weight: int = 1) -> None:
        await admit(
            stack,
            self.svc.scheduler,
            self.svc.request_timeout - (time.monotonic() - began),
            weight,
        )

    async def completions(self, request: Request, engine: Engine, began: float) -> Response:
        req = parse_completion(await self.body(request))
        return await self.generation(request, req, engine, began, chat=False)

    async def chat(self, request: Request, engine: Engine, began: float) -> Response:
        req = parse_chat(await self.body(request))
        return await self.generation(request, req, engine, began, chat=True)

    async def generation(
        self, request: Request, req: GenerationRequest, engine: Engine, began: float, chat: bool
    ) -> Response:
        svc = self.svc
        if svc.task != "generate":
            raise bad("this server embeds (--task embed); use /v1/embeddings", param="model")
        self.check_model(req.model)
        if req.n > svc.scheduler.max_running:
            raise bad(
                f"'n' is {req.n}; this server runs at most {svc.scheduler.max_running} "
                "sequences at once (--max-concurrency)",
                param="n",
            )
        # Admitted first: the chat template and the tokenizer run after, in the model threads,
        # so a flood of long prompts waits (or gets 429) instead of piling up work, and the
        # event loop (/ready, the other streams) never runs them.
        stack = AsyncExitStack()
        await self._admit(stack, began, req.n)
        try:
            loop = asyncio.get_running_loop()
            ids = await loop.run_in_executor(
                svc.pool, lambda: engine.encode(self._prompt(req, engine, chat))
            )
            max_tokens = self._max_tokens(req, engine, len(ids), chat)
            samplings = [
                Sampling(
                    max_tokens,
                    req.temperature,
                    req.top_p,
                    None if req.seed is None else req.seed + i,
                    req.stop,
                    req.ignore_eos,
                    req.logprobs,
                    req.json_object,
                )
                for i in range(req.n)
            ]
            run = GenerationRun(svc, engine, ids, samplings, began, "chatcmpl" if chat else "cmpl")
            run.start(loop)
        except BaseException:
            await stack.aclose()
            raise
        if req.stream:

            async def close() -> None:
                run.cancel()
                await stack.aclose()

            return ClosingStream(self.stream(run, req, chat), close)
        async with stack:
            watcher = asyncio.create_task(cancel_on_disconnect(request, run))
            try:
                results = await run.collect()
            except RequestTimeout as exc:
                raise timed_out() from exc
            except Cancelled as exc:
                raise ApiError(499, "the client closed the request") from exc
            finally:
                watcher.cancel()
                run.cancel()
        body = openai.completion(
            chat=chat,
            rid=run.id,
            model=svc.model_name,
            results=results,
            prompt_n=len(ids),
            logprobs=req.logprobs is not None,
        )
        return JSONResponse(body)

    @staticmethod
    def _prompt(req: GenerationRequest, engine: Engine, chat: bool) -> str:
        if not chat:
            return req.prompt or ""
        try:
            return engine.chat_prompt(req.messages or [])
        except ValueError as exc:
            raise bad(str(exc), param="messages") from exc
        except Exception as exc:
            # A template error is the messages' problem as far as the client can act on it: a
            # 400. `raise_exception(...)` carries its author's words for the user; any other
            # failure's text (paths, internals, the prompt) stays in the server log.
            jinja = type(exc).__module__.startswith("jinja2")
            if jinja and type(exc).__name__ == "TemplateError":
                raise bad(
                    f"the chat template refused the messages: {exc}", param="messages"
                ) from exc
            error_id = uuid.uuid4().hex[:12]
            log.warning("chat template error %s: %r", error_id, exc)
            raise bad(
                f"the chat template could not render these messages (id {error_id}; the "
                "server log has the details)",
                param="messages",
                code="chat_template_error",
            ) from exc

    @staticmethod
    def _max_tokens(req: GenerationRequest, engine: Engine, prompt_n: int, chat: bool) -> int:
        """The request's max_tokens, checked against the room the context leaves."""
        room = engine.max_model_len - prompt_n
        if room < 1:
            raise bad(
                f"the prompt is {prompt_n} tokens; this model's context is {engine.max_model_len}",
                param="messages" if chat else "prompt",
                code="context_length_exceeded",
            )
        max_tokens = req.max_tokens if req.max_tokens is not None else min(room, 256)
        if max_tokens > room:
            raise bad(
                f"prompt ({prompt_n} tokens) + max_tokens ({max_tokens}) exceeds this "
                f"model's context of {engine.max_model_len} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return max_tokens

    async def stream(
        self, run: GenerationRun, req: GenerationRequest, chat: bool
    ) -> AsyncIterator[str]:
        """A generation as server-sent events. The slots are released by `ClosingStream`, which
        also cancels the run when the client goes away (before or during the stream)."""
        model = self.svc.model_name
        sent = [0] * run.n  # characters sent per choice (the completions API's text_offset)

        def piece(delta: Delta | None, finish: str | None = None, index: int = 0) -> str:
            lp = None
            if delta is not None and delta.logprobs:
                lp = openai.logprobs_body(chat, delta.logprobs, sent[delta.index])
            if delta is not None:
                sent[delta.index] += len(delta.text)
                index = delta.index
            body = openai.chunk(
                chat=chat,
                rid=run.id,
                model=model,
                delta=None if delta is None else delta.text,
                finish=finish,
                index=index,
                logprobs=lp,
            )
            return openai.event(body)

        try:
            if chat:
                for i in range(run.n):
                    body = openai.chunk(
                        chat=chat,
                        rid=run.id,
                        model=model,
                        delta=None,
                        finish=None,
                        first=True,
                        index=i,
                    )
                    yield openai.event(body)
            async for kind, value in run.events():
                if kind == "delta" and (value.text or value.logprobs):
                    yield piece(value)
                elif kind == "done":
                    index, finish, _ = value
                    yield piece(None, finish, index)
            if req.include_usage:
                body = openai.usage_chunk(
                    chat=chat, rid=run.id, model=model, prompt_n=len(run.prompt_ids), n=run.tokens
                )
                yield openai.event(body)
        except RequestTimeout:
            yield openai.event(timed_out().body())
        except Cancelled:
            return
        finally:
            self.svc.metrics.latency.labels("chat" if chat else "completions").observe(
                time.monotonic() - run.began
            )
        yield openai.DONE_EVENT

    async def embeddings(self, request: Request, engine: Engine, began: float) -> Response:
        svc = self.svc
        req = parse_embedding(await self.body(request))
        if svc.task != "embed":
            raise bad(
                "this server generates text (--task generate); /v1/embeddings needs a "
                "server started with --task embed",
                param="model",
            )
        self.check_model(req.model)
        stack = AsyncExitStack()
        await self._admit(stack, began)
        async with stack:
            loop = asyncio.get_running_loop()
            deadline = began + svc.request_timeout
            work = loop.run_in_executor(svc.pool, engine.embed, req.inputs, deadline)
            remaining = deadline - time.monotonic()
            try:
                vectors, tokens = await asyncio.wait_for(asyncio.shield(work), max(remaining, 0))
            except RequestTimeout as exc:
                raise timed_out() from exc
            except TimeoutError as exc:
                # The batch stops at its next chunk (`Engine.embed`); its slot stays taken until
                # then, so the server never runs more than --max-concurrency batches at once.
                held = stack.pop_all()

                def release(_: object) -> None:
                    task = loop.create_task(held.aclose())
                    _BACKGROUND.add(task)  # referenced until done
                    task.add_done_callback(_BACKGROUND.discard)

                work.add_done_callback(release)
                raise timed_out() from exc
        svc.metrics.prompt_tokens.inc(tokens)
        body = openai.embeddings(
            vectors, model=svc.model_name, tokens=tokens, encoding_format=req.encoding_format
        )
        return JSONResponse(body)

    # -- errors outside the routes ---------------------------------------------------------

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return error_response(ApiError(404, f"no route {request.url.path}", type_="not_found"))

    async def bad_method(self, request: Request, exc: Exception) -> Response:
        return error_response(
            ApiError(405, f"method {request.method} is not allowed on {request.url.path}")
        )


def build_app(svc: Service) -> Starlette:
    r = Routes(svc)
    routes = [
        Route("/health", r.health),
        Route("/ready", r.ready),
        Route("/startup", r.startup),
        Route("/metrics", r.metrics),
        Route("/v1/models", r.models),
        Route("/openapi.json", r.openapi),
        Route("/v1/completions", r.on_model("completions", r.completions), methods=["POST"]),
        Route("/v1/chat/completions", r.on_model("chat", r.chat), methods=["POST"]),
        Route("/v1/embeddings", r.on_model("embeddings", r.embeddings), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: r.not_found, 405: r.bad_method})
