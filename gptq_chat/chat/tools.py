"""Tool calling for one request, in the format the model was trained for.

A chat template that renders `tools` and writes `<tool_call>` (Qwen2, Qwen2.5) gets its own Hermes-style format
(`tools_hermes`); any other model (Qwen1.5, whose template has no tools) gets the ReAct prompt of Qwen's own
OpenAI-compatible server (`tools_react`). `tool_use` reads a request's `tools`, `tool_choice` and
`parallel_tool_calls` into a `ToolUse`: the prompt ids, a stream that reads the reply's calls, the stop strings,
and, when a call is required, the exact text the reply must be, for grammar-constrained decoding.

`tool_choice: "none"` shows the model no tools at all (earlier calls and results in the history are still
rendered), so it answers in text, as an OpenAI client expects, instead of writing a call that would then be
passed through as text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gptq_chat.chat import tools_hermes, tools_react
from gptq_chat.chat.tool_calls import CallScanner, ParsedReply, ToolCallStream, parse_reply

FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # OpenAI's rule for function names


@dataclass(frozen=True)
class ToolFormat:
    """How one family of models is told about tools and writes its calls."""

    encode: Callable[[Any, Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]], list[int]]  # -> prompt ids
    scanner: Callable[[Collection[str]], CallScanner]  # built with the names a reply may call
    call_text: Callable[[str], tuple[str, str]]  # function name -> (text before the arguments, text after them)
    separator: str | None  # what goes between parallel calls; None: one call per reply
    stop_strings: tuple[str, ...]


HERMES = ToolFormat(
    encode=tools_hermes.encode,
    scanner=tools_hermes.HermesScanner,
    call_text=tools_hermes.call_text,
    separator="\n",
    stop_strings=(),
)
REACT = ToolFormat(
    encode=tools_react.encode,
    scanner=tools_react.ReactScanner,
    call_text=tools_react.call_text,
    separator=None,
    stop_strings=tools_react.STOP_STRINGS,
)


def tool_format(tokenizer: Any) -> ToolFormat:
    """The model's own format if its chat template renders tools as `<tool_call>` blocks, else ReAct."""
    template = tokenizer.get_chat_template(tools=[])
    return HERMES if "tools" in template and tools_hermes.OPEN in template else REACT


@dataclass(frozen=True)
class CallShape:
    """The exact text of a call to `name`: `prefix`, a JSON object valid for `arguments_schema`, then `suffix`."""

    name: str
    prefix: str
    arguments_schema: Mapping[str, Any]
    suffix: str


@dataclass(frozen=True)
class ForcedCalls:
    """What the reply must be when a call is required: a call of one of `shapes`; then, when `separator` is set,
    any number of further calls, each after `separator`; and nothing else."""

    shapes: tuple[CallShape, ...]
    separator: str | None


@dataclass(frozen=True)
class ToolUse:
    """What a request's tools mean for one model: its prompt, how its reply is read, and any call it must make."""

    format: ToolFormat
    tools: tuple[Mapping[str, Any], ...]  # OpenAI tool definitions shown to the model
    callable_names: frozenset[str]  # the functions a reply may call; others stay text
    forced: ForcedCalls | None  # set for `tool_choice: "required"` or a named function
    parallel: bool

    def encode(self, tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Prompt ids of OpenAI messages (with `tool_calls` and `role: "tool"` results)."""
        return self.format.encode(tokenizer, messages, self.tools)

    def stream(self) -> ToolCallStream:
        """A fresh reader for one reply's text pieces (a ReAct reply makes one call at most anyway)."""
        return ToolCallStream(self.format.scanner(self.callable_names), max_calls=None if self.parallel else 1)

    def parse(self, reply: str) -> ParsedReply:
        """A whole reply's text and calls."""
        return parse_reply(self.stream(), reply)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Stop strings to add to the client's while calls may be made."""
        return self.format.stop_strings if self.callable_names else ()


def tool_use(
    tokenizer: Any,
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None = None,
    parallel_tool_calls: bool = True,
) -> ToolUse:
    """A request's `tools`, `tool_choice` (default "auto") and `parallel_tool_calls` for this tokenizer's model;
    a `ValueError` names what the request got wrong."""
    tools = tuple(tools or ())
    functions = {function_name(index, tool): tool for index, tool in enumerate(tools)}
    choice = tool_choice or "auto"
    if choice == "none":
        return ToolUse(tool_format(tokenizer), (), frozenset(), None, parallel_tool_calls)
    if choice in ("auto", "required"):
        chosen = list(functions)
    elif isinstance(choice, Mapping) and choice.get("type") == "function":
        named = choice.get("function")
        chosen = [named.get("name") if isinstance(named, Mapping) else None]
    else:
        raise ValueError(f"tool_choice must be 'none', 'auto', 'required' or a named function, not {choice!r}.")
    if choice != "auto" and not all(name in functions for name in chosen):
        raise ValueError(f"tool_choice names {chosen[0]!r}, which is not among the tools.")
    if choice == "required" and not chosen:
        raise ValueError("tool_choice 'required' needs at least one tool.")
    form = tool_format(tokenizer)
    forced = None if choice == "auto" else forced_calls(form, [functions[name] for name in chosen], parallel_tool_calls)
    return ToolUse(form, tools, frozenset(chosen), forced, parallel_tool_calls)


def function_name(index: int, tool: Mapping[str, Any]) -> str:
    """The name of a function tool, checked as OpenAI checks it."""
    function = tool.get("function") if tool.get("type") == "function" else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
        raise ValueError(
            f"tools[{index}] must be {{'type': 'function', 'function': {{'name': ...}}}} with a name of 1 to 64 "
            "letters, digits, underscores or dashes."
        )
    return name


def forced_calls(form: ToolFormat, tools: Sequence[Mapping[str, Any]], parallel: bool) -> ForcedCalls:
    """The text a reply must be to call one of `tools`, in the model's own format."""
    shapes = []
    for tool in tools:
        function = tool["function"]
        prefix, suffix = form.call_text(function["name"])
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        shapes.append(CallShape(function["name"], prefix, schema, suffix))
    return ForcedCalls(tuple(shapes), form.separator if parallel else None)
