"""The ReAct tool prompt of Qwen's own OpenAI-compatible server, for models whose chat template has no tools.

Qwen1.5's template renders no tools; its documentation pointed to the format Qwen-1's `openai_api.py` served:
the tools are described in the last user message, under an instruction to answer as `Thought:`, `Action:`,
`Action Input:`, then wait for `Observation:`, and end with `Final Answer:`. Earlier calls and their results go
back inside the assistant turn as those same lines; when the conversation ends with a tool's result, the prompt
stops inside that turn after `Thought:` for the model to go on. Generation stops at `Observation:` (the model
would otherwise invent the tool's result). The prompt text is Qwen's, word for word; the turns around it are the
model's own chat template.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from gptq_chat.chat.prompt import encode_chat
from gptq_chat.chat.tool_calls import Scanned, held_back, well_formed_call

THOUGHT = "Thought:"
ACTION = "Action:"
ACTION_INPUT = "Action Input:"
OBSERVATION = "Observation:"
FINAL_ANSWER = "Final Answer:"
STOP_STRINGS = (OBSERVATION,)

TOOL_TEMPLATE = (
    "{name}: Call this tool to interact with the {name} API. What is the {name} API useful for? {description}"
    " Parameters: {parameters}"
)
INSTRUCTION_TEMPLATE = """Answer the following questions as best you can. You have access to the following APIs:

{tools}

Use the following format:

Question: the input question you must answer
Thought: you should always think about what to do
Action: the action to take, should be one of [{names}]
Action Input: the input to the action
Observation: the result of the action
... (this Thought/Action/Action Input/Observation can be repeated zero or more times)
Thought: I now know the final answer
Final Answer: the final answer to the original input question

Begin!"""


def instruction(functions: Sequence[Mapping[str, Any]]) -> str:
    """The ReAct instruction describing `functions` (OpenAI's `tools[].function`)."""
    described = [
        TOOL_TEMPLATE.format(
            name=f["name"],
            description=f.get("description", ""),
            parameters=json.dumps(f.get("parameters", {}), ensure_ascii=False),
        )
        for f in functions
    ]
    return INSTRUCTION_TEMPLATE.format(tools="\n\n".join(described), names=", ".join(f["name"] for f in functions))


def clean(content: str | None) -> str:
    """A message's text as Qwen's server used it: no leading newlines, no trailing whitespace."""
    return (content or "").lstrip("\n").rstrip()


def react_turns(messages: Sequence[Mapping[str, Any]], functions: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """OpenAI messages (with tool calls and results) as plain chat turns in the ReAct layout.

    Each call becomes its own Thought/Action/Action Input/Observation step, with its result (matched by
    `tool_call_id`, or in order) as the observation; an assistant turn goes on across steps and a final answer.
    """
    turns: list[dict[str, str]] = []
    index = 0
    while index < len(messages):
        message = messages[index]
        index += 1
        if message["role"] == "tool":
            raise ValueError("A tool message must follow the assistant message whose tool call it answers.")
        if message["role"] != "assistant":
            turns.append({"role": message["role"], "content": clean(message.get("content"))})
            continue
        results = []
        while index < len(messages) and messages[index]["role"] == "tool":
            results.append(messages[index])
            index += 1
        text = assistant_text(message, results, bool(functions))
        if turns and turns[-1]["role"] == "assistant":
            turns[-1]["content"] += f"\n{text}"
        else:
            turns.append({"role": "assistant", "content": text})
    if messages and messages[-1]["role"] == "tool":
        turns[-1]["content"] += f"\n{THOUGHT}"
    if functions:
        asking = [turn for turn in turns if turn["role"] == "user"]
        if not asking:
            raise ValueError("A conversation with tools needs a user message.")
        asking[-1]["content"] = f"{instruction(functions)}\n\nQuestion: {asking[-1]['content']}"
    return turns


def assistant_text(message: Mapping[str, Any], results: Sequence[Mapping[str, Any]], with_tools: bool) -> str:
    """An assistant message in ReAct lines: its calls as steps, or its answer as the final answer."""
    content = clean(message.get("content"))
    calls = message.get("tool_calls") or []
    if not calls:
        return f"{THOUGHT} I now know the final answer.\n{FINAL_ANSWER} {content}" if with_tools else content
    steps = []
    for number, (call, result) in enumerate(zip(calls, paired_results(calls, results), strict=True)):
        thought = content if number == 0 else ""
        thought = thought if thought.startswith(THOUGHT) else f"{THOUGHT} {thought}"
        function = call["function"]
        arguments = function["arguments"]
        arguments = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        steps.append(
            f"{thought}\n{ACTION} {function['name']}\n{ACTION_INPUT} {arguments}\n"
            f"{OBSERVATION} {clean(result.get('content'))}"
        )
    return "\n".join(steps)


def paired_results(
    calls: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any] | None]:
    """The result of each call: by `tool_call_id`, or in order when the results carry no ids."""
    if all(result.get("tool_call_id") for result in results):
        by_id = {result["tool_call_id"]: result for result in results}
        paired: list[Mapping[str, Any] | None] = [by_id.get(call.get("id")) for call in calls]
    else:
        paired = list(results)
    if len(results) != len(calls) or None in paired:
        raise ValueError("Each tool call needs one tool message with its result, right after the assistant message.")
    return paired


def encode(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]) -> list[int]:
    """Prompt ids of a conversation with tools in the ReAct layout, framed by the model's own chat template; a
    conversation that ends with a tool's result is left open inside the assistant's turn."""
    turns = react_turns(messages, [tool["function"] for tool in tools])
    return encode_chat(tokenizer, turns, continue_final=bool(messages) and messages[-1]["role"] == "tool")


