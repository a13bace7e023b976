"""What agent frameworks ask of the API beyond text: JSON that follows a schema, tool calls the reply must make,
log-probabilities and seeds; through the official `openai` client, raw HTTP and LangChain, on the demo model.

The demo model is tiny: left free it rarely writes JSON or a call. Every structured reply here is therefore the
grammar's doing, so a test fails whenever the constraint does not reach the sampler.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from gptq_chat.api.protocol import ServedModel
from gptq_chat.chat.tools import tool_use
from gptq_chat.testing.json_schemas import SCHEMAS
from tests.support.fixtures_api import KEY, post

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "Describe a city you like."}]
CITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "population": {"type": "integer", "minimum": 0, "maximum": 40_000_000},
        "coastal": {"type": "boolean"},
    },
    "required": ["name", "population", "coastal"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Today's weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]}},
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "clock",
        "description": "The time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"offset_hours": {"type": "integer", "minimum": -12, "maximum": 14}},
            "required": ["offset_hours"],
        },
    },
}
SCHEMA_OF = {tool["function"]["name"]: tool["function"]["parameters"] for tool in (WEATHER, CLOCK)}


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def json_schema_format(schema: dict[str, Any], name: str = "city") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


# -- JSON -------------------------------------------------------------------------------------------------


def test_a_reply_follows_its_json_schema_on_both_paths(api: tuple[ServedModel, str]) -> None:
    served, url = api
    completion = openai_client(url).chat.completions.create(
        model=served.name,
        messages=ASK,
        max_tokens=80,
        temperature=1.0,
        seed=3,
        response_format=json_schema_format(CITY),
    )
    choice = completion.choices[0]
    jsonschema.validate(json.loads(choice.message.content), CITY)
    assert choice.finish_reason == "stop"


@pytest.mark.parametrize("case", SCHEMAS, ids=[case.name for case in SCHEMAS])
def test_every_reply_validates_against_its_schema(client: openai.OpenAI, served: ServedModel, case) -> None:
    """Sampled, so each schema is met by a reply the model did not pick greedily."""
    completion = client.chat.completions.create(
        model=served.name,
        messages=ASK,
        max_tokens=200,
        temperature=1.0,
        seed=7,
        response_format=json_schema_format(case.schema, case.name),
    )
    jsonschema.validate(json.loads(completion.choices[0].message.content), case.schema)


def test_json_object_gives_an_object_and_a_text_completion_takes_a_schema_too(
    client: openai.OpenAI, served: ServedModel
) -> None:
    chat = client.chat.completions.create(
        model=served.name, messages=ASK, max_tokens=60, temperature=0, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(chat.choices[0].message.content), dict)
    text = client.completions.create(
        model=served.name,
        prompt="A city, as JSON:",
        max_tokens=80,
        temperature=0,
        extra_body={"response_format": json_schema_format(CITY)},
    )
    jsonschema.validate(json.loads(text.choices[0].text), CITY)


def test_concurrent_streams_each_follow_their_own_schema(batched: tuple[ServedModel, str]) -> None:
    """Four requests in the fast engine's four slots at once, each with its own grammar mask row."""
    served, url = batched
    schemas = [
        CITY,
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 3, "maxItems": 5},
        {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        },
        {"type": "string", "enum": ["red", "green", "blue"]},
    ]
    start = threading.Barrier(len(schemas))

    def streamed(schema: dict[str, Any]) -> str:
        start.wait()
        stream = openai_client(url).chat.completions.create(
            model=served.name,
            messages=ASK,
            max_tokens=80,
            temperature=1.0,
            response_format=json_schema_format(schema),
            stream=True,
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    with ThreadPoolExecutor(len(schemas)) as pool:
        replies = list(pool.map(streamed, schemas))
    for schema, reply in zip(schemas, replies, strict=True):
        jsonschema.validate(json.loads(reply), schema)


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        (json_schema_format({"type": "object", "not": {"required": ["a"]}}), "response_format.json_schema.schema"),
        (json_schema_format({"type": "strange"}), "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
        ({"type": "yaml"}, "response_format.type"),
    ],
    ids=["a keyword it cannot enforce", "not a schema", "no schema", "unknown type"],
)
def test_a_schema_that_cannot_be_enforced_is_refused_by_name(
    base_url: str, served: ServedModel, response_format: dict, param: str
) -> None:
    response = post(base_url, {"model": served.name, "messages": ASK, "response_format": response_format})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == param, response.text


