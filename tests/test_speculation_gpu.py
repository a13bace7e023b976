"""Speculative decoding under CUDA graphs (`pytest -m gpu`): a Qwen-shaped random checkpoint writes the same greedy
text with guesses checked as without, over 20 prompts, whatever the guesses."""

from __future__ import annotations

import random

import pytest
import torch

from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.speculation import GUESSES
from tests.support.speculation import assert_same_or_near_tie, guessers, plain, speculative

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
GREEDY = SamplingSettings(max_new_tokens=1, temperature=0.0, repetition_penalty=1.05)
LENGTH, PROMPTS = 48, 20


def test_checked_guesses_change_no_greedy_token_on_the_gpu(qwen_shaped) -> None:
    from gptq_chat.engine.fast_engine import load_engine

    engine = load_engine(qwen_shaped, "marlin", torch.device("cuda"), 1024, checks=True)
    assert engine.verify_graphs and set(engine.verify_cost) == set(GUESSES)
    print("a check of k guesses, in decode steps:", engine.verify_cost)
    rng = random.Random(0)
    confirmed_by_oracle = []
    for index in range(PROMPTS):
        # Repetitive prompts (a pasted list, a quote) give prompt lookup something to find; random ones nothing.
        base = [rng.randrange(1000, 100_000) for _ in range(30)]
        prompt = base * 3 if index % 2 else base + [rng.randrange(1000, 100_000) for _ in range(60)]
        expected, logits = plain(engine, prompt, GREEDY, LENGTH)

        for name, guess in guessers(prompt, expected, rng, range(1000, 100_000)).items():
            tokens, confirmed = speculative(engine, prompt, GREEDY, guess, LENGTH)
            assert_same_or_near_tie(expected, tokens, logits, prompt, GREEDY.repetition_penalty, bits=10)
            if name == "oracle":
                confirmed_by_oracle.append(confirmed[0])
    assert sorted(confirmed_by_oracle)[PROMPTS // 2] == 8  # most first checks kept all eight guesses
