"""Qwen2/Qwen2.5's own tool format, as their chat template writes it (Hermes-style).

The template lists the tools in the system turn inside `<tools></tools>`, the model answers a call as
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` (several in a row for parallel calls), earlier calls
go back as the assistant's `tool_calls` and their results as `role: "tool"` messages, which the template wraps in
`<tool_response>` blocks of a user turn. Everything here is written by the template itself; this module only hands
it the messages in the shape it reads and reads the model's calls back.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from gptq_chat.chat.prompt import encode_chat
from gptq_chat.chat.tool_calls import Scanned, ToolCall, held_back, well_formed_call

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as the template reads them: a missing content is empty, and each call's arguments are the
    JSON object itself (the template writes it with `tojson`), not OpenAI's string holding it."""
    shaped = []
    for message in messages:
        turn = {"role": message["role"], "content": message.get("content") or ""}
        if message.get("tool_calls"):
            turn["tool_calls"] = [
                {"type": "function", "function": {"name": f["name"], "arguments": arguments_object(f["arguments"])}}
                for f in (call["function"] for call in message["tool_calls"])
            ]
        shaped.append(turn)
    return shaped


def arguments_object(arguments: str | Mapping[str, Any]) -> Any:
    """OpenAI's arguments string as the JSON value it holds; a string that is not JSON stays a string."""
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def encode(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]) -> list[int]:
    """Prompt ids of a conversation with tools, all written by the model's own chat template."""
    return encode_chat(tokenizer, template_messages(messages), tools=tools)


def call_text(name: str) -> tuple[str, str]:
    """The text around the arguments of a call to `name`, as the model writes it."""
    return f'{OPEN}\n{{"name": {json.dumps(name)}, "arguments": ', f"}}\n{CLOSE}"


class HermesScanner:
    """Reads `<tool_call>` blocks out of a reply as it streams.

    A block is a call when it holds a JSON object with a callable `name` and an object as `arguments`; any other
    block stays text, tags and all. Whitespace that touches a call (the newlines between calls, before the first)
    is layout, not text; text after a call that follows earlier text starts on a new line. Text is held back only
    while it may still begin a block: a partial `<tool_call>` tag, the whitespace before it, a block not yet closed.
    """

    def __init__(self, callable_names: Collection[str]) -> None:
        self.callable_names = callable_names
        self.pending = ""
        self.after_call = False  # whitespace from here on is layout
        self.wrote_text = False
        self.new_line = False  # the next text starts on a new line: a call came between it and earlier text

    def feed(self, text: str) -> list[Scanned]:
        self.pending += text
        return self.scan(final=False)

    def finish(self) -> list[Scanned]:
        return self.scan(final=True)

    def scan(self, final: bool) -> list[Scanned]:
        found: list[Scanned] = []
        while True:
            if self.after_call:
                self.pending = self.pending.lstrip()
                if not self.pending:
                    return found
                self.after_call = False
            start = self.pending.find(OPEN)
            if start < 0:
                found.append(self.take(len(self.pending) - (0 if final else held_back(self.pending, OPEN))))
                return found
            body_start = start + len(OPEN)
            end = self.pending.find(CLOSE, body_start)
            body = self.pending[body_start : end if end >= 0 else None]
            if OPEN in body or (not body.lstrip().startswith("{") and (body.strip() or final)):
                found.append(self.take(body_start))  # this tag opens no call: it is text
            elif end >= 0:
                found += self.block(start, end)
            elif final:
                found.append(self.take(body_start))
            else:  # an open block: wait for the rest, holding the whitespace before it too
                found.append(self.take(len(self.pending[:start].rstrip())))
                return found

    def block(self, start: int, end: int) -> list[Scanned]:
        """The closed block at `start`: a call (the whitespace before it dropped), or text as written."""
        call = self.call(self.pending[start + len(OPEN) : end])
        if call is None:
            return [self.take(end + len(CLOSE))]
        head = len(self.pending[:start].rstrip())
        text = self.take(head)
        self.pending = self.pending[end + len(CLOSE) - head :]
        self.after_call = True
        self.new_line = self.wrote_text
        return [text, call]

    def call(self, body: str) -> ToolCall | None:
        try:
            value = json.loads(body)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        return well_formed_call(value.get("name"), value.get("arguments"), self.callable_names)

    def take(self, end: int) -> str:
        text, self.pending = self.pending[:end], self.pending[end:]
        if text and self.new_line:
            text, self.new_line = f"\n{text}", False
        self.wrote_text = self.wrote_text or bool(text)
        return text
