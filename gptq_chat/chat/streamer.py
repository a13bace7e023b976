"""Token ids in, text pieces out: the one loop the page and the API share.

It stops at an end token, at the client's stop strings (never emitting any part of one), at the length limit or when
asked to, counts the tokens, and decodes incrementally: only a short window of recent tokens is decoded per token
(the read offsets of vLLM's detokenizer), so a long reply costs linear time, not quadratic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gptq_chat.engine.protocols import GuessedToken


class IncrementalDecoder:
    """Token ids in, text out, never splitting a multi-byte character across two pieces.

    Each step decodes `ids[prefix:read]` and `ids[prefix:]` and emits the difference: tokens before `read` are
    already text, and the few before it (from `prefix`) keep the spacing a tokenizer gives a word by its left side.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        done = self.decode(self.ids[self.prefix : self.read])
        text = self.decode(self.ids[self.prefix :])
        if len(text) <= len(done) or text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(done) :]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


class StopText:
    """Text in, text out, cut at the first stop string; text that may begin one is held back until it cannot.

    Nothing emitted is ever part of a stop string: a tail that is a prefix of one waits for more text.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, piece: str) -> str:
        self.text += piece
        found = [i for i in (self.text.find(stop, self.sent) for stop in self.stops) if i >= 0]
        if found:
            self.stopped = True
            return self.emit(min(found))
        return self.emit(len(self.text) - self.held_back())

    def held_back(self) -> int:
        """The length of the longest tail of the text that is the start of a stop string."""
        tails = (k for stop in self.stops for k in range(1, len(stop)) if self.text.endswith(stop[:k]))
        return max(tails, default=0)

    def emit(self, end: int) -> str:
        piece = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return piece

    def flush(self) -> str:
        """What was held back, once no more text comes (and no stop string was met)."""
        return "" if self.stopped else self.emit(len(self.text))


@dataclass
class TextTally:
    """What `stream_text` counted: new tokens (the end token not counted), when the first token came, and why the
    text ended: "stop" (end token or stop string), "length" (the limit, or the engine's context) or "cancelled"."""

    new_tokens: int = 0
    first_token_seconds: float | None = None
    finish_reason: str | None = None
    guessed_tokens: int = 0  # of the new tokens, those that cost no step of their own (`GuessedToken`)

    @property
    def tokens_per_step(self) -> float:
        """New tokens per step of the model: 1 without speculative decoding, more where guesses were right (every
        step's first token is not a guessed one, so a step that wrote any counted token counts once)."""
        steps = self.new_tokens - self.guessed_tokens
        return self.new_tokens / steps if steps else 0.0


def stream_text(
    tokens: Iterator[int],
    tokenizer: Any,
    tally: TextTally,
    *,
    stop_ids: tuple[int, ...],
    stops: tuple[str, ...] = (),
    cancel: threading.Event | None = None,
) -> Iterator[str]:
    """Text pieces of `tokens`, counted into `tally`; closing early, an end or a cancel closes `tokens`, which frees
    the request's place in the scheduler at once."""
    started = time.perf_counter()
    decoder, cut, ends = IncrementalDecoder(tokenizer), StopText(stops), set(stop_ids)
    reason = "length"
    try:
        for token in tokens:
            if tally.first_token_seconds is None:
                tally.first_token_seconds = time.perf_counter() - started
            if token in ends:
                reason = "stop"
                break
            tally.new_tokens += 1
            tally.guessed_tokens += isinstance(token, GuessedToken)
            piece = cut.push(decoder.push(token))
            if piece:
                yield piece
            if cut.stopped:
                reason = "stop"
                break
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
        else:  # the engine ended the tokens: its length limit, or a cancel it saw first
            reason = "cancelled" if cancel is not None and cancel.is_set() else reason
        tail = cut.flush()
        if tail:
            yield tail
        tally.finish_reason = reason
    finally:
        tokens.close()  # type: ignore[attr-defined]
