"""The OpenAI-compatible API: the official `openai` client and raw HTTP against serve.py on the demo model.

The server is a real uvicorn on a free loopback port (in a background thread of this process, so the
tests can look at the scheduler behind it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from gptq_chat.api.access import API_KEY, API_KEY_ENV, exposure_problem
from gptq_chat.api.protocol import ChatCompletionRequest, ServedModel, validate
from gptq_chat.api.server import Server, create_app
from gptq_chat.chat.prompt import encode_chat
from gptq_chat.chat.streamer import StopText
from gptq_chat.chat.tools import tool_use
from gptq_chat.engine.scheduler import Scheduler
from gptq_chat.engine.tensor_parallel import free_port
from gptq_chat.loading.loader import load
from gptq_chat.testing.soak import wait_until_serving
from tests.support.fixtures_api import KEY, post
from tests.support.live_server import serving
from tests.support.near_tie import assert_near_tie
from tests.test_demo_model import QUESTIONS  # the demo model answers each right, each differently

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Tell me a long story about the sea."}]
SHORT = 24


def greedy_ids(served: ServedModel, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """What the model generates after `prompt_ids` (stop token excluded), asked of the scheduler directly."""
    settings = replace(served.defaults, max_new_tokens=max_tokens, temperature=0.0)
    tokens = list(served.scheduler.generate(prompt_ids, settings, threading.Event()))
    ends = [i for i, token in enumerate(tokens) if token in settings.stop_token_ids]
    return tokens[: ends[0]] if ends else tokens


def greedy_tokens(served: ServedModel, messages: list[dict], max_tokens: int) -> list[int]:
    """The greedy reply to `messages` through the chat template."""
    return greedy_ids(served, encode_chat(served.tokenizer, messages), max_tokens)


def wait_until_idle(served: ServedModel, within: float) -> float:
    started = time.monotonic()
    while served.scheduler.stats().active or served.scheduler.stats().waiting:
        assert time.monotonic() - started < within, served.scheduler.stats()
        time.sleep(0.02)
    return time.monotonic() - started


# -- answers ---------------------------------------------------------------------------------------------


def test_a_completion_has_the_answer_the_exact_usage_and_a_request_id(
    client: openai.OpenAI, served: ServedModel
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=served.name,
        messages=FRANCE,
        max_tokens=SHORT,
        temperature=0,  # type: ignore[arg-type]
    )
    completion = raw.parse()
    expected = greedy_tokens(served, FRANCE, SHORT)
    choice = completion.choices[0]
    assert "Paris" in choice.message.content and choice.message.role == "assistant"
    assert choice.message.content == served.tokenizer.decode(expected, skip_special_tokens=True)
    assert choice.finish_reason == "stop" and len(expected) < SHORT
    assert completion.usage.prompt_tokens == len(encode_chat(served.tokenizer, FRANCE))
    assert completion.usage.completion_tokens == len(expected)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + len(expected)
    request_id = raw.headers["x-request-id"]
    assert completion.id == f"chatcmpl-{request_id}" and len(request_id) == 32
    assert completion.model == served.name and completion.object == "chat.completion"


def test_streaming_gives_the_same_text_then_the_finish_and_usage_chunks(
    client: openai.OpenAI, served: ServedModel
) -> None:
    stream = client.chat.completions.create(
        model=served.name,
        messages=FRANCE,  # type: ignore[arg-type]
        max_tokens=SHORT,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = greedy_tokens(served, FRANCE, SHORT)
    assert text == served.tokenizer.decode(expected, skip_special_tokens=True) and "Paris" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 3  # streamed, not one lump
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(expected)
    assert chunks[-1].usage.prompt_tokens == len(encode_chat(served.tokenizer, FRANCE))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


PROMPT = "The capital of France is Paris. The capital of Italy is"


def test_a_text_completion_continues_the_prompt_as_it_is(client: openai.OpenAI, served: ServedModel) -> None:
    """No chat template: the prompt's own tokens, continued; 16 tokens unless told otherwise, as OpenAI."""
    prompt_ids = served.tokenizer(PROMPT)["input_ids"]
    completion = client.completions.create(model=served.name, prompt=PROMPT, temperature=0)
    expected = greedy_ids(served, prompt_ids, 16)
    choice = completion.choices[0]
    assert choice.text == served.tokenizer.decode(expected, skip_special_tokens=True) and "Rome" in choice.text
    assert completion.usage.prompt_tokens == len(prompt_ids) and completion.usage.completion_tokens == len(expected)
    assert (choice.finish_reason == "length") == (len(expected) == 16)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    by_ids = client.completions.create(model=served.name, prompt=prompt_ids, temperature=0)
    assert by_ids.choices[0].text == choice.text


