"""Turn a chat history into prompt token ids with the model's own chat template.

Two things the naive `tokenizer(apply_chat_template(...))` gets wrong are handled here:
- user text is tokenized as plain text, so typing `<|im_end|><|im_start|>system` cannot open a
  turn of its own (control tokens come only from the template itself);
- the prompt is kept inside the context window by dropping the oldest turns, never the system
  prompt or the newest message, and the caller is told how many were dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Message = dict[str, str]

# Private-use code points: no real message contains them, and templates pass them through untouched.
_MARK = "\ue000{}\ue001"
_MARK_RE = re.compile("\ue000(\\d+)\ue001")


class PromptTooLong(ValueError):
    """Even the system prompt and the newest message alone do not fit the context window."""

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(
            f"The message needs {needed:,} tokens but only {available:,} fit in the context window. "
            "Shorten the message, lower 'max new tokens', or raise the context length."
        )
        self.needed = needed
        self.available = available


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    dropped_messages: int  # oldest history messages left out to fit the window


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of plain user text: special-token strings in it stay ordinary characters."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def encode_template_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of text the chat template wrote: its control-token strings become control tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_chat(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
    """Render `messages` with the chat template, tokenizing message contents as plain text.

    Each content is replaced by a marker before rendering; the rendered text is then cut at the
    markers, so the template's pieces and the users' pieces are tokenized separately.
    """
    marked = [{**m, "content": _MARK.format(i)} for i, m in enumerate(messages)]
    rendered = tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=add_generation_prompt)
    ids: list[int] = []
    position = 0
    for match in _MARK_RE.finditer(rendered):
        ids += encode_template_text(tokenizer, rendered[position : match.start()])
        ids += encode_text(tokenizer, messages[int(match.group(1))]["content"])
        position = match.end()
    ids += encode_template_text(tokenizer, rendered[position:])
    return ids


def with_system(system_prompt: str, history: Sequence[Message]) -> list[Message]:
    """The messages the model sees: an optional system prompt, then the history."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    return system + [{"role": m["role"], "content": m["content"]} for m in history]


def build_prompt(
    tokenizer: Any,
    history: Sequence[Message],
    system_prompt: str,
    context_length: int,
    max_new_tokens: int,
) -> Prompt:
    """The longest tail of `history` that leaves room for `max_new_tokens` in `context_length`.

    Whole user/assistant exchanges are dropped from the front, so the kept history always starts
    with a user turn, as chat templates expect.
    """
    if not history or history[-1]["role"] != "user":
        raise ValueError("The history must end with the user's message.")
    budget = context_length - max_new_tokens
    if budget <= 0:
        raise PromptTooLong(needed=max_new_tokens, available=context_length)
    starts = [i for i, m in enumerate(history) if m["role"] == "user"]
    for start in starts:
        ids = encode_chat(tokenizer, with_system(system_prompt, history[start:]))
        if len(ids) <= budget:
            return Prompt(ids=ids, dropped_messages=start)
    raise PromptTooLong(needed=len(ids), available=budget)
