"""Replies from any OpenAI-compatible server (our serve.py, vLLM, SGLang, Ollama), streamed like local ones.

`stream_remote_reply` returns a `chat.Reply`, so the page streams, stops and saves it exactly as a
reply from the model in this process; stopping it closes the HTTP stream, which frees the server's
slot. Failures are `RemoteError`s whose message says what went wrong and what to check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import openai

from gptq_chat.chat.attachments import documents_estimated
from gptq_chat.chat.prompt import Message, with_system
from gptq_chat.chat.reply import ChatSettings, Reply, ReplyStats

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0  # a queued request may wait long for its first token


class RemoteError(RuntimeError):
    """The server could not be reached or refused the request; the message says why."""


@dataclass(frozen=True)
class RemoteServer:
    """Where the replies come from: an OpenAI-compatible base URL and its API key (may be empty)."""

    base_url: str
    api_key: str = ""

    @property
    def url(self) -> str:
        """The base URL with `/v1` added when only a host was given (`http://host:8000`)."""
        url = self.base_url.strip().rstrip("/")
        if "://" not in url:
            url = f"http://{url}"
        return url if urlsplit(url).path else f"{url}/v1"

    def client(self) -> openai.OpenAI:
        """No retries: a person is waiting, and a refused connection should say so at once."""
        timeout = openai.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        return openai.OpenAI(base_url=self.url, api_key=self.api_key or "none", max_retries=0, timeout=timeout)


@dataclass(frozen=True)
class RemoteModel:
    id: str
    context_length: int | None  # `max_model_len` where the server reports it (ours and vLLM do)


def explain(error: openai.OpenAIError, server: RemoteServer, model: str | None = None) -> RemoteError:
    """An openai client error as one sentence for the page."""
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error
        return RemoteError(f"Cannot reach {server.url} ({cause}). Is the server running, and is the address right?")
    body = getattr(error, "body", None)
    detail = body.get("message") if isinstance(body, dict) and body.get("message") else str(error)
    if isinstance(error, openai.AuthenticationError):
        return RemoteError(f"{server.url} refused the API key (401): {detail}")
    if isinstance(error, openai.NotFoundError) and model is not None:
        return RemoteError(f"{server.url} has no model '{model}' (404): {detail}")
    if isinstance(error, openai.APIStatusError):
        retry = error.response.headers.get("retry-after")
        later = f" Try again in {retry} s." if retry else ""
        return RemoteError(f"{server.url} answered {error.status_code}: {detail}{later}")
    return RemoteError(f"{server.url}: {detail}")


def list_models(server: RemoteServer) -> list[RemoteModel]:
    """The models the server offers, for the sidebar."""
    with server.client() as client:
        try:
            listed = list(client.models.list())
        except openai.OpenAIError as error:
            raise explain(error, server) from None
    return [RemoteModel(m.id, (m.model_extra or {}).get("max_model_len")) for m in listed]


def stream_remote_reply(
    server: RemoteServer,
    model: str,
    history: Sequence[Message],
    settings: ChatSettings,
    stop: threading.Event | None = None,
) -> Reply:
    """Start a reply to the last user message in `history`; the request is sent when reading begins.

    The whole history goes to the server, which knows its own context window (a prompt too long is
    its error to report). Token counts come from the server's usage report.
    """
    sampling = settings.sampling
    history, sources = documents_estimated(
        history, settings.system_prompt, settings.context_length, sampling.max_new_tokens
    )
    messages = with_system(settings.system_prompt, history)
    stats = ReplyStats(sources=sources)
    stop = stop or threading.Event()

    def pieces() -> Iterator[str]:
        started = time.perf_counter()
        client = server.client()
        try:
            stream = client.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                extra_body={"top_k": sampling.top_k, "repetition_penalty": sampling.repetition_penalty},
            )
            with stream:  # closing it (the user pressed Stop) ends the request on the server
                for event in stream:
                    if event.usage is not None:
                        stats.prompt_tokens = event.usage.prompt_tokens
                        stats.new_tokens = event.usage.completion_tokens
                        details = event.usage.completion_tokens_details  # a server that checks guesses says so
                        stats.guessed_tokens = (details and details.accepted_prediction_tokens) or 0
                    for choice in event.choices:
                        if choice.delta.content:
                            if stats.first_token_seconds is None:
                                stats.first_token_seconds = time.perf_counter() - started
                            yield choice.delta.content
                        if choice.finish_reason:
                            stats.finish_reason = choice.finish_reason
                    if stop.is_set():
                        stats.finish_reason = "cancelled"
                        break
        except openai.OpenAIError as error:
            raise explain(error, server, model) from None
        finally:
            client.close()
            stats.total_seconds = time.perf_counter() - started

    return Reply(pieces=pieces(), stats=stats, stop=stop)
