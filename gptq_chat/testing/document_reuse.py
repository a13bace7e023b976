"""First token for questions about one long document, with the prefix store and without it (`bench.py --document`).

Six requests, as users make them: a first question about the document, a second in the same chat, another chat that
takes the engine's slot, the same document in a new chat, the other chat going on, then the first chat again. A slot
reuses only its own last sequence, so without the store each of the last three computes its whole prompt again; with
it, each copies the K/V of what it shares with a kept prompt back and computes the rest.
The prompts are token ids (a random-weight checkpoint writes noise anyway); each reply is `reply` tokens, greedy.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

import torch

from gptq_chat.engine.fast_engine import FastEngine
from gptq_chat.engine.prefix_store import PrefixStore
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.scheduler import Scheduler

SYSTEM, QUESTION, OTHER_CHAT = 24, 32, 512  # prompt parts' lengths in tokens, besides the document's


@dataclass
class Step:
    """One request: its prompt, the tokens prefilled for it, and its first token's time."""

    name: str
    prompt_tokens: int
    computed_tokens: int
    first_token_ms: float


def ids(length: int, seed: int, vocab: int) -> list[int]:
    return torch.randint(1000, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def ask(scheduler: Scheduler, engine: FastEngine, prompt: list[int], name: str, reply: int) -> tuple[Step, list[int]]:
    settings = SamplingSettings(max_new_tokens=reply, temperature=0.0, repetition_penalty=1.0)
    started = time.perf_counter()
    first, tokens = 0.0, []
    for token in scheduler.generate(prompt, settings, threading.Event()):
        if not tokens:
            first = time.perf_counter() - started
        tokens.append(token)
    return Step(name, len(prompt), engine.stats.prefill_tokens, first * 1e3), tokens


def conversation(scheduler: Scheduler, engine: FastEngine, document: int, reply: int, vocab: int) -> list[Step]:
    """The six requests, from an empty cache and store."""
    engine.reset()
    system, text = ids(SYSTEM, 1, vocab), ids(document, 2, vocab)
    first_prompt = system + text + ids(QUESTION, 3, vocab)
    first, answer = ask(scheduler, engine, first_prompt, "first question about the document", reply)
    second_prompt = first_prompt + answer + ids(QUESTION, 4, vocab)
    second, answer = ask(scheduler, engine, second_prompt, "second question, same chat", reply)
    other_prompt = ids(OTHER_CHAT, 5, vocab)
    other, other_answer = ask(scheduler, engine, other_prompt, "another chat takes the slot", reply)
    new_chat, _ = ask(scheduler, engine, system + text + ids(QUESTION, 6, vocab), "same document, new chat", reply)
    on_prompt = other_prompt + other_answer + ids(QUESTION, 7, vocab)
    goes_on, _ = ask(scheduler, engine, on_prompt, "the other chat goes on", reply)
    back_prompt = second_prompt + answer + ids(QUESTION, 8, vocab)
    back, _ = ask(scheduler, engine, back_prompt, "the first chat again", reply)
    return [first, second, other, new_chat, goes_on, back]


def compare(engine: FastEngine, document: int, reply: int, vocab: int) -> dict[str, list[dict]]:
    """The conversation without the store (a store of no tokens: the engine as it was without one), then with it;
    the same engine, card and prompts."""
    scheduler = Scheduler(engine)
    store = engine.store
    try:
        ask(scheduler, engine, ids(600, 0, vocab), "warm-up", 2)
        engine.store = PrefixStore(engine.model.caches, 0)
        without = conversation(scheduler, engine, document, reply, vocab)
        engine.store = store
        with_store = conversation(scheduler, engine, document, reply, vocab)
    finally:
        engine.store = store
        scheduler.close()
    return {"without": [asdict(s) for s in without], "with_store": [asdict(s) for s in with_store]}


def table(figures: dict[str, list[dict]], kept: int) -> str:
    lines = [
        f"prefix store: {kept:,} tokens",
        f"{'request':38} {'prompt':>7} | {'computed':>8} {'first ms':>9} | {'computed':>8} {'first ms':>9}",
        f"{'':38} {'':>7} | {'without the store':>18} | {'with the store':>18}",
    ]
    for off, on in zip(figures["without"], figures["with_store"], strict=True):
        lines.append(
            f"{off['name']:38} {off['prompt_tokens']:>7} | {off['computed_tokens']:>8} {off['first_token_ms']:>9.1f} "
            f"| {on['computed_tokens']:>8} {on['first_token_ms']:>9.1f}"
        )
    return "\n".join(lines)