def test_a_streamed_text_completion_gives_the_same_text_then_the_finish_and_usage(
    client: openai.OpenAI, served: ServedModel
) -> None:
    whole = client.completions.create(model=served.name, prompt=PROMPT, max_tokens=12, temperature=0)
    chunks = list(
        client.completions.create(
            model=served.name,
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert len([c for c in chunks if c.choices and c.choices[0].text]) >= 3  # streamed, not one lump
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"echo": True}, "echo"),
        ({"suffix": "return x"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [10**9]}, "prompt"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"logprobs": 21}, "logprobs"),
        ({"temprature": 0.2}, "temprature"),
    ],
)
def test_a_text_completion_refuses_what_it_cannot_do_by_name(base_url: str, fields: dict, param: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/completions",
        json={"model": "SmolLM2-135M-Instruct-GPTQ-Int4", "prompt": PROMPT, **fields},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_max_tokens_ends_with_finish_reason_length(client: openai.OpenAI, served: ServedModel) -> None:
    completion = client.chat.completions.create(
        model=served.name,
        messages=STORY,
        max_tokens=3,
        temperature=0,  # type: ignore[arg-type]
    )
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 3


def test_a_system_message_and_earlier_turns_reach_the_model(client: openai.OpenAI, served: ServedModel) -> None:
    messages = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "What is the capital of Japan?"},
        {"role": "assistant", "content": "Tokyo."},
        *FRANCE,
    ]
    completion = client.chat.completions.create(
        model=served.name,
        messages=messages,
        max_tokens=SHORT,
        temperature=0,  # type: ignore[arg-type]
    )
    assert completion.usage.prompt_tokens == len(encode_chat(served.tokenizer, messages))
    assert "Paris" in completion.choices[0].message.content


def test_stop_strings_cut_the_text_and_end_the_generation(client: openai.OpenAI, served: ServedModel) -> None:
    full = served.tokenizer.decode(greedy_tokens(served, FRANCE, SHORT), skip_special_tokens=True)
    assert " Paris" in full
    cut = full[: full.index(" Paris")]
    common = {"model": served.name, "messages": FRANCE, "max_tokens": SHORT, "temperature": 0}
    completion = client.chat.completions.create(**common, stop=[" Paris", "never appears"])  # type: ignore[call-overload]
    assert completion.choices[0].message.content == cut and completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens < len(greedy_tokens(served, FRANCE, SHORT))
    chunks = list(client.chat.completions.create(**common, stop=" Paris", stream=True))  # type: ignore[call-overload]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_text_that_may_begin_a_stop_string_is_held_back_until_it_cannot() -> None:
    cut = StopText(("Paris", "END"))
    out = [cut.push(piece) for piece in ["The cap", "ital is Pa", "ris. More"]]
    assert out == ["The cap", "ital is ", ""] and cut.stopped and cut.flush() == ""
    cut = StopText(("Paris",))
    assert [cut.push("Par"), cut.push("ty"), cut.push(" P")] == ["", "Party", " "]
    assert cut.flush() == "P" and not cut.stopped


