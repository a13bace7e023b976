"""Log-probabilities as OpenAI writes them: each token's text, bytes and log-probability with the likeliest tokens at
its place, as a chat's `logprobs.content` list or as a completion's parallel lists.

The engine hands them over as `ScoredToken`s. Each text piece of a reply carries the tokens read since the previous
piece (`ScoredPiece`), so a streamed chunk's log-probabilities are those of its own text, and the tokens of a stop
string, whose text is never sent, are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from transformers.convert_slow_tokenizer import bytes_to_unicode

from gptq_chat.engine.protocols import ScoredToken


class ScoredPiece(str):
    """A piece of a reply's text and the scored tokens it came from (a plain str to everything else)."""

    scored: tuple[ScoredToken, ...]

    def __new__(cls, text: str, scored: Sequence[ScoredToken]) -> ScoredPiece:
        piece = super().__new__(cls, text)
        piece.scored = tuple(scored)
        return piece


def scored_text(
    tokens: Iterator[int], end_ids: Iterable[int], to_text: Callable[[Iterator[int]], Iterator[str]]
) -> Iterator[ScoredPiece]:
    """The pieces `to_text` makes of `tokens`, each with the scored tokens read since the previous piece; an end
    token is not part of the reply. Closing this closes `to_text`'s pieces, and so the tokens."""
    ends, seen = frozenset(end_ids), []

    def noted() -> Iterator[int]:
        for token in tokens:
            if isinstance(token, ScoredToken) and token not in ends:
                seen.append(token)
            yield token

    pieces = to_text(noted())
    try:
        for piece in pieces:
            yield ScoredPiece(piece, seen)
            seen.clear()
    finally:
        pieces.close()  # type: ignore[attr-defined]


def scores_of(pieces: Iterable[str]) -> list[ScoredToken]:
    """The scored tokens of text pieces (none for plain strings)."""
    return [token for piece in pieces for token in getattr(piece, "scored", ())]


class Spelling:
    """Each token's bytes and text. Qwen's tokenizer is byte-level BPE: a token is written with a printable stand-in
    for each byte, so its bytes are those stand-ins mapped back (a token may hold part of a character)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.byte_of = {stand_in: byte for byte, stand_in in bytes_to_unicode().items()}
        self.known: dict[int, bytes] = {}

    def bytes_of(self, token: int) -> bytes:
        if token not in self.known:
            written = self.tokenizer.convert_ids_to_tokens(token) or ""
            if all(char in self.byte_of for char in written):
                self.known[token] = bytes(self.byte_of[char] for char in written)
            else:
                self.known[token] = written.encode()  # an added token, written as itself
        return self.known[token]

    def text(self, token: int) -> str:
        return self.bytes_of(token).decode("utf-8", errors="replace")

    def entry(self, token: int, logprob: float) -> dict[str, Any]:
        return {"token": self.text(token), "logprob": logprob, "bytes": list(self.bytes_of(token))}


class LogprobsWriter:
    """One reply's log-probabilities, written chunk by chunk in one endpoint's shape (a completion's text offsets
    run on from chunk to chunk)."""

    def __init__(self, spelling: Spelling, chat: bool) -> None:
        self.spelling = spelling
        self.chat = chat
        self.offset = 0

    def __call__(self, scored: Sequence[ScoredToken]) -> dict[str, Any]:
        if self.chat:
            return chat_logprobs(scored, self.spelling)
        written = completion_logprobs(scored, self.spelling, self.offset)
        self.offset += sum(len(text) for text in written["tokens"])
        return written


def chat_logprobs(scored: Sequence[ScoredToken], spelling: Spelling) -> dict[str, Any]:
    """A chat choice's `logprobs`: one entry per token, each with its `top_logprobs` alternatives."""
    content = [
        spelling.entry(token, token.logprob)
        | {"top_logprobs": [spelling.entry(other, logprob) for other, logprob in token.top_logprobs]}
        for token in scored
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(scored: Sequence[ScoredToken], spelling: Spelling, offset: int = 0) -> dict[str, Any]:
    """A completion choice's `logprobs`: the tokens' texts, their log-probabilities, a {text: log-probability}
    of the alternatives for each, and where each token's text starts (counted from `offset`)."""
    texts = [spelling.text(token) for token in scored]
    starts = []
    for text in texts:
        starts.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [token.logprob for token in scored],
        "top_logprobs": [{spelling.text(other): logprob for other, logprob in token.top_logprobs} for token in scored],
        "text_offset": starts,
    }
