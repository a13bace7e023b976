"""What the API answers, without HTTP: the generated text of a job, and OpenAI's response and chunk shapes.

Both endpoints answer the same way (one JSON object, or server-sent chunks, then an optional usage chunk); they
differ only in how a choice carries its text: a chat `message` / `delta`, or a completion's `text`. `Answer` is that
difference, so the streaming and counting logic in `server.py` is written once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gptq_chat.api.logprobs import LogprobsWriter, Spelling, scored_text
from gptq_chat.api.protocol import Job, ServedModel
from gptq_chat.chat.streamer import TextTally, stream_text
from gptq_chat.chat.tool_calls import ToolCall, ToolCallDelta


@dataclass
class Completion(TextTally):
    """One completion's counts; `finish_reason` is set when its text ends."""

    prompt_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        return self.new_tokens


def completion_text(tokens: Iterator[int], tokenizer: Any, job: Job, result: Completion) -> Iterator[str]:
    """Text pieces of the reply, cut at the stop strings; closing early (or a stop) closes `tokens`. When the job
    asked for log-probabilities, each piece is a `ScoredPiece` carrying its tokens'."""
    ends = job.sampling.stop_token_ids

    def text(tokens: Iterator[int]) -> Iterator[str]:
        return stream_text(tokens, tokenizer, result, stop_ids=ends, stops=job.stops)

    return text(tokens) if job.sampling.logprobs is None else scored_text(tokens, ends, text)


def finish_reason(result: Completion, called: bool) -> str | None:
    """OpenAI's `tool_calls` for a reply that ended by making calls, else how its text ended."""
    return "tool_calls" if called and result.finish_reason == "stop" else result.finish_reason


def usage(result: Completion) -> dict[str, Any]:
    """OpenAI's counts; `accepted_prediction_tokens` (OpenAI's field for predicted outputs) are the completion
    tokens that speculative decoding's confirmed guesses wrote without a step of their own: completion tokens over
    (completion tokens - accepted) is the reply's tokens per step."""
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "completion_tokens_details": {"accepted_prediction_tokens": result.guessed_tokens},
    }


@dataclass(frozen=True)
class Answer:
    """How one endpoint's answers look: `chat.completion` objects, or `text_completion` ones."""

    chat: bool

    @property
    def id_prefix(self) -> str:
        return "chatcmpl-" if self.chat else "cmpl-"

    def _object(self, chunk: bool) -> str:
        if not self.chat:
            return "text_completion"  # OpenAI names a completion's chunks as the completion itself
        return "chat.completion.chunk" if chunk else "chat.completion"

    def _body(self, answer_id: str, model: str, chunk: bool, choices: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"id": answer_id, "object": self._object(chunk), "created": int(time.time()), "model": model}
        return body | {"choices": choices}

    def response(
        self,
        answer_id: str,
        model: str,
        text: str,
        result: Completion,
        calls: Sequence[ToolCall] = (),
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The whole answer in one object (a chat's tool calls in its message; `content` null when there is none)."""
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
            if calls:
                message["tool_calls"] = [call.openai() for call in calls]
            carried: dict[str, Any] = {"message": message}
        else:
            carried = {"text": text}
        choice = {"index": 0, **carried, "logprobs": logprobs, "finish_reason": finish_reason(result, bool(calls))}
        return self._body(answer_id, model, False, [choice]) | {"usage": usage(result)}

    def chunk(
        self,
        answer_id: str,
        model: str,
        piece: str | ToolCallDelta | None,
        finish_reason: str | None = None,
        with_usage: bool = False,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One chunk of a stream: a piece of text, a piece of a tool call, or (None) the finish, with the
        log-probabilities of its tokens if asked; `usage: null` when the client asked for a usage chunk at the end."""
        if self.chat:
            if isinstance(piece, ToolCallDelta):
                delta: dict[str, Any] = {"tool_calls": [piece.openai()]}
            else:
                delta = {} if piece is None else {"content": piece}
            carried: dict[str, Any] = {"delta": delta}
        else:
            carried = {"text": piece or ""}
        choice = {"index": 0, **carried, "logprobs": logprobs, "finish_reason": finish_reason}
        body = self._body(answer_id, model, True, [choice])
        return body | {"usage": None} if with_usage else body

    def logprobs(self, spelling: Spelling) -> LogprobsWriter:
        """A writer of one reply's log-probabilities in this endpoint's shape."""
        return LogprobsWriter(spelling, self.chat)

    def opening(self, answer_id: str, model: str, with_usage: bool) -> dict[str, Any] | None:
        """The chunk a stream starts with before any text: the assistant's role, for a chat."""
        if not self.chat:
            return None
        body = self.chunk(answer_id, model, "", with_usage=with_usage)
        body["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return body

    def usage_chunk(self, answer_id: str, model: str, result: Completion) -> dict[str, Any]:
        """The last chunk before `[DONE]` when `stream_options.include_usage` is set: no choices, the counts."""
        return self._body(answer_id, model, True, []) | {"usage": usage(result)}


CHAT = Answer(chat=True)
TEXT = Answer(chat=False)


def model_list(model: ServedModel) -> dict[str, Any]:
    """`/v1/models`; `max_model_len` as vLLM reports it, so clients (the page) can size their settings, and the KV
    cache's format (`kv_cache_dtype`, vLLM's name for it)."""
    card = {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": "gptq-chat",
        "max_model_len": model.context_length,
        "kv_cache_dtype": model.kv_cache,
    }
    return {"object": "list", "data": [card]}
