"""Structured output on the real demo model through the scheduler, on both paths: every reply parses and satisfies
its schema; four slots decode at once, each under its own schema; what cannot be enforced is refused by name; the
Qwen vocabulary's padding ids are never allowed."""

from __future__ import annotations

import dataclasses
import json
import threading

import jsonschema
import pytest
import torch

from gptq_chat.chat.constraints import UnsupportedConstraint, constraint_compiler
from gptq_chat.chat.prompt import encode_chat
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.sampling import SamplingState, sample
from gptq_chat.testing.json_schemas import SCHEMAS
from gptq_chat.testing.qwen_tokenizer import SPECIAL_TOKEN_IDS
from tests.support.batching import most_active

pytestmark = pytest.mark.slow
BUDGET = 64  # tokens; every schema's reply needs fewer, so a reply cut short fails


@pytest.fixture(scope="module")
def compiler(demo_paths):
    loaded = demo_paths["fast"]
    return constraint_compiler(loaded.tokenizer, loaded.defaults.stop_token_ids)


def schema_prompt(tokenizer, schema: dict) -> list[int]:
    question = f"Reply with a JSON document that follows this JSON schema: {json.dumps(schema)}"
    return encode_chat(tokenizer, [{"role": "user", "content": question}])


def settings_for(loaded, grammar, **changes) -> SamplingSettings:
    """Greedy unless `changes` say otherwise."""
    chosen = {"temperature": 0.0, "max_new_tokens": BUDGET, "constraint": grammar} | changes
    return dataclasses.replace(loaded.defaults, **chosen)


def generate(loaded, prompt: list[int], settings: SamplingSettings) -> list[int]:
    return list(loaded.scheduler.generate(prompt, settings, threading.Event()))


def ended_document(loaded, ids: list[int]):
    """The reply's JSON, after checking that an end token (not the budget) ended it."""
    assert ids[-1] in loaded.defaults.stop_token_ids, loaded.tokenizer.decode(ids)
    return json.loads(loaded.tokenizer.decode(ids[:-1]))


@pytest.mark.parametrize("path", ["plain", "fast"])
@pytest.mark.parametrize("case", SCHEMAS, ids=[case.name for case in SCHEMAS])
def test_every_reply_satisfies_its_schema(demo_paths, compiler, path, case) -> None:
    loaded = demo_paths[path]
    prompt = schema_prompt(loaded.tokenizer, case.schema)
    ids = generate(loaded, prompt, settings_for(loaded, compiler.json_schema(case.schema)))
    jsonschema.validate(ended_document(loaded, ids), case.schema)


@pytest.mark.parametrize("path", ["plain", "fast"])
def test_a_json_object_constraint_gives_a_json_object(demo_paths, compiler, path) -> None:
    loaded = demo_paths[path]
    prompt = encode_chat(loaded.tokenizer, [{"role": "user", "content": "Give the capital of France as JSON."}])
    document = ended_document(loaded, generate(loaded, prompt, settings_for(loaded, compiler.json_object())))
    assert isinstance(document, dict)


@pytest.mark.parametrize("path", ["plain", "fast"])
def test_a_complete_grammar_ends_the_reply_without_stop_tokens(demo_paths, path) -> None:
    """The request has no stop token, and the grammar's end token is one neither the model nor transformers stops
    at (SmolLM2's `<|endoftext|>`, id 0; it ends turns with id 2): the reply still ends with it, once complete."""
    loaded = demo_paths[path]
    end = loaded.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert end not in loaded.defaults.stop_token_ids
    case = SCHEMAS[2]
    grammar = constraint_compiler(loaded.tokenizer, (end,)).json_schema(case.schema)
    settings = settings_for(loaded, grammar, stop_token_ids=())
    ids = generate(loaded, schema_prompt(loaded.tokenizer, case.schema), settings)
    assert len(ids) < BUDGET and ids[-1] == end
    jsonschema.validate(json.loads(loaded.tokenizer.decode(ids[:-1])), case.schema)


