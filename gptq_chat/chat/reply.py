"""The chat core: one function from a history to a streamed reply with its statistics.

The page, the API and the tests all call `stream_reply`; none of them builds prompts or touches
the model directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gptq_chat.chat.prompt import Message, build_prompt
from gptq_chat.engine.generation import Engine, SamplingSettings


@dataclass(frozen=True)
class ChatSettings:
    """Everything the user can set for one reply."""

    sampling: SamplingSettings
    system_prompt: str = "You are a helpful assistant."
    context_length: int = 4096


@dataclass
class ReplyStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    dropped_messages: int = 0
    first_token_seconds: float | None = None
    total_seconds: float = 0.0
    finish_reason: str = "length"  # "stop" (end token), "length" (max new tokens) or "cancelled"

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first, over the time after the first."""
        if self.first_token_seconds is None or self.new_tokens < 2:
            return 0.0
        decode_time = self.total_seconds - self.first_token_seconds
        return (self.new_tokens - 1) / decode_time if decode_time > 0 else 0.0


@dataclass
class Reply:
    """A reply being streamed: iterate for text pieces; `text` and `stats` are complete at the end."""

    pieces: Generator[str, None, None]
    stats: ReplyStats
    text: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    def __iter__(self) -> Iterator[str]:
        try:
            for piece in self.pieces:
                self.text += piece
                yield piece
        finally:
            self.pieces.close()  # a reader that stops early frees the engine now, not at garbage collection


class IncrementalDecoder:
    """Token ids in, text out, never splitting a multi-byte character across two pieces."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        piece = text[len(self.emitted) :]
        self.emitted = text
        return piece


def stream_reply(
    engine: Engine,
    tokenizer: Any,
    history: Sequence[Message],
    settings: ChatSettings,
    stop: threading.Event | None = None,
) -> Reply:
    """Start a reply to the last user message in `history`; raises `PromptTooLong` before any work."""
    prompt = build_prompt(
        tokenizer, history, settings.system_prompt, settings.context_length, settings.sampling.max_new_tokens
    )
    stats = ReplyStats(prompt_tokens=len(prompt.ids), dropped_messages=prompt.dropped_messages)
    stop = stop or threading.Event()
    stop_ids = set(settings.sampling.stop_token_ids)

    def pieces() -> Iterator[str]:
        started = time.perf_counter()
        decoder = IncrementalDecoder(tokenizer)
        tokens = engine.generate(prompt.ids, settings.sampling, stop)
        try:
            for token in tokens:
                if stats.first_token_seconds is None:
                    stats.first_token_seconds = time.perf_counter() - started
                if token in stop_ids:
                    stats.finish_reason = "stop"
                    break
                stats.new_tokens += 1
                piece = decoder.push(token)
                if piece:
                    yield piece
                if stop.is_set():
                    break
            if stop.is_set() and stats.finish_reason != "stop":
                stats.finish_reason = "cancelled"
        finally:
            tokens.close()
            stats.total_seconds = time.perf_counter() - started

    return Reply(pieces=pieces(), stats=stats, stop=stop)


def complete_reply(engine: Engine, tokenizer: Any, history: Sequence[Message], settings: ChatSettings) -> Reply:
    """The whole reply at once (scripts and tests)."""
    reply = stream_reply(engine, tokenizer, history, settings)
    for _ in reply:
        pass
    return reply
