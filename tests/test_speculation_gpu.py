"""Speculative decoding under CUDA graphs (`pytest -m gpu`): a Qwen-shaped random checkpoint writes the same greedy
text with guesses checked as without, over 20 prompts, whatever the guesses (a draft model's too); sampled, a tiny
random model's first three tokens come from the model's own distribution with guesses checked as without."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.speculation import GUESSES
from tests.support.speculation import (
    assert_same_or_near_tie,
    chi_square_p_value,
    first_tokens_distribution,
    guessers,
    plain,
    speculative,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
GREEDY = SamplingSettings(max_new_tokens=1, temperature=0.0, repetition_penalty=1.05)
LENGTH, PROMPTS = 48, 20
# Sampled: a temperature that makes a random model's top two tokens unequal, so a wrong rule would show.
SAMPLED = SamplingSettings(max_new_tokens=3, temperature=0.1, top_k=2, top_p=1.0, repetition_penalty=1.0)
SAMPLES = 20_000


def test_checked_guesses_change_no_greedy_token_on_the_gpu(qwen_shaped) -> None:
    from gptq_chat.engine.fast_engine import load_engine

    engine = load_engine(qwen_shaped, "marlin", torch.device("cuda"), 1024, checks=True)
    draft = load_engine(qwen_shaped, "marlin", torch.device("cuda"), 1024)  # the model as its own draft
    assert engine.verify_graphs and set(engine.verify_cost) == set(GUESSES)
    print("a check of k guesses, in decode steps:", engine.verify_cost)
    # Both engines time a decode step when they start: --speculate auto weighs a draft's guesses with them.
    assert 0.1 < engine.step_ms < 100 and engine.step_ms == pytest.approx(draft.step_ms, rel=0.2)
    rng = random.Random(0)
    confirmed_by_oracle = []
    for index in range(PROMPTS):
        # Repetitive prompts (a pasted list, a quote) give prompt lookup something to find; random ones nothing.
        base = [rng.randrange(1000, 100_000) for _ in range(30)]
        prompt = base * 3 if index % 2 else base + [rng.randrange(1000, 100_000) for _ in range(60)]
        expected, logits = plain(engine, prompt, GREEDY, LENGTH)

        draft.reset()
        for name, guess in guessers(
            prompt, expected, rng, range(1000, 100_000), draft, GREEDY.repetition_penalty
        ).items():
            tokens, confirmed = speculative(engine, prompt, GREEDY, guess, LENGTH)
            assert_same_or_near_tie(expected, tokens, logits, prompt, GREEDY.repetition_penalty, bits=10)
            if name == "oracle":
                confirmed_by_oracle.append(confirmed[0])
    assert sorted(confirmed_by_oracle)[PROMPTS // 2] == 8  # most first checks kept all eight guesses


def test_sampled_tokens_with_checked_guesses_follow_the_models_distribution(tmp_path) -> None:
    """The first three sampled tokens of 20,000 replies (seeds 0 to 19,999), plainly and with the two likeliest next
    tokens checked as guesses after the first, against the exact distribution the model gives them (its logits after
    every prefix, top 2 at temperature 0.1, for a prompt with no near tie at any prefix's top-2 edge): Pearson's
    chi-square test over the 8 sequences for each, p > 0.001. Checks that kept none, one and both guesses all
    occur, so every branch of the rule is drawn from. A tiny random model with a 1,024-token vocabulary. (On the
    CPU, bf16, 3,000 draws each: p = 0.73 plain, 0.41 checked; draws at temperature 0.2 instead: p = 5e-41.)"""
    from gptq_chat.engine.fast_engine import load_engine
    from gptq_chat.testing.random_checkpoint import write_random_gptq_checkpoint

    folder = write_random_gptq_checkpoint(tmp_path, "tiny-v1k", seed=0)
    engine = load_engine(folder, "marlin", torch.device("cuda"), 64, checks=True)
    rng, exact = random.Random(0), None
    for _ in range(1000):  # about one prompt in three qualifies
        prompt = [rng.randrange(1024) for _ in range(8)]
        exact = first_tokens_distribution(engine, prompt, SAMPLED, 3, bits=10)
        if exact is not None:
            break
    assert exact is not None
    likeliest = {}  # after each first token: the likeliest two that follow, the guesses
    for sequence in exact:
        likeliest[sequence[0]] = list(max((s for s in exact if s[0] == sequence[0]), key=exact.__getitem__)[1:])
    draws: dict[str, list[tuple]] = {"plain": [], "checked": []}
    kept: set[int] = set()
    for seed in range(SAMPLES):
        settings = dataclasses.replace(SAMPLED, seed=seed)
        draws["plain"].append(tuple(plain(engine, prompt, settings, 3)[0]))
        tokens, confirmed = speculative(engine, prompt, settings, lambda written: likeliest[written[0]], 3)
        draws["checked"].append(tuple(tokens))
        kept.add(confirmed[0])
    assert kept == {0, 1, 2}
    for path, samples in draws.items():
        statistic, p_value, freedom = chi_square_p_value(samples, exact)
        print(f"{path}: chi-square {statistic:.1f}, {freedom} degrees of freedom, p = {p_value:.3f}")
        assert p_value > 0.001, (path, statistic, freedom)
