"""Reading tool calls out of replies: whole replies, the same replies streamed in every split (each character
boundary, and the real tokenizer's tokens), OpenAI's delta shape, and the text a required call must be."""

from __future__ import annotations

import json
import re

import pytest

from gptq_chat.chat.streamer import IncrementalDecoder
from gptq_chat.chat.tool_calls import ToolCallDelta
from gptq_chat.chat.tools import tool_use

TOOLS = [
    {"type": "function", "function": {"name": "get_current_temperature", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_temperature_date", "parameters": {"type": "object"}}},
]
REACT_TOOLS = [{"type": "function", "function": {"name": "get_current_weather", "parameters": {"type": "object"}}}]
NOW = ("get_current_temperature", '{"location": "San Francisco, CA, USA"}')
TOMORROW = ("get_temperature_date", '{"location": "San Francisco, CA, USA", "date": "2024-10-01"}')
BOSTON = ("get_current_weather", '{"location": "Boston, MA"}')

# (reply, its text, its calls as (name, arguments))
HERMES_REPLIES = [
    pytest.param("It is 26.1°C in San Francisco.", "It is 26.1°C in San Francisco.", [], id="text"),
    pytest.param(
        'Let me look that up.\n<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": '
        '"San Francisco, CA, USA"}}\n</tool_call>',
        "Let me look that up.",
        [NOW],
        id="text-then-call",
    ),
    pytest.param(  # Qwen's guide: the reply of Qwen2.5-7B-Instruct to its example
        '<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": "San Francisco, CA, USA"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_temperature_date", "arguments": {"location": "San Francisco, CA, '
        'USA", "date": "2024-10-01"}}\n</tool_call>',
        "",
        [NOW, TOMORROW],
        id="two-parallel-calls",
    ),
    pytest.param(
        'First now. <tool_call>{"name": "get_current_temperature", "arguments": "{\\"location\\": \\"San Francisco, '
        'CA, USA\\"}"}</tool_call>\n\nThen tomorrow.\n<tool_call>\n{"name": "get_temperature_date", "arguments": '
        '{"location": "San Francisco, CA, USA", "date": "2024-10-01"}}\n</tool_call>\n',
        "First now.\nThen tomorrow.",
        [NOW, TOMORROW],
        id="texts-between-calls-and-arguments-as-a-string",
    ),
    pytest.param(
        'Trying.\n<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": "SF"}\n</tool_call>',
        'Trying.\n<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": "SF"}\n</tool_call>',
        [],
        id="malformed-json-stays-text",
    ),
    pytest.param(
        '<tool_call>\n{"name": "delete_everything", "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "delete_everything", "arguments": {}}\n</tool_call>',
        [],
        id="unknown-function-stays-text",
    ),
    pytest.param(
        'Sure.\n<tool_call>\n{"name": "get_current_temperature", "arguments": {"loc',
        'Sure.\n<tool_call>\n{"name": "get_current_temperature", "arguments": {"loc',
        [],
        id="cut-off-call-stays-text",
    ),
    pytest.param(
        '<tool_call>\n{"name": "get_current_temperature", "arguments": {"lo<tool_call>\n{"name": '
        '"get_temperature_date", "arguments": {"location": "San Francisco, CA, USA", "date": "2024-10-01"}}\n'
        "</tool_call>",
        '<tool_call>\n{"name": "get_current_temperature", "arguments": {"lo',
        [TOMORROW],
        id="a-broken-call-before-a-good-one",
    ),
    pytest.param(
        'Calls go in <tool_call> tags: <tool_call>\n{"name": "get_temperature_date", "arguments": {"location": '
        '"San Francisco, CA, USA", "date": "2024-10-01"}}\n</tool_call>',
        "Calls go in <tool_call> tags:",
        [TOMORROW],
        id="a-tag-in-prose-stays-text",
    ),
]
REACT_REPLIES = [
    pytest.param(
        "Thought: I now know the final answer.\nFinal Answer: 波士顿现在晴，22摄氏度。",
        "波士顿现在晴，22摄氏度。",
        [],
        id="final-answer",
    ),
    pytest.param(
        'Thought: 我应该查询波士顿的天气。\nAction: get_current_weather\nAction Input: {"location": "Boston, MA"}\n',
        "我应该查询波士顿的天气。",
        [BOSTON],
        id="thought-then-call",
    ),
    pytest.param(
        'Thought: 查询天气。\nAction: get_current_weather\nAction Input: {"location": "Boston, MA"}\n'
        'Observation: {"temperature": "30"}\nThought: I now know the final answer.\nFinal Answer: 30度。',
        "查询天气。",
        [BOSTON],
        id="invented-observation-is-dropped",
    ),
    pytest.param(
        'Action: get_current_weather\nAction Input: {"location": "Boston, MA"}', "", [BOSTON], id="call-alone"
    ),
    pytest.param("你好！有什么可以帮你的吗？", "你好！有什么可以帮你的吗？", [], id="plain-text"),
    pytest.param(
        'Let me check.\nAction: get_current_weather\nAction Input: {"location": "Boston, MA"}',
        "Let me check.",
        [BOSTON],
        id="plain-text-then-call",
    ),
    pytest.param(
        "Thought: 查询天气。\nAction: get_current_weather\nAction Input: Boston\n",
        "Thought: 查询天气。\nAction: get_current_weather\nAction Input: Boston\n",
        [],
        id="input-not-json-stays-text",
    ),
    pytest.param(
        'Thought: 搜索。\nAction: google_search\nAction Input: {"query": "Boston"}',
        'Thought: 搜索。\nAction: google_search\nAction Input: {"query": "Boston"}',
        [],
        id="unknown-action-stays-text",
    ),
    pytest.param("Thought: 我不确定。", "Thought: 我不确定。", [], id="thought-alone-stays-text"),
]


def calls_of(calls) -> list[tuple[str, str]]:
    return [(call.name, call.arguments) for call in calls]


def streamed(use, pieces) -> tuple[str, list[tuple[str, str]], list]:
    """Text, calls and deltas of a reply fed to a fresh stream in `pieces`."""
    stream = use.stream()
    deltas = [delta for piece in pieces for delta in stream.push(piece)] + stream.finish()
    text = "".join(d for d in deltas if isinstance(d, str))
    return text, calls_of(stream.calls), deltas


def every_split(reply: str) -> list[list[str]]:
    """The reply one character at a time, and cut in two at every boundary."""
    return [list(reply)] + [[reply[:cut], reply[cut:]] for cut in range(len(reply) + 1)]


def token_pieces(tokenizer, reply: str) -> list[str]:
    """The reply as the engine streams it: the real tokenizer's tokens (a call's tags as their own tokens),
    decoded one at a time."""
    decoder = IncrementalDecoder(tokenizer)
    return [decoder.push(token) for token in tokenizer(reply, add_special_tokens=False)["input_ids"]]


@pytest.mark.parametrize(("reply", "text", "calls"), HERMES_REPLIES)
def test_hermes_reply_text_and_calls_whole_and_streamed(qwen25_tokenizer, reply, text, calls) -> None:
    use = tool_use(qwen25_tokenizer, TOOLS)
    parsed = use.parse(reply)
    assert (parsed.text, calls_of(parsed.tool_calls)) == (text, calls)
    for pieces in [*every_split(reply), token_pieces(qwen25_tokenizer, reply)]:
        assert streamed(use, pieces)[:2] == (text, calls), pieces


@pytest.mark.parametrize(("reply", "text", "calls"), REACT_REPLIES)
def test_react_reply_text_and_calls_whole_and_streamed(qwen_tokenizer, reply, text, calls) -> None:
    use = tool_use(qwen_tokenizer, REACT_TOOLS)
    parsed = use.parse(reply)
    assert (parsed.text, calls_of(parsed.tool_calls)) == (text, calls)
    for pieces in [*every_split(reply), token_pieces(qwen_tokenizer, reply)]:
        assert streamed(use, pieces)[:2] == (text, calls), pieces


def test_text_streams_as_it_comes_and_only_a_possible_call_is_held(qwen_tokenizer, qwen25_tokenizer) -> None:
    hermes = tool_use(qwen25_tokenizer, TOOLS).stream()
    assert hermes.push("It is 26.1°C") == ["It is 26.1°C"]
    assert hermes.push(" here.\n<tool_") == [" here."]  # the newline and the half tag may start a call
    assert hermes.push("call> is a tag.") == ["\n<tool_call> is a tag."]
    react = tool_use(qwen_tokenizer, REACT_TOOLS).stream()
    assert react.push("Thought: I now know the final answer.\nFinal") == []  # a thought is held
    assert react.push(" Answer: 晴") == ["晴"]
    assert react.push("天。") == ["天。"] and react.finish() == []


def test_deltas_have_openai_shape_index_id_and_name_first_then_arguments(qwen25_tokenizer) -> None:
    reply = HERMES_REPLIES[2].values[0]
    *_, deltas = streamed(tool_use(qwen25_tokenizer, TOOLS), list(reply))
    expected = [(0, NOW[0], ""), (0, None, NOW[1]), (1, TOMORROW[0], ""), (1, None, TOMORROW[1])]
    assert [(d.index, d.name, d.arguments) for d in deltas] == expected
    first, arguments = deltas[0].openai(), deltas[1].openai()
    assert first == {"index": 0, "id": deltas[0].id, "type": "function", "function": {"name": NOW[0], "arguments": ""}}
    assert arguments == {"index": 0, "function": {"arguments": NOW[1]}}
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", d.id) for d in deltas if d.id) and deltas[0].id != deltas[2].id


def test_parsed_calls_have_openai_message_shape(qwen25_tokenizer) -> None:
    call = tool_use(qwen25_tokenizer, TOOLS).parse(HERMES_REPLIES[1].values[0]).tool_calls[0]
    assert call.openai() == {"id": call.id, "type": "function", "function": {"name": NOW[0], "arguments": NOW[1]}}


def test_without_parallel_calls_the_reply_is_done_after_its_first_call(qwen25_tokenizer) -> None:
    use = tool_use(qwen25_tokenizer, TOOLS, parallel_tool_calls=False)
    stream = use.stream()
    deltas = stream.push(HERMES_REPLIES[2].values[0]) + stream.finish()
    assert stream.done and [d.index for d in deltas if isinstance(d, ToolCallDelta)] == [0, 0]
    assert calls_of(use.parse(HERMES_REPLIES[2].values[0]).tool_calls) == [NOW]


def test_tool_choice_none_reads_every_reply_as_text(qwen_tokenizer, qwen25_tokenizer) -> None:
    for tokenizer, reply in ((qwen25_tokenizer, HERMES_REPLIES[2]), (qwen_tokenizer, REACT_REPLIES[1])):
        parsed = tool_use(tokenizer, TOOLS + REACT_TOOLS, "none").parse(reply.values[0])
        assert (parsed.text, parsed.tool_calls) == (reply.values[0], [])


# --- required and named calls: the text the reply must be ----------------------------------------------------


def test_required_hermes_call_text_is_qwens_and_reads_back(qwen25_tokenizer) -> None:
    use = tool_use(qwen25_tokenizer, TOOLS, "required")
    assert use.forced is not None and use.forced.separator == "\n"
    now, tomorrow = use.forced.shapes
    assert (now.prefix, now.suffix) == (
        '<tool_call>\n{"name": "get_current_temperature", "arguments": ',
        "}\n</tool_call>",
    )
    assert now.arguments_schema == {"type": "object"}
    reply = use.forced.separator.join(
        shape.prefix + json.dumps(json.loads(arguments)) + shape.suffix
        for shape, arguments in ((now, NOW[1]), (tomorrow, TOMORROW[1]))
    )
    assert (use.parse(reply).text, calls_of(use.parse(reply).tool_calls)) == ("", [NOW, TOMORROW])


def test_named_react_call_text_is_qwens_and_reads_back(qwen_tokenizer) -> None:
    use = tool_use(qwen_tokenizer, REACT_TOOLS, {"type": "function", "function": {"name": "get_current_weather"}})
    assert use.forced is not None and use.forced.separator is None
    (shape,) = use.forced.shapes
    assert (shape.name, shape.prefix, shape.suffix) == (BOSTON[0], "Action: get_current_weather\nAction Input: ", "")
    assert calls_of(use.parse(shape.prefix + BOSTON[1] + shape.suffix).tool_calls) == [BOSTON]


def test_a_named_choice_calls_only_that_function(qwen25_tokenizer) -> None:
    use = tool_use(qwen25_tokenizer, TOOLS, {"type": "function", "function": {"name": "get_temperature_date"}})
    assert [shape.name for shape in use.forced.shapes] == ["get_temperature_date"]
    assert calls_of(use.parse(HERMES_REPLIES[2].values[0]).tool_calls) == [TOMORROW]
    assert len(use.tools) == 2  # the model still sees every tool


@pytest.mark.parametrize(
    ("tools", "choice", "message"),
    [
        ([{"type": "function", "function": {"name": "get weather"}}], "auto", r"tools\[0\] must be"),
        ([{"type": "code_interpreter"}], "auto", r"tools\[0\] must be"),
        (TOOLS, {"type": "function", "function": {"name": "send_email"}}, "'send_email', which is not among"),
        (TOOLS, {"type": "function", "function": "get_temperature_date"}, "None, which is not among"),
        ([], "required", "needs at least one tool"),
        (TOOLS, "any", "must be 'none', 'auto', 'required' or a named function"),
    ],
)
def test_bad_tools_or_choices_are_refused_with_the_reason(qwen25_tokenizer, tools, choice, message) -> None:
    with pytest.raises(ValueError, match=message):
        tool_use(qwen25_tokenizer, tools, choice)
