"""An OpenAI-compatible HTTP server on the in-process engine: `/v1/chat/completions`, `/v1/models`, `/health`.

Run it with `python serve.py [--model PATH_OR_ID] [--host 127.0.0.1] [--port 8000] [--api-key KEY]`.
Off loopback it refuses to start without an API key. The HTTP layer is thin: validation, text and
response shapes live in `protocol.py`, queueing and batching in the scheduler. Every response
carries an `X-Request-Id`, every request leaves one access-log line, and a client that goes away
frees its place in the queue at once (its generation is stopped and its token iterator closed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gptq_chat.api.access import API_KEY, API_KEY_ENV, add_server_flags, exposure_problem, secret_matches
from gptq_chat.api.logprobs import scores_of
from gptq_chat.api.metrics import ServerMetrics
from gptq_chat.api.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    Job,
    ServedModel,
    invalid_body,
    validate,
    validate_completion,
)
from gptq_chat.api.responses import CHAT, TEXT, Answer, Completion, completion_text, finish_reason, model_list
from gptq_chat.chat.tool_calls import ToolCallDelta
from gptq_chat.engine.protocols import ScoredToken
from gptq_chat.engine.scheduler import OutOfMemory, QueueFull
from gptq_chat.loading.options import add_model_flags, load_options

log = logging.getLogger("serve")
access_log = logging.getLogger("serve.access")

LOADING_RETRY_S = 10  # Retry-After while the model loads or the server restarts
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a client's own X-Request-Id is kept if it looks like one
OPEN_PATHS = ("/health",)  # probes need no key; they show counts, never chats
COUNTED_PATHS = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions")


# -- state ---------------------------------------------------------------------------------------------------


class ServerState:
    """The served model (None while it loads), why loading failed, and whether the server is stopping."""

    def __init__(self, model: ServedModel | None) -> None:
        self.model = model
        self.load_error: str | None = None
        self.shutting_down = False

    def load_with(self, load: Callable[[], ServedModel]) -> None:
        """Load in the background, so that /health answers (503, loading) from the first second."""
        try:
            self.model = load()
            log.info("Serving %s (context %d tokens)", self.model.name, self.model.context_length)
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            log.exception("The model could not be loaded")

    def ready(self) -> ServedModel:
        """The model, or the 503 that says why there is none."""
        if self.shutting_down:
            raise ApiError(503, "The server is shutting down.", "server_error", code="shutting_down")
        if self.model is None:
            problem = f"failed to load ({self.load_error})" if self.load_error else "is still loading"
            retry = None if self.load_error else LOADING_RETRY_S
            raise ApiError(503, f"The model {problem}.", "server_error", code="model_not_loaded", retry_after=retry)
        return self.model

    def health(self) -> dict[str, Any]:
        if self.shutting_down:
            status = "shutting_down"
        elif self.model is None:
            status = "failed" if self.load_error else "loading"
        else:
            status = "ok"
        body: dict[str, Any] = {"status": status}
        if self.model is not None:
            body |= {"model": self.model.name, **asdict(self.model.scheduler.stats())}
        if self.load_error:
            body["error"] = self.load_error
        return body


# -- middleware ------------------------------------------------------------------------------------------


def error_response(error: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(math.ceil(error.retry_after))} if error.retry_after is not None else None
    if error.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class RequireKey:
    """Every path but /health needs `Authorization: Bearer <key>` when the server has a key."""

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key and scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            scheme, _, given = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secret_matches(given.strip(), self.key):
                problem = "Incorrect API key provided." if given else "You didn't provide an API key."
                message = f"{problem} Send it as 'Authorization: Bearer <key>'."
                await error_response(ApiError(401, message, code="invalid_api_key"))(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestLog:
    """A request id for every request (the client's `X-Request-Id` or a new one), one access-log line, and the
    request counted by path and status."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 0
        complete = False  # the whole response went out: else the client left mid-stream
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
                path = scope["path"] if scope["path"] in COUNTED_PATHS else "other"  # no label per probed URL
                self.metrics.requests.labels(path, str(status)).inc()  # before the client can see the answer
                MutableHeaders(scope=message).append("X-Request-Id", request_id)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            client = scope.get("client") or ("-", 0)
            completion: Completion | None = state.get("completion")
            tokens = (
                f" prompt={completion.prompt_tokens} completion={completion.completion_tokens} "
                f"finish={completion.finish_reason if complete else 'disconnected'}"
                if completion
                else ""
            )
            access_log.info(
                '%s %s "%s %s" %d %.3fs%s',
                request_id,
                client[0],
                scope["method"],
                scope["path"],
                status,
                time.perf_counter() - started,
                tokens,
            )


# -- the token stream, off the event loop ----------------------------------------------------------------

_DONE = object()


class ThreadedText:
    """A blocking iterator of text pieces, run in its own thread and read asynchronously.

    The thread owns the iterator: it closes it when the text ends or `stop` is set, which frees the
    request's place in the scheduler. `close()` (the client went away) sets `stop` and returns at once.
    Started as soon as it is made, so an admitted request always runs (and is always accounted for).
    """

    def __init__(self, pieces: Iterator[str], stop: threading.Event) -> None:
        self.stop = stop
        self.loop = asyncio.get_running_loop()
        self.items: asyncio.Queue[Any] = asyncio.Queue()
        threading.Thread(target=self.produce, args=(pieces,), name="api-reply", daemon=True).start()

    def produce(self, pieces: Iterator[str]) -> None:
        item: Any = _DONE
        try:
            for piece in pieces:
                self.put(piece)
                if self.stop.is_set():
                    break
        except Exception as error:  # handed to the reader
            item = error
        finally:
            pieces.close()  # type: ignore[attr-defined]
        self.put(item)

    def put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody reads any more
            self.stop.set()

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            while (item := await self.items.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()


class EventStream(StreamingResponse):
    """Server-sent events; whatever ends the response (the end, a client gone, shutdown) runs `on_close`."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def sse_events(
    text: ThreadedText, answer: Answer, served: ServedModel, answer_id: str, job: Job, result: Completion
) -> AsyncIterator[str]:
    """The opening chunk at once, a chunk per text piece, the finish chunk, the usage chunk if asked, [DONE]. A chunk
    carries the log-probabilities of the tokens read since the previous chunk, when they were asked for."""
    model, with_usage = served.name, job.include_usage
    opening = answer.opening(answer_id, model, with_usage)
    if opening is not None:
        yield event(opening)
    calls = job.tools.stream() if job.tools is not None else None  # reads tool calls out of the text
    write = answer.logprobs(served.spelling) if job.sampling.logprobs is not None else None
    scored: list[ScoredToken] = []

    def chunk(item: str | ToolCallDelta) -> str:
        logprobs = write(scored) if write is not None else None
        scored.clear()
        return event(answer.chunk(answer_id, model, item, with_usage=with_usage, logprobs=logprobs))

    try:
        async for piece in text:
            scored.extend(scores_of([piece]))
            for item in [piece] if calls is None else calls.push(piece):
                yield chunk(item)
        for item in calls.finish() if calls is not None else []:
            yield chunk(item)
    except Exception as error:  # the 200 is sent already: the failure goes in the stream, as vLLM does
        log.exception("Generation failed mid-stream")
        yield event(generation_error(error).body())
        return
    reason = finish_reason(result, bool(calls and calls.calls))
    yield event(answer.chunk(answer_id, model, None, reason, with_usage=with_usage))
    if with_usage:
        yield event(answer.usage_chunk(answer_id, model, result))
    yield "data: [DONE]\n\n"


def generation_error(error: Exception) -> ApiError:
    """A failure while generating, as the client is told it: the card out of memory is a 503 to retry (the server
    goes on serving), anything else a 500."""
    if isinstance(error, OutOfMemory):
        return ApiError(503, str(error), "server_error", code="out_of_memory", retry_after=LOADING_RETRY_S)
    return ApiError(500, f"Generation failed: {error}", "server_error")


async def collect(text: ThreadedText, request: Request) -> list[str]:
    """The text's pieces, stopping early if the client disconnects while it waits."""
    pieces = []
    try:
        async for piece in text:
            pieces.append(piece)
            if await request.is_disconnected():
                break
    finally:
        text.close()
    return pieces


# -- the app ---------------------------------------------------------------------------------------------


def create_app(
    model: ServedModel | None = None,
    *,
    api_key: str | None = None,
    load: Callable[[], ServedModel] | None = None,
) -> FastAPI:
    """The API over `model`, or over what `load` returns once it has loaded (503 until then)."""
    state = ServerState(model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load is not None:
            threading.Thread(target=state.load_with, args=(load,), name="load-model", daemon=True).start()
        yield
        state.shutting_down = True

    app = FastAPI(title="Qwen GPTQ Chat API", lifespan=lifespan)
    app.state.server = state
    metrics = ServerMetrics(lambda: state.model.scheduler.stats() if state.model is not None else None)
    app.add_middleware(RequireKey, key=api_key)
    app.add_middleware(RequestLog, metrics=metrics)  # outermost: refusals get a request id, a log line, a count

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(invalid_body(list(error.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind = "invalid_request_error" if error.status_code < 500 else "server_error"
        return error_response(ApiError(error.status_code, str(error.detail), kind))

    @app.exception_handler(OutOfMemory)
    async def out_of_memory(request: Request, error: OutOfMemory) -> JSONResponse:
        return error_response(generation_error(error))

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("Unhandled error")
        return error_response(ApiError(500, f"Internal error: {type(error).__name__}: {error}", "server_error"))

    @app.get("/health")
    async def health() -> JSONResponse:
        body = state.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return model_list(state.ready())

    async def respond(served: ServedModel, job: Job, answer: Answer, request: Request) -> Response:
        """Queue `job`, then answer in `answer`'s shape: streamed, or whole once the text ends."""
        stop = threading.Event()
        try:
            tokens = served.scheduler.generate(job.prompt_ids, job.sampling, stop)
        except QueueFull as full:
            raise ApiError(
                429, str(full), "rate_limit_error", code="queue_full", retry_after=full.retry_after
            ) from None
        result = Completion(prompt_tokens=len(job.prompt_ids))
        request.state.completion = result
        tokens = metrics.timed(tokens, result)
        text = ThreadedText(completion_text(tokens, served.tokenizer, job, result), stop)
        answer_id = answer.id_prefix + request.state.request_id
        if job.stream:
            return EventStream(sse_events(text, answer, served, answer_id, job, result), on_close=text.close)
        pieces = await collect(text, request)
        whole = "".join(pieces)
        logprobs = answer.logprobs(served.spelling)(scores_of(pieces)) if job.sampling.logprobs is not None else None
        if job.tools is None:
            return JSONResponse(answer.response(answer_id, served.name, whole, result, logprobs=logprobs))
        parsed = job.tools.parse(whole)
        body = answer.response(answer_id, served.name, parsed.text, result, parsed.tool_calls, logprobs)
        return JSONResponse(body)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        served = state.ready()
        return await respond(served, validate(body, served), CHAT, request)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        served = state.ready()
        return await respond(served, validate_completion(body, served), TEXT, request)

    return app


# -- the command -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a GPTQ-Int4 model over an OpenAI-compatible HTTP API.")
    add_model_flags(parser)
    add_server_flags(parser, 8000, API_KEY)
    parser.add_argument("--served-model-name", help="the name clients pass as `model` (default: the folder's name)")
    parser.add_argument("--queue-limit", type=int, default=None, help="requests that may wait; more get 429")
    return parser.parse_args(argv)


class Server(uvicorn.Server):
    """uvicorn's server, answering 503 to new requests from the moment Ctrl-C or SIGTERM arrives."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.state.shutting_down = True
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    key = args.api_key or os.environ.get(API_KEY_ENV)
    problem = exposure_problem(args.host, key, API_KEY)
    if problem:
        sys.exit(f"Error: {problem}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from gptq_chat.loading.checkpoint import CheckpointError, find_checkpoint
    from gptq_chat.models.installed import default_model

    reference = default_model(args.model)
    if reference is None:
        from gptq_chat.models.demo_model import build_demo_model

        log.info("No downloaded model: building the demo model (a few minutes, first time only)")
        reference = str(build_demo_model())
    try:
        info = find_checkpoint(reference)
    except CheckpointError as error:
        sys.exit(f"Error: {error}")
    name = args.served_model_name or info.name

    def load_model() -> ServedModel:
        from gptq_chat.loading.loader import load

        loaded = load(info.path, **load_options(args))
        if args.queue_limit is not None:
            loaded.scheduler.queue_limit = args.queue_limit  # the loader makes its scheduler with the default
        return ServedModel.of(loaded, name)

    app = create_app(api_key=key, load=load_model)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"OpenAI-compatible API for '{name}' at http://{shown}:{args.port}/v1 (health: /health)", flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, access_log=False, timeout_graceful_shutdown=30)
    signal.signal(signal.SIGTERM, stop_as_asked)
    try:
        Server(config, app.state.server).run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C or SIGTERM once it has stopped; stopping was asked for
        log.info("Stopped")


def stop_as_asked(signum: int, frame: Any) -> None:
    """SIGTERM (a service manager, `docker stop`) ends the process as Ctrl-C does: once uvicorn has finished the
    replies being written and re-raises it, with "Stopped" and exit status 0, not killed by the signal."""
    raise KeyboardInterrupt
