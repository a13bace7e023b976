"""The OpenAI chat-completions protocol without HTTP: request schema, validation, generated text, responses.

`server.py` is the thin HTTP layer over this module. Here a request body becomes token ids and
`SamplingSettings` (or an `ApiError` in OpenAI's error shape, with the status it deserves), and the
token stream becomes text cut at the client's stop strings and OpenAI's response and chunk shapes.
The client's messages are the history as sent: a prompt that does not fit is refused
(`context_length_exceeded`), never shortened behind the client's back.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gptq_chat.api.logprobs import Spelling
from gptq_chat.chat.constraints import UnsupportedConstraint, constraint_compiler
from gptq_chat.chat.prompt import Message, encode_chat
from gptq_chat.chat.tools import ForcedCalls, ToolUse, tool_use
from gptq_chat.engine.protocols import MAX_TOP_LOGPROBS, Grammar, SamplingSettings
from gptq_chat.engine.scheduler import Scheduler

if TYPE_CHECKING:
    from gptq_chat.loading.loader import LoadedModel

MAX_STOP_STRINGS = 4  # as OpenAI's API
DEFAULT_COMPLETION_TOKENS = 16  # /v1/completions without max_tokens, as OpenAI and vLLM
SYSTEM_ROLES = ("system", "developer")
TYPE_TAGS = ("str", "int", "float", "bool")  # "developer" is OpenAI's newer name for the system message


class ApiError(Exception):
    """An error the client gets as `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -- the request schema -------------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: str
    content: str | list[TextPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool result's call
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None  # the schema is always enforced; `strict: false` asks for no less


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


# OpenAI's request fields that only describe the caller or ask OpenAI to keep the request: nothing to act on here.
HINTS = frozenset({"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key"})
# OpenAI's fields this server does not act on, and the values that ask for nothing (what a client that does not use
# them may still send). Any other value is refused by name rather than ignored.
NOT_ACTED_ON: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
    "functions": ([],),
    "function_call": ("none", "auto"),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "reasoning_effort": (),
    "web_search_options": (),
    "verbosity": (),
}


class SamplingRequest(BaseModel):
    """The fields both endpoints act on. Every other field is either a hint (HINTS), a field this server does not act
    on sent with a value that asks for nothing (NOT_ACTED_ON), or refused with a 400 that names it: a client is never
    silently answered as if a setting it sent had been applied."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # beyond OpenAI, as vLLM and SGLang accept: -1 or 0 is off
    repetition_penalty: float | None = None  # likewise
    n: int | None = 1
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None  # beyond OpenAI's completions endpoint, as vLLM


class ChatCompletionRequest(SamplingRequest):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class CompletionRequest(SamplingRequest):
    """`POST /v1/completions`: a prompt in, its continuation out (no chat template)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None  # how many alternatives to show for each token


def param_path(location: tuple[Any, ...]) -> str:
    """A pydantic error location as OpenAI names a parameter: `messages[0].role`."""
    path = ""
    for part in location:
        if part == "body":
            continue
        if isinstance(part, str) and (part in TYPE_TAGS or "[" in part):
            break  # pydantic names the member of a union that failed (`content.str`): not a parameter
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def invalid_body(errors: list[dict[str, Any]]) -> ApiError:
    """The first schema error (from pydantic or FastAPI) as OpenAI's 400, naming the parameter."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return ApiError(400, "We could not parse the JSON body of your request: it is not valid JSON.")
    param = param_path(tuple(first.get("loc", ())))
    return ApiError(400, f"Invalid value for '{param}': {first.get('msg', 'invalid')}.", param=param or None)


def parse_request(body: Any) -> ChatCompletionRequest:
    """A decoded JSON body → the request, or a 400 naming the bad parameter."""
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as error:
        raise invalid_body(error.errors()) from None


def refuse_unused_fields(request: BaseModel) -> None:
    """A 400 for the first field beyond the schema that is neither a hint nor a value asking for nothing."""
    for name, value in (request.model_extra or {}).items():
        if name in HINTS:
            continue
        if name not in NOT_ACTED_ON:
            raise ApiError(400, f"Unrecognized request argument supplied: {name}", param=name)
        if value is not None and value not in NOT_ACTED_ON[name]:
            raise ApiError(
                400,
                f"'{name}' is not supported by this server (value {json.dumps(value)[:80]}); leave it out.",
                param=name,
                code="unsupported_parameter",
            )


# -- the model the requests go to -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """What the API needs of a loaded model: its name, the scheduler, the tokenizer, defaults and window."""

    name: str
    scheduler: Scheduler
    tokenizer: Any
    defaults: SamplingSettings  # the checkpoint's generation_config.json, and its stop tokens
    context_length: int  # prompt + completion tokens per request
    created: int = field(default_factory=lambda: int(time.time()))
    kv_cache: str = "fp16"  # the KV cache's format (engine/shape.py KV_CACHES)

    @classmethod
    def of(cls, loaded: LoadedModel, name: str | None = None, scheduler: Scheduler | None = None) -> ServedModel:
        """From a `loader.LoadedModel`; `scheduler` replaces its own (tests: a tiny queue)."""
        return cls(
            name=name or loaded.facts.name,
            scheduler=scheduler or loaded.scheduler,
            tokenizer=loaded.tokenizer,
            defaults=loaded.defaults,
            context_length=loaded.facts.default_context,
            kv_cache=loaded.facts.kv_cache,
        )

    @functools.cached_property
    def spelling(self) -> Spelling:
        """Each token's text and bytes, for log-probabilities (learned token by token, then kept)."""
        return Spelling(self.tokenizer)


# -- validation: request → job --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """A validated request: what to generate and how to answer."""

    prompt_ids: list[int]
    sampling: SamplingSettings
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool
    tools: ToolUse | None = None  # how the reply's tool calls are read, for a request with tools


def chat_messages(messages: list[ChatMessage]) -> list[Message]:
    """An optional system message, then user and assistant turns alternating, ending with the user's."""
    if not messages:
        raise ApiError(400, "'messages' must contain at least one message.", param="messages")
    turns: list[Message] = []
    for index, message in enumerate(messages):
        role = "system" if message.role in SYSTEM_ROLES else message.role
        if role not in ("system", "user", "assistant"):
            raise ApiError(
                400,
                f"Invalid role '{message.role}' in messages[{index}]: use system, user or assistant.",
                param=f"messages[{index}].role",
            )
        if role == "system" and index > 0:
            raise ApiError(400, "Only the first message may be a system message.", param=f"messages[{index}].role")
        expected = "user" if not turns or turns[-1]["role"] != "user" else "assistant"
        if role != "system" and role != expected:
            raise ApiError(
                400,
                f"messages[{index}] is a '{role}' message where a '{expected}' message was expected: "
                "after an optional system message, user and assistant messages must alternate, starting "
                "with the user.",
                param=f"messages[{index}].role",
            )
        turns.append({"role": role, "content": message.text()})
    if turns[-1]["role"] != "user":
        raise ApiError(400, "The last message must be the user's.", param=f"messages[{len(turns) - 1}].role")
    return turns


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, f"'stop' takes at most {MAX_STOP_STRINGS} strings, not {len(stops)}.", param="stop")
    if any(not s for s in stops):
        raise ApiError(400, "Stop strings must not be empty.", param="stop")
    return tuple(stops)


def sampling_settings(
    request: SamplingRequest,
    defaults: SamplingSettings,
    max_tokens: int,
    logprobs: int | None = None,
    constraint: Grammar | None = None,
) -> SamplingSettings:
    """The checkpoint's defaults, overridden by what the request sets; out-of-range values are a 400."""
    chosen: dict[str, Any] = {"max_new_tokens": max_tokens, "logprobs": logprobs, "constraint": constraint}
    for name, value in (
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("top_k", None if request.top_k is None else max(request.top_k, 0)),
        ("repetition_penalty", request.repetition_penalty),
        ("seed", request.seed),
    ):
        if value is not None:
            chosen[name] = value
    try:
        return replace(defaults, **chosen)
    except ValueError as error:  # SamplingSettings names each parameter out of range first
        param = str(error).split()[0]
        raise ApiError(400, f"Invalid value: {error}.", param=param) from None


def context_error(model: ServedModel, prompt: int, completion: int | None) -> ApiError:
    """OpenAI's `context_length_exceeded`, with the numbers."""
    window = f"This model's maximum context length is {model.context_length:,} tokens. However, "
    if completion is None:
        detail = f"your messages resulted in {prompt:,} tokens, which leaves no room for a reply."
        param = "messages"
    else:
        detail = (
            f"you requested {prompt + completion:,} tokens ({prompt:,} in the messages, {completion:,} in the "
            "completion). Please reduce the length of the messages or completion."
        )
        param = "max_tokens"
    return ApiError(400, window + detail, param=param, code="context_length_exceeded")


def admit(request: SamplingRequest, model: ServedModel) -> None:
    """What every request is checked for first: the model it names and the fields it sends."""
    if request.model != model.name:
        raise ApiError(
            404,
            f"The model '{request.model}' does not exist. This server serves '{model.name}'.",
            param="model",
            code="model_not_found",
        )
    refuse_unused_fields(request)
    if request.n not in (None, 1):
        raise ApiError(400, f"Only n=1 is supported, not n={request.n}.", param="n")


def job(
    request: SamplingRequest,
    model: ServedModel,
    prompt_ids: list[int],
    requested: int | None,
    tools: ToolUse | None = None,
    logprobs: int | None = None,
) -> Job:
    """The job for `prompt_ids`: `requested` new tokens at most (None: the rest of the context), and `logprobs`
    alternatives to each token's log-probability (None: no log-probabilities)."""
    constraint = reply_constraint(request, model, tools.forced if tools is not None else None)
    stops = stop_strings(request.stop) + (tools.stop_strings if tools is not None else ())
    room = model.context_length - len(prompt_ids)
    if room < 1:
        raise context_error(model, len(prompt_ids), None)
    if requested is not None and requested < 1:
        raise ApiError(400, f"max_tokens must be at least 1, not {requested}.", param="max_tokens")
    if requested is not None and requested > room:
        raise context_error(model, len(prompt_ids), requested)
    return Job(
        prompt_ids=prompt_ids,
        sampling=sampling_settings(request, model.defaults, requested or room, logprobs, constraint),
        stops=stops,
        stream=bool(request.stream),
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
        tools=tools,
    )


def validate(request: ChatCompletionRequest, model: ServedModel) -> Job:
    """Everything a chat request can get wrong, checked before it takes a place in the queue."""
    admit(request, model)
    requested = request.max_completion_tokens if request.max_tokens is None else request.max_tokens
    logprobs = chat_logprobs_asked(request)
    if not request.tools and not any(m.role == "tool" or m.tool_calls for m in request.messages):
        prompt_ids = encode_chat(model.tokenizer, chat_messages(request.messages))
        return job(request, model, prompt_ids, requested, logprobs=logprobs)
    tools = tools_of(request, model.tokenizer)
    try:
        prompt_ids = tools.encode(model.tokenizer, tool_messages(request.messages))
    except ValueError as error:  # a call without its result, a result without its call
        raise ApiError(400, str(error), param="messages") from None
    return job(request, model, prompt_ids, requested, tools, logprobs)


def chat_logprobs_asked(request: ChatCompletionRequest) -> int | None:
    """How many alternatives a chat request wants with each token's log-probability (None: no log-probabilities)."""
    if not request.logprobs:
        if request.top_logprobs:
            raise ApiError(400, "top_logprobs needs logprobs set to true.", param="top_logprobs")
        return None
    top = request.top_logprobs or 0
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, not {top}.", param="top_logprobs")
    return top


def reply_constraint(request: SamplingRequest, model: ServedModel, forced: ForcedCalls | None) -> Grammar | None:
    """The grammar the reply must follow: the tool calls it must make, or the JSON its `response_format` asks for
    (None: free text). A schema that cannot be enforced is a 400 that names the part, never ignored."""
    shape = request.response_format
    wants_json = shape is not None and shape.type != "text"
    if wants_json and forced is not None:
        raise ApiError(
            400,
            f"response_format {shape.type!r} and a required tool call cannot both decide the reply: send one.",
            param="response_format",
        )
    if forced is None and not wants_json:
        return None
    compiler = constraint_compiler(model.tokenizer, model.defaults.stop_token_ids)  # built on first use
    if forced is not None:
        param, compile_ = "tools", functools.partial(compiler.tool_calls, forced)
    elif shape.type == "json_object":
        param, compile_ = "response_format", compiler.json_object
    elif shape.json_schema is None or shape.json_schema.schema_ is None:
        raise ApiError(
            400,
            "response_format 'json_schema' needs json_schema.schema: the JSON schema the reply must follow.",
            param="response_format.json_schema.schema",
        )
    else:
        param = "response_format.json_schema.schema"
        compile_ = functools.partial(compiler.json_schema, shape.json_schema.schema_)
    try:
        return compile_()
    except UnsupportedConstraint as error:
        raise ApiError(400, str(error), param=param) from None


def tools_of(request: ChatCompletionRequest, tokenizer: Any) -> ToolUse:
    """The request's tools for this model, or a 400 naming what is wrong with them."""
    try:
        tools = tool_use(tokenizer, request.tools, request.tool_choice, request.parallel_tool_calls is not False)
    except ValueError as error:
        raise ApiError(400, str(error), param="tool_choice" if "tool_choice" in str(error) else "tools") from None
    return tools


def tool_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """OpenAI messages with tools as the tool layer reads them: `developer` as `system`, text parts joined."""
    known = ("system", "user", "assistant", "tool")
    converted = []
    for index, message in enumerate(messages):
        role = "system" if message.role in SYSTEM_ROLES else message.role
        if role not in known:
            raise ApiError(
                400,
                f"Invalid role '{message.role}' in messages[{index}]: use system, user, assistant or tool.",
                param=f"messages[{index}].role",
            )
        fields = message.model_dump(exclude_none=True, exclude={"role", "content"})
        converted.append({"role": role, "content": message.text(), **fields})
    if not converted or converted[-1]["role"] not in ("user", "tool"):
        raise ApiError(400, "The last message must be the user's or a tool's result.", param="messages")
    return converted


def prompt_ids_of(prompt: str | list[str] | list[int] | list[list[int]], tokenizer: Any) -> list[int]:
    """One prompt, as text or token ids (OpenAI's four forms; a list of several prompts is refused)."""
    prompts = prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) else [prompt]
    if len(prompts) != 1:
        raise ApiError(400, f"Send one prompt per request, not {len(prompts)}.", param="prompt")
    (one,) = prompts
    ids = tokenizer(one)["input_ids"] if isinstance(one, str) else list(one)
    if not ids:
        raise ApiError(400, "The prompt is empty.", param="prompt")
    vocabulary = len(tokenizer)
    if any(not 0 <= token < vocabulary for token in ids):
        raise ApiError(400, f"The prompt has token ids outside the vocabulary (0 to {vocabulary - 1}).", param="prompt")
    return ids


def validate_completion(request: CompletionRequest, model: ServedModel) -> Job:
    """A text completion's checks. `max_tokens` defaults to 16, as OpenAI's and vLLM's completions endpoint."""
    admit(request, model)
    if request.echo:
        raise ApiError(400, "'echo' is not supported: the prompt is not repeated in the answer.", param="echo")
    if request.suffix:
        raise ApiError(
            400,
            "'suffix' is not supported: Qwen chat models are not trained to fill in text between a prompt and a "
            "suffix. Put the text around the gap in the prompt instead.",
            param="suffix",
        )
    if request.best_of not in (None, 1):
        raise ApiError(400, f"Only best_of=1 is supported, not best_of={request.best_of}.", param="best_of")
    requested = DEFAULT_COMPLETION_TOKENS if request.max_tokens is None else request.max_tokens
    if request.logprobs is not None and not 0 <= request.logprobs <= MAX_TOP_LOGPROBS:
        raise ApiError(
            400, f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}, not {request.logprobs}.", param="logprobs"
        )
    return job(request, model, prompt_ids_of(request.prompt, model.tokenizer), requested, logprobs=request.logprobs)
