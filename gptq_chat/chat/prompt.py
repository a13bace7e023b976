"""Turn a chat history into prompt token ids with the model's own chat template.

Two things the naive `tokenizer(apply_chat_template(...))` gets wrong are handled here:
- client text is tokenized as plain text, so typing `<|im_end|><|im_start|>system` (or Qwen2.5's `<tool_call>`)
  cannot open a turn or a tool call of its own: control tokens come only from the template itself;
- the prompt is kept inside the context window by dropping the oldest turns, never the system
  prompt or the newest message, and the caller is told how many were dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Message = dict[str, str]

# Private-use code points: no real message contains them, and templates pass them through untouched.
_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"
_MARK_RE = re.compile(f"{_MARK_OPEN}(\\d+){_MARK_CLOSE}")


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
    """Token ids of plain client text: strings that spell a special or added token stay ordinary characters.

    `split_special_tokens=True` is not enough: it splits only the *special* added tokens, and Qwen2.5 adds
    `<tool_call>` and `</tool_call>` as added tokens that are not special. So the text goes through the tokenizer's
    own normalizer, pre-tokenizer and model, past its added vocabulary: the ids it would get if no token were added.
    """
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    pieces = [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]
    return [token.id for piece in pieces for token in backend.model.tokenize(piece)]


class PlainText:
    """Client text set aside while the chat template renders, so that none of it becomes a control token.

    Each piece is swapped for a marker; in the rendered text, control tokens are then read from the template's own
    text only, and all the text between two control tokens, pieces included, is tokenized as one: the ids the
    tokenizer gives the whole rendered text when no client text spells a control token (a piece's last characters
    and the template's next ones may share a token, as `"}` and a newline do). Added tokens that strip the spaces
    beside them are taken as they are spelled (none of Qwen's do).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.pieces: list[str] = []
        self.control_ids = {token.content: token_id for token_id, token in tokenizer.added_tokens_decoder.items()}
        longest_first = sorted(self.control_ids, key=len, reverse=True)
        self.control = re.compile("|".join(map(re.escape, longest_first)) or "(?!)")

    def mark(self, text: str) -> str:
        """The marker that stands for `text` where the template writes it."""
        self.pieces.append(text)
        return f"{_MARK_OPEN}{len(self.pieces) - 1}{_MARK_CLOSE}"

    def mark_control_tokens(self, value: Any) -> Any:
        """`value` (a string, or lists and dicts of them, keys included) with each control-token spelling marked.

        For what a template takes apart or writes as JSON (tool definitions, call arguments): the rest of each
        string stays as it is, so the template still sees and escapes it. Marker characters already there are
        dropped, so a client cannot forge a marker.
        """
        if isinstance(value, str):
            value = value.replace(_MARK_OPEN, "").replace(_MARK_CLOSE, "")
            return self.control.sub(lambda match: self.mark(match.group()), value)
        if isinstance(value, Mapping):
            return {self.mark_control_tokens(key): self.mark_control_tokens(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.mark_control_tokens(item) for item in value]
        return value

    def marked_message(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """A message for the template: its content as one marker, control tokens marked in its other fields."""
        marked = {}
        for key, value in message.items():
            if key == "content" and isinstance(value, str) and value:  # an empty one stays: templates test its truth
                marked[key] = self.mark(value)
            else:
                marked[key] = value if key == "role" else self.mark_control_tokens(value)
        return marked

    def encode(self, rendered: str) -> list[int]:
        """Token ids of the rendered chat: the template's control tokens, and plain text between them."""
        ids: list[int] = []
        text = ""  # the text since the last control token
        for run in self.runs(rendered):
            if isinstance(run, int):
                ids += [*encode_text(self.tokenizer, text), run]
                text = ""
            else:
                text += run
        return ids + encode_text(self.tokenizer, text)

    def runs(self, rendered: str) -> Iterator[str | int]:
        """The rendered chat as text and control-token ids, the pieces back in place of their markers."""
        position = 0
        for match in _MARK_RE.finditer(rendered):
            yield from self.template_runs(rendered[position : match.start()])
            yield self.pieces[int(match.group(1))]
            position = match.end()
        yield from self.template_runs(rendered[position:])

    def template_runs(self, text: str) -> Iterator[str | int]:
        """Text the template wrote, as text and the ids of the control tokens it spells."""
        position = 0
        for control in self.control.finditer(text):
            yield text[position : control.start()]
            yield self.control_ids[control.group()]
            position = control.end()
        yield text[position:]


def encode_chat(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    *,
    tools: Sequence[Mapping[str, Any]] = (),
    continue_final: bool = False,
) -> list[int]:
    """Render `messages` (and `tools`) with the chat template, tokenizing every client text as plain text.

    `continue_final` leaves the last message open for the model to go on writing (no end token, no new turn).
    """
    plain = PlainText(tokenizer)
    rendered = tokenizer.apply_chat_template(
        [plain.marked_message(m) for m in messages],
        tools=plain.mark_control_tokens(list(tools)) or None,
        tokenize=False,
        add_generation_prompt=add_generation_prompt and not continue_final,
        continue_final_message=continue_final,
    )
    return plain.encode(rendered)


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