def scrape(base_url: str) -> dict[str, float]:
    """/metrics parsed by prometheus_client's own parser: sample name and labels → value."""
    response = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_requests_tokens_and_latencies_and_show_the_queue(
    client: openai.OpenAI, served: ServedModel, base_url: str
) -> None:
    before = scrape(base_url)
    answered = client.chat.completions.create(model=served.name, messages=FRANCE, max_tokens=6, temperature=0)
    stream = client.chat.completions.create(
        model=served.name, messages=STORY, max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    (streamed,) = [c.usage for c in stream if c.usage]  # read to the end: the request is over
    assert post(base_url, body(n=3)).status_code == 400
    after = scrape(base_url)

    def moved(name: str, **labels: str) -> float:
        key = name + json.dumps(labels, sort_keys=True)
        return after[key] - before.get(key, 0.0)

    chat = "/v1/chat/completions"
    assert moved("gptq_chat_requests_total", path=chat, status="200") == 2
    assert moved("gptq_chat_requests_total", path=chat, status="400") == 1
    usages = [answered.usage, streamed]
    assert moved("gptq_chat_prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert moved("gptq_chat_generation_tokens_total") == sum(u.completion_tokens for u in usages)
    assert moved("gptq_chat_time_to_first_token_seconds_count") == 2
    assert moved("gptq_chat_time_to_first_token_seconds_sum") > 0
    gaps = moved("gptq_chat_time_per_output_token_seconds_count")
    assert sum(u.completion_tokens for u in usages) - 2 <= gaps <= sum(u.completion_tokens for u in usages)
    assert after["gptq_chat_requests_running{}"] == 0 and after["gptq_chat_requests_waiting{}"] == 0
    assert after["gptq_chat_kv_slots{}"] == served.scheduler.slots
    rss = psutil.Process().memory_info().rss  # the server runs in this process
    assert abs(after["process_resident_memory_bytes{}"] - rss) < 0.05 * rss


# -- bad requests --------------------------------------------------------------------------------------------


def body(**fields: object) -> dict:
    return {"model": "SmolLM2-135M-Instruct-GPTQ-Int4", "messages": FRANCE, "max_tokens": 4, **fields}


@pytest.mark.parametrize(
    ("request_body", "status", "param", "code"),
    [
        (b'{"model": "x", "messages": [', 400, None, None),
        (body(model="gpt-4o"), 404, "model", "model_not_found"),
        (body(messages=[]), 400, "messages", None),
        ({"model": "SmolLM2-135M-Instruct-GPTQ-Int4"}, 400, "messages", None),
        (body(messages=[{"role": "robot", "content": "Hi"}]), 400, "messages[0].role", None),
        (
            body(messages=[{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi"}]),
            400,
            "messages[1].role",
            None,
        ),
        (body(messages=[{"role": "assistant", "content": "Hi"}]), 400, "messages[0].role", None),
        (body(messages=[*FRANCE, {"role": "assistant", "content": "Paris"}]), 400, "messages[1].role", None),
        (body(messages=[*FRANCE, {"role": "system", "content": "Late"}]), 400, "messages[1].role", None),
        (body(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content", None),
        (body(temperature=2.5), 400, "temperature", None),
        (body(temperature=-0.1), 400, "temperature", None),
        (body(temperature="hot"), 400, "temperature", None),
        (body(top_p=0), 400, "top_p", None),
        (body(top_p=1.5), 400, "top_p", None),
        (body(max_tokens=0), 400, "max_tokens", None),
        (body(max_tokens=10**6), 400, "max_tokens", "context_length_exceeded"),
        (body(n=2), 400, "n", None),
        (body(stop=["a", "b", "c", "d", "e"]), 400, "stop", None),
        (body(stop=[""]), 400, "stop", None),
        (body(temprature=0.2), 400, "temprature", None),  # a typo is named, not ignored
        (body(presence_penalty=0.5), 400, "presence_penalty", "unsupported_parameter"),
        (body(logit_bias={"15": 5}), 400, "logit_bias", "unsupported_parameter"),
    ],
)
def test_bad_requests_get_openai_errors(
    base_url: str, request_body: object, status: int, param: str | None, code: str | None
) -> None:
    response = post(base_url, request_body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert response.headers["x-request-id"]


WEATHER_TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    "fields",
    [
        {"user": "u-42", "metadata": {"team": "a"}, "store": False},  # hints about the caller: nothing to do
        {"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "logprobs": False, "seed": None},
        {"tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "modalities": ["text"]},
    ],
)
def test_fields_that_ask_for_nothing_are_accepted(base_url: str, fields: dict) -> None:
    assert post(base_url, body(**fields)).status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"frequency_penalty": 1.2},
        {"presence_penalty": -0.5},
        {"logit_bias": {"9": 5}},
        {"functions": [{"name": "weather"}]},
    ],
    ids=lambda fields: next(iter(fields)),
)
def test_a_field_the_server_does_not_act_on_is_refused_by_name(
    client: openai.OpenAI, served: ServedModel, fields: dict
) -> None:
    """Through the official client: an agent sending `response_format` learns it at once, not from a plain answer."""
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=served.name, messages=FRANCE, max_tokens=4, **fields)
    name = next(iter(fields))
    assert refused.value.body["param"] == name and name in refused.value.message


WEATHER_ASKED = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_CALLED = [
    *WEATHER_ASKED,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
]


@pytest.mark.parametrize("messages", [WEATHER_ASKED, WEATHER_CALLED], ids=["asked", "with the tool's result"])
def test_tools_reach_the_model_in_its_own_format(client: openai.OpenAI, served: ServedModel, messages: list) -> None:
    """The demo model's template renders no tools: it gets the ReAct prompt, with earlier calls and results."""
    completion = client.chat.completions.create(
        model=served.name, messages=messages, tools=[WEATHER_TOOL], max_tokens=8, temperature=0
    )
    expected = tool_use(served.tokenizer, [WEATHER_TOOL]).encode(served.tokenizer, messages)
    assert completion.usage.prompt_tokens == len(expected)
    assert "weather" in served.tokenizer.decode(expected) and completion.choices[0].finish_reason in ("stop", "length")
    if messages is WEATHER_CALLED:
        assert '{"celsius": 21}' in served.tokenizer.decode(expected)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "no spaces allowed"}}]}, "tools"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": [*WEATHER_ASKED, {"role": "tool", "tool_call_id": "call_9", "content": "{}"}]}, "messages"),
    ],
    ids=["bad name", "bad choice", "a result without its call"],
)
def test_tool_requests_the_server_cannot_do_are_refused_by_name(base_url: str, fields: dict, param: str) -> None:
    response = post(base_url, body(**{"tools": [WEATHER_TOOL], **fields}))
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_a_prompt_longer_than_the_context_is_refused_with_the_numbers(
    client: openai.OpenAI, served: ServedModel
) -> None:
    messages = [{"role": "user", "content": "word " * 5000}]
    prompt = len(encode_chat(served.tokenizer, messages))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=served.name, messages=messages)  # type: ignore[arg-type]
    error = caught.value
    assert error.status_code == 400 and error.code == "context_length_exceeded" and error.param == "messages"
    assert f"{served.context_length:,} tokens" in error.message and f"{prompt:,} tokens" in error.message
    fits = [{"role": "user", "content": "word " * 1000}]
    prompt = len(encode_chat(served.tokenizer, fits))
    with pytest.raises(openai.BadRequestError, match=rf"{prompt:,} in the messages, 4,000 in the completion"):
        client.chat.completions.create(model=served.name, messages=fits, max_tokens=4000)  # type: ignore[arg-type]


