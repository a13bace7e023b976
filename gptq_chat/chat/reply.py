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

from gptq_chat.chat.attachments import documents_in_prompt
from gptq_chat.chat.prompt import Message, build_prompt
from gptq_chat.chat.retrieval import Excerpt
from gptq_chat.chat.streamer import TextTally, stream_text
from gptq_chat.engine.protocols import SamplingSettings, TokenSource


@dataclass(frozen=True)
class ChatSettings:
    """Everything the user can set for one reply."""

    sampling: SamplingSettings
    system_prompt: str = "You are a helpful assistant."
    context_length: int = 4096


@dataclass
class ReplyStats(TextTally):
    """A reply's statistics, shown under it: the streamer's counts, the prompt's, and the time it all took."""

    finish_reason: str | None = "length"  # "stop" (end token), "length" (max new tokens) or "cancelled"
    prompt_tokens: int = 0
    dropped_messages: int = 0
    total_seconds: float = 0.0
    sources: tuple[Excerpt, ...] = ()  # what of the attached documents the prompt held

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


def stream_reply(
    engine: TokenSource,
    tokenizer: Any,
    history: Sequence[Message],
    settings: ChatSettings,
    stop: threading.Event | None = None,
) -> Reply:
    """Start a reply to the last user message in `history` (whose user messages may carry `documents`); raises
    `PromptTooLong` before any work."""
    shape = (settings.system_prompt, settings.context_length, settings.sampling.max_new_tokens)
    messages, sources = documents_in_prompt(tokenizer, history, *shape)
    prompt = build_prompt(tokenizer, messages, *shape)
    stats = ReplyStats(prompt_tokens=len(prompt.ids), dropped_messages=prompt.dropped_messages, sources=sources)
    stop = stop or threading.Event()

    def pieces() -> Iterator[str]:
        started = time.perf_counter()
        tokens = engine.generate(prompt.ids, settings.sampling, stop)
        try:
            yield from stream_text(tokens, tokenizer, stats, stop_ids=settings.sampling.stop_token_ids, cancel=stop)
        finally:
            stats.total_seconds = time.perf_counter() - started

    return Reply(pieces=pieces(), stats=stats, stop=stop)


def complete_reply(engine: TokenSource, tokenizer: Any, history: Sequence[Message], settings: ChatSettings) -> Reply:
    """The whole reply at once (scripts and tests)."""
    reply = stream_reply(engine, tokenizer, history, settings)
    for _ in reply:
        pass
    return reply