# -- tool calls the reply must make -----------------------------------------------------------------------


def assert_valid_calls(calls: list[Any], names: set[str]) -> None:
    assert calls, "no tool call"
    for call in calls:
        assert call.function.name in names and call.id
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA_OF[call.function.name])


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "one call"])
def test_tool_choice_required_makes_a_valid_call(api: tuple[ServedModel, str], parallel: bool) -> None:
    served, url = api
    completion = openai_client(url).chat.completions.create(
        model=served.name,
        messages=[{"role": "user", "content": "What time is it in Lima?"}],
        tools=[WEATHER, CLOCK],
        tool_choice="required",
        parallel_tool_calls=parallel,
        max_tokens=120,
        temperature=1.0,
        seed=5,
    )
    choice = completion.choices[0]
    assert_valid_calls(choice.message.tool_calls, {"weather", "clock"})
    assert choice.finish_reason == "tool_calls" and (parallel or len(choice.message.tool_calls) == 1)


def test_a_named_function_is_the_one_called_and_streams_as_deltas(client: openai.OpenAI, served: ServedModel) -> None:
    """The `openai` client's stream helper assembles the call from `delta.tool_calls` pieces."""
    with client.chat.completions.stream(
        model=served.name,
        messages=[{"role": "user", "content": "Is it raining?"}],
        tools=[WEATHER, CLOCK],
        tool_choice={"type": "function", "function": {"name": "weather"}},
        max_tokens=60,
        temperature=0,
    ) as stream:
        final = stream.get_final_completion()
    assert_valid_calls(final.choices[0].message.tool_calls, {"weather"})
    assert final.choices[0].finish_reason == "tool_calls"


def test_a_streamed_call_is_the_call_answered_whole_and_its_result_goes_back(
    client: openai.OpenAI, served: ServedModel
) -> None:
    """Greedy, so the stream and the whole answer are the same call; then the call and its result go back through
    the model's format, and the model answers in text."""
    asked = {
        "model": served.name,
        "messages": [{"role": "user", "content": "What time is it in Tokyo?"}],
        "tools": [WEATHER, CLOCK],
        "tool_choice": {"type": "function", "function": {"name": "clock"}},
        "max_tokens": 60,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**asked).choices[0].message.tool_calls[0]
    with client.chat.completions.stream(**asked) as stream:
        streamed = stream.get_final_completion().choices[0].message.tool_calls[0]
    assert (streamed.function.name, json.loads(streamed.function.arguments)) == (
        whole.function.name,
        json.loads(whole.function.arguments),
    )
    result = {"role": "tool", "tool_call_id": whole.id, "content": '{"time": "14:05"}'}
    call = {"role": "assistant", "content": None, "tool_calls": [whole.model_dump(exclude_none=True)]}
    messages = [*asked["messages"], call, result]
    answer = client.chat.completions.create(**(asked | {"messages": messages, "tool_choice": "none", "max_tokens": 24}))
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    prompt = tool_use(served.tokenizer, [WEATHER, CLOCK], "none").encode(served.tokenizer, messages)
    assert answer.usage.prompt_tokens == len(prompt) and '{"time": "14:05"}' in served.tokenizer.decode(prompt)


def test_a_required_call_and_a_response_format_together_are_refused(base_url: str, served: ServedModel) -> None:
    fields = {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}
    response = post(base_url, {"model": served.name, "messages": ASK, **fields})
    assert response.status_code == 400 and response.json()["error"]["param"] == "response_format", response.text