def test_an_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=FRANCE)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found" and "SmolLM2-135M-Instruct-GPTQ-Int4" in caught.value.message


def test_unknown_paths_get_the_error_shape_too(base_url: str) -> None:
    response = httpx.get(f"{base_url}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 404 and response.json()["error"]["type"] == "invalid_request_error"


def test_validation_is_a_plain_function(served: ServedModel) -> None:
    """Without HTTP: a request becomes the prompt ids of the chat template and the client's settings."""
    request = ChatCompletionRequest.model_validate(
        body(temperature=0.5, top_p=0.9, top_k=-1, max_completion_tokens=7, max_tokens=None, stop="\n\n")
    )
    job = validate(request, served)
    assert job.prompt_ids == encode_chat(served.tokenizer, FRANCE)
    assert (job.sampling.temperature, job.sampling.top_p, job.sampling.top_k) == (0.5, 0.9, 0)
    assert job.sampling.max_new_tokens == 7 and job.stops == ("\n\n",) and not job.stream
    assert job.sampling.stop_token_ids == served.defaults.stop_token_ids
    unbounded = validate(ChatCompletionRequest.model_validate(body(max_tokens=None)), served)
    assert unbounded.sampling.max_new_tokens == served.context_length - len(job.prompt_ids)


# -- access ------------------------------------------------------------------------------------------------


def test_the_key_is_required_everywhere_but_health(base_url: str, served: ServedModel) -> None:
    wrong = openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model=served.name, messages=FRANCE)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_api_key"
    missing = post(base_url, body(), key=None)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert post(base_url, b"{not json", key="wrong").status_code == 401  # the key is checked first
    assert httpx.get(f"{base_url}/v1/models").status_code == 401
    health = httpx.get(f"{base_url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["model"] == served.name and health.json()["slots"] >= 1


def test_models_lists_the_served_model_with_its_window(client: openai.OpenAI, served: ServedModel) -> None:
    models = list(client.models.list())
    assert [m.id for m in models] == [served.name]
    assert models[0].model_extra == {"max_model_len": served.context_length, "kv_cache_dtype": served.kv_cache}
    assert served.kv_cache == "fp16"  # the demo on the CPU: "auto" keeps fp16 where no card's memory is saved


def test_a_clients_request_id_is_kept(base_url: str) -> None:
    response = post(base_url, body(), **{"X-Request-Id": "my-trace-42"})
    assert response.headers["x-request-id"] == "my-trace-42"
    assert response.json()["id"] == "chatcmpl-my-trace-42"
    odd = post(base_url, body(), **{"X-Request-Id": "no spaces allowed"})
    assert odd.headers["x-request-id"] != "no spaces allowed"


def test_off_loopback_the_server_needs_a_key() -> None:
    assert exposure_problem("127.0.0.1", None, API_KEY) is None and exposure_problem("::1", None, API_KEY) is None
    assert exposure_problem("localhost", None, API_KEY) is None and exposure_problem("0.0.0.0", "k", API_KEY) is None
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "serve.py", "--host", "0.0.0.0"], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert done.returncode != 0 and time.monotonic() - started < 30
    assert "Refusing to start" in done.stderr and "--api-key" in done.stderr and API_KEY_ENV in done.stderr


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_a_signal_finishes_the_reply_being_written_then_stops_cleanly(
    demo_model_dir: Path, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """A user's Ctrl-C, or a service manager's SIGTERM, while a reply streams: no new request is taken (a closed port,
    or a 503 in the moment before it closes), the reply being written ends whole, and the server closes its model and
    exits with 0 (uvicorn re-raises the signal once it has stopped; a traceback there would look like a crash)."""
    port, log = free_port(), tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "serve.py", "--model", str(demo_model_dir), "--port", str(port)],
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_serving(base, server, log, timeout_s=120)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model=demo_model_dir.name, messages=FRANCE, max_tokens=60, stream=True)
        text = next(iter(stream)).choices[0].delta.content or ""
        server.send_signal(stop_signal)
        for _ in range(20):  # new requests, until the port closes
            try:
                late = post(base, body(), key=None)
            except httpx.TransportError:
                break
            assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down", late.text
            time.sleep(0.05)
        else:
            pytest.fail("the server went on taking requests after the signal")
        chunks = list(stream)
        text += "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
        assert server.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        server.kill()
    assert text.strip() and "Stopped" in log.read_text() and "Traceback" not in log.read_text()


