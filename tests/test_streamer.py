"""The one token-to-text streamer (chat/streamer.py) with the real Qwen tokenizer: the text is the whole decode,
characters are never split, each token costs a short decode (linear, not quadratic), and it ends for the right
reason."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from gptq_chat.chat.streamer import IncrementalDecoder, TextTally, stream_text

TEXT = "Qwen 说：你好，世界！🙂 Déjà vu — naïve café. " * 40  # CJK, emoji and accents split over byte tokens


class CountingTokenizer:
    """The real tokenizer, counting how many token ids each decode call is given."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.decoded = 0

    def decode(self, ids: list[int], **options) -> str:
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, **options)


def test_pieces_add_up_to_the_text_with_no_split_character(qwen_tokenizer) -> None:
    ids = qwen_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(qwen_tokenizer)
    pieces = [decoder.push(token) for token in ids]
    assert "".join(pieces) == qwen_tokenizer.decode(ids) == TEXT
    assert not any("\ufffd" in piece for piece in pieces)  # an emoji's four bytes come out together


def test_each_token_costs_a_short_decode_not_the_whole_reply(qwen_tokenizer) -> None:
    ids = qwen_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    counting = CountingTokenizer(qwen_tokenizer)
    decoder = IncrementalDecoder(counting)
    for token in ids:
        decoder.push(token)
    assert len(ids) > 500
    assert counting.decoded < 10 * len(ids)  # decoding the reply so far each time would be len(ids)**2 / 2


def stream(tokens: list[int]) -> Iterator[int]:
    yield from tokens


def test_it_ends_at_the_end_token_a_stop_string_the_limit_or_a_cancel(qwen_tokenizer) -> None:
    ids = qwen_tokenizer("The capital of France is Paris. END of answer", add_special_tokens=False)["input_ids"]
    end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")

    tally = TextTally()
    text = "".join(stream_text(stream([*ids[:4], end, *ids[4:]]), qwen_tokenizer, tally, stop_ids=(end,)))
    assert text == qwen_tokenizer.decode(ids[:4]) and (tally.new_tokens, tally.finish_reason) == (4, "stop")

    tally = TextTally()
    text = "".join(stream_text(stream(ids), qwen_tokenizer, tally, stop_ids=(end,), stops=("END",)))
    assert text == "The capital of France is Paris. " and tally.finish_reason == "stop"

    tally = TextTally()
    text = "".join(stream_text(stream(ids), qwen_tokenizer, tally, stop_ids=(end,)))
    assert text == qwen_tokenizer.decode(ids) and (tally.new_tokens, tally.finish_reason) == (len(ids), "length")
    assert tally.first_token_seconds is not None

    cancel, tally = threading.Event(), TextTally()
    pieces = stream_text(stream(ids), qwen_tokenizer, tally, stop_ids=(end,), cancel=cancel)
    next(pieces)
    cancel.set()
    assert list(pieces) == [] and tally.finish_reason == "cancelled"


def test_a_cancel_the_engine_saw_first_is_still_a_cancel(qwen_tokenizer) -> None:
    """The scheduler ends a request's tokens when its stop is set: no token arrives, and the reply says why."""
    cancel, tally = threading.Event(), TextTally()

    def until_cancelled() -> Iterator[int]:
        while not cancel.is_set():
            yield 9707

    cancel.set()
    assert list(stream_text(until_cancelled(), qwen_tokenizer, tally, stop_ids=(), cancel=cancel)) == []
    assert (tally.new_tokens, tally.finish_reason) == (0, "cancelled")