# -- log-probabilities and seeds --------------------------------------------------------------------------


def test_chat_logprobs_spell_the_reply_and_the_greedy_token_is_the_likeliest(
    api: tuple[ServedModel, str],
) -> None:
    served, url = api
    client = openai_client(url)
    asked = {"model": served.name, "messages": ASK, "max_tokens": 12, "temperature": 0, "logprobs": True}
    asked["extra_body"] = {"repetition_penalty": 1.0}  # else the greedy token need not be the likeliest
    completion = client.chat.completions.create(**asked, top_logprobs=3)
    choice = completion.choices[0]
    content = choice.logprobs.content
    assert len(content) == completion.usage.completion_tokens
    assert b"".join(bytes(entry.bytes) for entry in content).decode() == choice.message.content
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        best = entry.top_logprobs[0]
        assert best.token == entry.token and best.logprob == pytest.approx(entry.logprob, abs=1e-4)
        assert [alt.logprob for alt in entry.top_logprobs] == sorted(
            (alt.logprob for alt in entry.top_logprobs), reverse=True
        )
    streamed = client.chat.completions.create(**asked, top_logprobs=3, stream=True)
    pieces = [
        entry
        for chunk in streamed
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content
    ]
    assert [(entry.token, round(entry.logprob, 3)) for entry in pieces] == [
        (entry.token, round(entry.logprob, 3)) for entry in content
    ]


def test_a_text_completion_gives_its_tokens_offsets_and_alternatives(
    client: openai.OpenAI, served: ServedModel
) -> None:
    completion = client.completions.create(
        model=served.name,
        prompt="The capital of France is",
        max_tokens=6,
        temperature=0,
        logprobs=2,
        extra_body={"repetition_penalty": 1.0},
    )
    choice = completion.choices[0]
    logprobs = choice.logprobs
    count = completion.usage.completion_tokens
    assert "".join(logprobs.tokens) == choice.text and len(logprobs.tokens) == count > 1
    assert logprobs.text_offset == [sum(len(token) for token in logprobs.tokens[:i]) for i in range(count)]
    for token, logprob, alternatives in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert len(alternatives) == 2 and alternatives[token] == pytest.approx(logprob, abs=1e-4)


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"top_logprobs": 2}, "top_logprobs"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs")],
    ids=["without logprobs", "too many"],
)
def test_logprob_requests_out_of_range_are_refused(
    base_url: str, served: ServedModel, fields: dict, param: str
) -> None:
    response = post(base_url, {"model": served.name, "messages": ASK, **fields})
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_a_seed_repeats_a_sampled_reply_and_other_seeds_differ(client: openai.OpenAI, served: ServedModel) -> None:
    def reply(seed: int) -> str:
        completion = client.chat.completions.create(
            model=served.name, messages=ASK, max_tokens=24, temperature=1.2, top_p=1.0, seed=seed
        )
        return completion.choices[0].message.content

    first = reply(11)
    assert reply(11) == first
    assert len({first, reply(12), reply(13)}) == 3  # other seeds sample otherwise


# -- LangChain ---------------------------------------------------------------------------------------------


class City(BaseModel):
    name: str = Field(max_length=20)
    population: int = Field(ge=0, le=40_000_000)
    coastal: bool


def test_langchain_structured_output_and_bound_tools(base_url: str, served: ServedModel) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(
        model=served.name, base_url=f"{base_url}/v1", api_key=KEY, max_tokens=80, temperature=0, max_retries=0
    )
    city = model.with_structured_output(City, method="json_schema", strict=True).invoke("Describe a city you like.")
    assert isinstance(city, City)
    called = model.bind_tools([WEATHER, CLOCK], tool_choice="clock").invoke([HumanMessage("What time is it?")])
    assert [call["name"] for call in called.tool_calls] == ["clock"]
    jsonschema.validate(called.tool_calls[0]["args"], SCHEMA_OF["clock"])
