"""Structured output: what a reply must look like (any JSON object, a JSON schema, or a Lark grammar), compiled by
llguidance into the `Grammar` the engines mask tokens with.

Why here, above the engine: compiling needs every token's bytes (the tokenizer) and a grammar library, while the
engine room knows only the `Grammar` and `GrammarMatcher` protocols (`engine/protocols.py`): it fills each
constrained row's mask on the host between steps and applies it where it samples. A caller compiles once per
request with the model's `ConstraintCompiler` (`constraint_compiler`, built once per tokenizer) and passes the
result as `SamplingSettings.constraint`.

Why llguidance rather than xgrammar (measured on a CPU, docs/benchmarks.md, 2026-12-07): it has no dependencies
(xgrammar's wheel requires triton on Linux); a JSON schema compiles in about a millisecond (xgrammar: 8 ms to over
a second, and agents send new tool schemas often); it refuses a schema keyword it cannot enforce and names it
(xgrammar ignored `not`). Its masks take tens of microseconds a token on one core, xgrammar's a few.

JSON comes out compact, with json.dumps' spacing (`{"a": 1, "b": [2, 3]}`): no free whitespace, which a small model
could otherwise fill until its token budget runs out.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch
import torch

from gptq_chat.chat.tools import ForcedCalls
from gptq_chat.engine.sampling import mask_words

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class UnsupportedConstraint(ValueError):
    """A schema or grammar that cannot be enforced; the message names the part (for the API: a 400)."""


class LLGuidanceMatcher:
    """One request's place in its grammar (an `engine.protocols.GrammarMatcher`)."""

    def __init__(self, matcher: llguidance.LLMatcher, words: int) -> None:
        self.matcher = matcher
        self.words = words  # of the tokenizer's vocabulary; the model's logits may be wider

    def fill_allowed(self, bits: torch.Tensor) -> None:
        """The allowed tokens into the first words of `bits`; ids past the tokenizer (the logits' padding) never."""
        llguidance.torch.fill_next_token_bitmask(self.matcher, bits[: self.words].unsqueeze(0))
        bits[self.words :] = 0

    def advance(self, token: int) -> None:
        """Take the chosen token; one the grammar refuses raises ValueError with llguidance's reason, first line."""
        if not self.matcher.consume_token(token):
            reason = self.matcher.get_error().splitlines()[0]  # the rest is the parser's state
            raise ValueError(f"The grammar refused token {token}: {reason}")

    @property
    def finished(self) -> bool:
        return self.matcher.is_stopped()


class CompiledGrammar:
    """A grammar checked against the tokenizer (an `engine.protocols.Grammar`): a matcher at its start, which
    every request copies (microseconds) instead of compiling again."""

    def __init__(self, matcher: llguidance.LLMatcher, words: int) -> None:
        self.template = matcher
        self.words = words

    def start(self) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(self.template.deep_copy(), self.words)


class ConstraintCompiler:
    """Compiles constraints for one tokenizer. Building it reads every token's bytes (about a second for Qwen's
    151,646 tokens): make one per model (`constraint_compiler`). A complete grammar allows only `stop_token_ids`
    (the model's end tokens; the tokenizer's end token if there are none)."""

    def __init__(self, tokenizer: Any, stop_token_ids: Sequence[int]) -> None:
        self.vocabulary = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(stop_token_ids) or None)
        self.words = mask_words(self.vocabulary.vocab_size)

    def json_object(self) -> CompiledGrammar:
        """Any JSON object (OpenAI's `response_format: {"type": "json_object"}`)."""
        return self.json_schema({"type": "object"})

    def json_schema(self, schema: dict[str, Any]) -> CompiledGrammar:
        """A JSON document that the schema accepts; raises `UnsupportedConstraint` naming a keyword, format or
        pattern that cannot be enforced (unknown keywords are errors, not ignored)."""
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
        except ValueError as error:
            raise UnsupportedConstraint(f"The JSON schema is not a JSON object: {error}") from None
        return self.compile(grammar, "JSON schema")

    def tool_calls(self, forced: ForcedCalls) -> CompiledGrammar:
        """A reply that is exactly the calls `forced` asks for (`tool_choice` "required" or a named function), its
        arguments following each function's parameter schema, written as compactly as `json_schema`'s JSON."""
        return self.lark(calls_grammar(forced))

    def lark(self, grammar: str) -> CompiledGrammar:
        """Text that a Lark grammar accepts (llguidance's dialect: `%json {...}` embeds a JSON schema, so a tool
        call's grammar can hold each function's parameter schema)."""
        return self.compile(llguidance.LLMatcher.grammar_from_lark(grammar), "grammar")

    def compile(self, grammar: str, what: str) -> CompiledGrammar:
        """A matcher for llguidance's grammar text; what it cannot enforce is refused here, once, not mid-reply."""
        matcher = llguidance.LLMatcher(self.vocabulary, grammar, log_level=0)
        if matcher.is_error():
            raise UnsupportedConstraint(f"This {what} cannot be enforced: {matcher.get_error()}")
        return CompiledGrammar(matcher, self.words)


def calls_grammar(forced: ForcedCalls) -> str:
    """Forced calls in llguidance's Lark: each call's text around a `%json` of its parameters (carrying the compact
    JSON options, which `%json` otherwise leaves flexible), one or more calls as `forced.separator` allows."""
    more = f" ({json.dumps(forced.separator)} call)*" if forced.separator is not None else ""
    rules = [f"start: call{more}", "call: " + " | ".join(f"call_{i}" for i in range(len(forced.shapes)))]
    for index, shape in enumerate(forced.shapes):
        schema = {**shape.arguments_schema, "x-guidance": JSON_OPTIONS}
        parts = [json.dumps(shape.prefix), "%json " + json.dumps(schema)]
        parts += [json.dumps(shape.suffix)] if shape.suffix else []
        rules.append(f"call_{index}: " + " ".join(parts))
    return "\n".join(rules) + "\n"


@functools.lru_cache(maxsize=4)
def constraint_compiler(tokenizer: Any, stop_token_ids: tuple[int, ...]) -> ConstraintCompiler:
    """The compiler for a model's tokenizer and end tokens, built on first use and kept (a few models at most)."""
    return ConstraintCompiler(tokenizer, stop_token_ids)