def call_text(name: str) -> tuple[str, str]:
    """The text around the arguments of a call to `name`, as the model writes it."""
    return f"{ACTION} {name}\n{ACTION_INPUT} ", ""


LEADS = (THOUGHT, ACTION, FINAL_ANSWER)


class ReactScanner:
    """Reads a ReAct reply as it streams: a call (`Action:` and `Action Input:` lines), a final answer, or text.

    A reply that opens with a ReAct line is held until its first `Action:` or `Final Answer:` line: a call's
    text is its thought, a final answer's text what follows `Final Answer:`. Any other reply streams as text up
    to an `Action:` line. A call is well formed when its action is callable and its input a JSON object; it ends at
    `Observation:` or with the reply, and what follows it is dropped. A call that is not well formed leaves the
    whole reply as text.
    """

    def __init__(self, callable_names: Collection[str]) -> None:
        self.callable_names = callable_names
        self.reply = ""
        self.sent = 0  # self.reply[: self.sent] is decided: sent as text, or dropped
        self.absent: dict[str, int] = {}  # marker -> the reply's length when it last was not found (linear time)
        self.mode: Callable[[bool], list[Scanned]] = self.start
        self.call_at = 0  # where the call's `Action:` line starts
        self.thought = ""  # the text that goes with the call

    def feed(self, text: str) -> list[Scanned]:
        self.reply += text
        return self.scan(final=False)

    def finish(self) -> list[Scanned]:
        return self.scan(final=True)

    def scan(self, final: bool) -> list[Scanned]:
        found: list[Scanned] = []
        mode = None
        while mode != self.mode:
            mode = self.mode
            found += mode(final)
        return found

    def start(self, final: bool) -> list[Scanned]:
        if not final and any(lead.startswith(self.reply) for lead in LEADS):
            return []
        self.mode = self.react if self.reply.startswith(LEADS) else self.plain
        return []

    def plain(self, final: bool) -> list[Scanned]:
        action = self.line(ACTION, self.sent)
        if action >= 0:
            self.call_at = action
            self.mode = self.call
            return [self.send(len(self.reply[:action].rstrip()))]
        return [self.send(len(self.reply) - (0 if final else held_back(self.reply[self.sent :], f"\n{ACTION}")))]

    def react(self, final: bool) -> list[Scanned]:
        action, answer = self.line(ACTION, 0), self.line(FINAL_ANSWER, 0)
        if answer >= 0 and (action < 0 or answer < action):
            self.sent = answer + len(FINAL_ANSWER)
            self.mode = self.answer
        elif action >= 0:
            self.thought = self.reply[:action].strip().removeprefix(THOUGHT).strip()
            self.call_at = action
            self.mode = self.call
        elif final:
            self.mode = self.text
        return []

    def call(self, final: bool) -> list[Scanned]:
        arguments_at = self.line(ACTION_INPUT, self.call_at)
        observation = self.line(OBSERVATION, arguments_at) if arguments_at >= 0 else -1
        if not final and observation < 0:
            return []
        if arguments_at < 0:
            self.mode = self.text
            return []
        name = self.reply[self.call_at + len(ACTION) : arguments_at].strip()
        arguments = self.reply[arguments_at + len(ACTION_INPUT) : observation if observation >= 0 else None].strip()
        call = well_formed_call(name, arguments, self.callable_names)
        if call is None:
            self.mode = self.text
            return []
        self.mode = self.done
        return [self.thought, call]

    def answer(self, final: bool) -> list[Scanned]:
        answer = self.reply[self.sent :].lstrip()
        if answer or final:
            self.sent = len(self.reply) - len(answer)
            self.mode = self.text
        return []

    def text(self, final: bool) -> list[Scanned]:
        return [self.send(len(self.reply))]

    def done(self, final: bool) -> list[Scanned]:
        self.sent = len(self.reply)
        return []

    def line(self, marker: str, since: int) -> int:
        """Where `marker` next starts a line at or after `since`, or -1 (each marker is looked for from one `since`,
        or a later one, so the text it was already missing from is not searched again)."""
        if since == 0 and self.reply.startswith(marker):
            return 0
        at = self.reply.find(f"\n{marker}", max(since, self.absent.get(marker, 0) - len(marker)))
        if at < 0:
            self.absent[marker] = len(self.reply)
            return -1
        return at + 1

    def send(self, end: int) -> str:
        text, self.sent = self.reply[self.sent : end], max(self.sent, end)
        return text