# -- the queue -------------------------------------------------------------------------------------------------


def test_a_client_that_disconnects_frees_its_slot_at_once(
    api: tuple[ServedModel, str], caplog: pytest.LogCaptureFixture
) -> None:
    served, base_url = api
    caplog.set_level(logging.INFO, logger="serve.access")
    request = body(messages=STORY, max_tokens=400, temperature=0, stream=True)
    headers = {"Authorization": f"Bearer {KEY}", "X-Request-Id": "gone-early"}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=request, headers=headers, timeout=60) as response:
        lines = response.iter_lines()  # kept: a dropped line iterator closes the connection
        chunks: list[str] = []
        for line in lines:
            if line.startswith("data:"):
                chunks.append(line)
            if len(chunks) == 2:
                break
        assert served.scheduler.stats().active == 1
    # 400 tokens would take ~20 s here; the slot must be free well before
    assert wait_until_idle(served, within=3.0) < 3.0
    assert json.loads(chunks[1][5:])["choices"][0]["delta"]["content"]
    deadline = time.monotonic() + 3
    while not any("gone-early" in r.message for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(r.message for r in caplog.records if "gone-early" in r.message)
    assert "finish=disconnected" in line and '"POST /v1/chat/completions" 200' in line


def test_a_full_queue_is_refused_with_429_and_retry_after(demo_model_dir: Path) -> None:
    loaded = load(demo_model_dir)
    tiny = ServedModel.of(loaded, scheduler=Scheduler(loaded.engine, queue_limit=0))
    with serving(create_app(tiny)) as url:
        busy = body(messages=STORY, max_tokens=400, temperature=0, stream=True)
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=busy, timeout=60) as response:
            lines = response.iter_lines()  # kept: a dropped line iterator closes the connection
            next(line for line in lines if '"content": "' in line and '"content": ""' not in line)
            refused = post(url, body(), key=None)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            error = refused.json()["error"]
            assert error["code"] == "queue_full" and error["type"] == "rate_limit_error"
            with pytest.raises(openai.RateLimitError):
                openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0).chat.completions.create(
                    model=tiny.name,
                    messages=FRANCE,  # type: ignore[arg-type]
                )
        wait_until_idle(tiny, within=3.0)
        assert post(url, body(), key=None).status_code == 200  # the slot is free again


