"""A reply's tool calls in OpenAI's shape, found in the text as it streams.

Each tool format (`tools_hermes`, `tools_react`) has a scanner that splits text into plain text and whole calls.
`ToolCallStream` turns that into what OpenAI streams: text deltas, and per call a first delta with its index, id
and name, then one with its arguments. A call is sent only once it is complete and well formed, so nothing sent is
ever taken back: text that merely starts like a call stays text. `parse_reply` is the same scan over a whole reply,
so a streamed reply and a complete one give the same text and calls.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: OpenAI's `{"id", "type": "function", "function": {"name", "arguments"}}`."""

    id: str
    name: str
    arguments: str  # a JSON object, as OpenAI sends it

    def openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolCallDelta:
    """One piece of a streamed call, OpenAI's `delta.tool_calls[]`: the first has the id and name, the next the
    arguments."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None

    def openai(self) -> dict[str, Any]:
        if self.id is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        function = {"name": self.name, "arguments": self.arguments}
        return {"index": self.index, "id": self.id, "type": "function", "function": function}


Scanned = str | ToolCall  # what a scanner finds: plain text, or a whole call


class CallScanner(Protocol):
    """A tool format's reader: text in, in any pieces; text and whole calls out, the same for any split."""

    def feed(self, text: str) -> list[Scanned]: ...

    def finish(self) -> list[Scanned]: ...


def new_call_id() -> str:
    """A fresh call id in OpenAI's style (`call_` and random hex)."""
    return f"call_{secrets.token_hex(12)}"


def well_formed_call(name: Any, arguments: Any, callable_names: Collection[str]) -> ToolCall | None:
    """A call if `name` is one the reply may call and `arguments` is a JSON object (or a string holding one)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(name, str) or name not in callable_names or not isinstance(arguments, dict):
        return None
    return ToolCall(id=new_call_id(), name=name, arguments=json.dumps(arguments, ensure_ascii=False))


def held_back(text: str, marker: str) -> int:
    """How much of the end of `text` may belong to a `marker` still to come: a partial marker and the whitespace
    before it (whitespace that touches a call is layout, not text)."""
    partial = max((k for k in range(1, len(marker)) if text.endswith(marker[:k])), default=0)
    head = text[: len(text) - partial]
    return len(text) - len(head.rstrip())


@dataclass(frozen=True)
class ParsedReply:
    """A whole reply: its text (calls taken out) and its calls."""

    text: str
    tool_calls: list[ToolCall]


@dataclass
class ToolCallStream:
    """Text pieces of a reply in; text and call deltas out (`str` or `ToolCallDelta`), ready to send.

    With `max_calls` set (`parallel_tool_calls: false`), the reply is `done` once it has made that many calls:
    what follows is dropped, and the caller may stop generating.
    """

    scanner: CallScanner
    max_calls: int | None = None
    calls: list[ToolCall] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.max_calls is not None and len(self.calls) >= self.max_calls

    def push(self, piece: str) -> list[str | ToolCallDelta]:
        return self._deltas(self.scanner.feed(piece))

    def finish(self) -> list[str | ToolCallDelta]:
        """What was held back, once the reply has ended."""
        return self._deltas(self.scanner.finish())

    def _deltas(self, found: list[Scanned]) -> list[str | ToolCallDelta]:
        deltas: list[str | ToolCallDelta] = []
        for item in found:
            if self.done:
                break
            if isinstance(item, ToolCall):
                index = len(self.calls)
                self.calls.append(item)
                deltas += [ToolCallDelta(index, "", item.id, item.name), ToolCallDelta(index, item.arguments)]
            elif item and deltas and isinstance(deltas[-1], str):
                deltas[-1] += item
            elif item:
                deltas.append(item)
        return deltas


def parse_reply(stream: ToolCallStream, reply: str) -> ParsedReply:
    """A whole reply read by a fresh stream: its text and its calls."""
    deltas = stream.push(reply) + stream.finish()
    return ParsedReply("".join(d for d in deltas if isinstance(d, str)), stream.calls)