def test_four_slots_decode_together_each_under_its_own_grammar(demo_slots, compiler) -> None:
    """Four requests in one batch, two greedy and two sampled, each with another schema: all valid."""
    cases = [SCHEMAS[0], SCHEMAS[2], SCHEMAS[5], SCHEMAS[7]]  # bounded even when sampled
    replies: dict[str, list[int]] = {}
    gate = threading.Barrier(len(cases) + 1, timeout=60)

    def ask(index: int) -> None:
        case = cases[index]
        changes = {"temperature": 0.8, "seed": index} if index % 2 else {}
        settings = settings_for(demo_slots, compiler.json_schema(case.schema), **changes)
        prompt = schema_prompt(demo_slots.tokenizer, case.schema)
        gate.wait()
        replies[case.name] = generate(demo_slots, prompt, settings)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    gate.wait()
    together = most_active(demo_slots.scheduler, threads)
    for case in cases:
        jsonschema.validate(ended_document(demo_slots, replies[case.name]), case.schema)
    assert together >= 3  # they really shared decode steps


def test_a_lark_grammar_holds_a_tool_call(demo_paths, compiler) -> None:
    """An arbitrary grammar, as a tool call would be built: tags around a JSON schema."""
    loaded = demo_paths["fast"]
    arguments = {"type": "object", "properties": {"city": {"enum": ["Paris", "Tokyo"]}}, "required": ["city"]}
    grammar = compiler.lark(f'start: "<tool_call>" call "</tool_call>"\ncall: %json {json.dumps(arguments)}')
    prompt = encode_chat(loaded.tokenizer, [{"role": "user", "content": "What is the weather in Paris?"}])
    ids = generate(loaded, prompt, settings_for(loaded, grammar))
    text = loaded.tokenizer.decode(ids[:-1])
    assert text.startswith("<tool_call>") and text.endswith("</tool_call>")
    jsonschema.validate(json.loads(text.removeprefix("<tool_call>").removesuffix("</tool_call>")), arguments)


def test_what_cannot_be_enforced_is_refused_by_name(compiler) -> None:
    with pytest.raises(UnsupportedConstraint, match="not"):
        compiler.json_schema({"type": "object", "properties": {"a": {"not": {"type": "string"}}}})
    with pytest.raises(ValueError, match="look-around"):
        compiler.json_schema({"type": "string", "pattern": "^(?=a)[a-z]+$"})
    with pytest.raises(UnsupportedConstraint, match="frobnicate"):
        compiler.json_schema({"type": "string", "format": "frobnicate"})
    with pytest.raises(UnsupportedConstraint, match='unknown name: "call"'):
        compiler.lark('start: "<tool_call>" call')


def test_the_padding_ids_of_qwens_logits_are_never_allowed(qwen_tokenizer) -> None:
    """Qwen's logits are 151,936 wide; its tokenizer has 151,646 ids. A mask row that held anything before is
    filled: no padding id is allowed even when its logit is the largest, and a complete grammar allows exactly the
    model's end tokens."""
    width, vocab = 151_936, len(qwen_tokenizer)
    stops = (SPECIAL_TOKEN_IDS["<|im_end|>"], SPECIAL_TOKEN_IDS["<|endoftext|>"])
    matcher = constraint_compiler(qwen_tokenizer, stops).json_object().start()
    state = SamplingState.allocate(2, width, torch.device("cpu"))
    bits = torch.full(state.allowed[0].shape, -1, dtype=torch.int32)
    matcher.fill_allowed(bits)
    for row in range(2):
        state.configure(row, SamplingSettings(temperature=row, top_k=0, top_p=1.0), torch.tensor([0]), bits)
    logits = torch.randn(2, width, generator=torch.Generator().manual_seed(0))
    logits[:, vocab:] = 100.0
    chosen = sample(logits, state, greedy=False)
    assert (chosen < vocab).all() and qwen_tokenizer.decode(chosen[:1]).startswith("{")
    for token in qwen_tokenizer.encode('{"a": 1}'):
        matcher.advance(token)
    matcher.fill_allowed(bits)
    allowed = ((bits.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten().nonzero().flatten()
    assert matcher.finished and sorted(allowed.tolist()) == sorted(stops)