def test_503_while_the_model_loads_and_when_shutting_down(served: ServedModel) -> None:
    loaded = threading.Event()

    def slow_load() -> ServedModel:
        loaded.wait(30)
        return served

    app = create_app(load=slow_load)
    with serving(app) as url:
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        early = post(url, body(), key=None)
        assert early.status_code == 503 and early.json()["error"]["code"] == "model_not_loaded"
        assert int(early.headers["retry-after"]) > 0
        loaded.set()
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert post(url, body(), key=None).status_code == 200
        Server(uvicorn.Config(app), app.state.server).handle_exit(signal.SIGTERM, None)  # what serve.py runs on SIGTERM
        late = post(url, body(), key=None)
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        assert httpx.get(f"{url}/health").json()["status"] == "shutting_down"


def test_a_failed_load_is_reported_by_health_and_requests() -> None:
    def broken_load() -> ServedModel:
        raise RuntimeError("CUDA out of memory")

    with serving(create_app(load=broken_load)) as url:
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and "CUDA out of memory" in health.json()["error"]
        assert "CUDA out of memory" in post(url, body(), key=None).json()["error"]["message"]


# -- many clients ----------------------------------------------------------------------------------------------


def test_sixteen_clients_at_once_each_get_their_own_answer(api: tuple[ServedModel, str], demo_model_dir: Path) -> None:
    """Greedy answers decoded together (batched on the fast engine) equal each question's answer asked alone."""
    served, base_url = api
    asked = [QUESTIONS[i % len(QUESTIONS)] for i in range(16)]
    answers: dict[int, str] = {}
    failures: list[BaseException] = []
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=300)

    def create(question: str, stream: bool) -> Any:
        messages = [{"role": "user", "content": question}]
        return client.chat.completions.create(
            model=served.name, messages=messages, max_tokens=32, temperature=0, stream=stream
        )

    alone = {question: create(question, stream=False).choices[0].message.content for question, _ in QUESTIONS}

    def ask(index: int, question: str) -> None:
        try:
            stream = create(question, stream=index % 2 == 0)
            if index % 2 == 0:
                answers[index] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)  # type: ignore[union-attr]
            else:
                answers[index] = stream.choices[0].message.content  # type: ignore[union-attr]
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=ask, args=(i, q)) for i, (q, _) in enumerate(asked)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not failures, failures
    for index, (question, pattern) in enumerate(asked):
        assert re.search(pattern, answers[index], re.IGNORECASE), (question, answers[index])
        if answers[index] != alone[question]:
            messages = [{"role": "user", "content": question}]
            assert_near_tie(demo_model_dir, served.defaults, messages, alone[question], answers[index])
    assert served.scheduler.stats().active == 0 and served.scheduler.stats().waiting == 0


def test_memory_and_threads_stay_flat_over_many_requests(base_url: str, served: ServedModel) -> None:
    """Every way a request can end (answered, streamed, cut off, refused), again and again: nothing piles up."""
    process = psutil.Process()
    streamed = body(max_tokens=2, stream=True, stream_options={"include_usage": True})

    def round_of_requests(rounds: int) -> None:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
            for i in range(rounds):
                kind = i % 4
                if kind == 0:
                    assert http.post("/v1/chat/completions", json=body(max_tokens=2)).status_code == 200
                elif kind == 1:
                    assert http.post("/v1/chat/completions", json=streamed).text.endswith("data: [DONE]\n\n")
                elif kind == 2:
                    with http.stream("POST", "/v1/chat/completions", json=body(max_tokens=32, stream=True)) as r:
                        next(r.iter_lines())  # and gone
                else:
                    assert http.post("/v1/chat/completions", json=body(top_p=0)).status_code == 400

    round_of_requests(20)  # warm-up: allocator pools, thread pools, caches
    wait_until_idle(served, within=5)
    rss, threads = process.memory_info().rss, threading.active_count()
    round_of_requests(200)
    wait_until_idle(served, within=5)
    time.sleep(0.2)  # the last abandoned stream's thread ends after its engine stops
    grown = process.memory_info().rss - rss
    assert grown < 50 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 200 requests"
    assert threading.active_count() <= threads, threading.enumerate()
