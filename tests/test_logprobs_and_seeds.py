"""Log-probabilities and seeds through the scheduler on the real demo model, on both paths."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

from gptq_chat.chat.prompt import encode_chat
from gptq_chat.engine.protocols import SamplingSettings, ScoredToken

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "Tell me a short story about a cat."}]
ANOTHER_STORY = [
    *QUESTION,
    {"role": "assistant", "content": "The cat slept."},
    {"role": "user", "content": "Another one."},
]


def generate(loaded, settings: SamplingSettings, messages=QUESTION) -> list[int]:
    prompt = encode_chat(loaded.tokenizer, messages)
    return list(loaded.scheduler.generate(prompt, settings, threading.Event()))


def sampled(loaded, seed: int | None, max_new_tokens: int = 12) -> SamplingSettings:
    return dataclasses.replace(
        loaded.defaults, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, seed=seed
    )


@pytest.mark.parametrize("path", ["plain", "fast"])
def test_greedy_logprobs_rank_the_chosen_token_first(demo_paths, path) -> None:
    loaded = demo_paths[path]
    settings = dataclasses.replace(
        loaded.defaults, temperature=0.0, repetition_penalty=1.0, max_new_tokens=8, logprobs=5
    )
    tokens = generate(loaded, settings)
    assert len(tokens) >= 4
    for token in tokens:
        assert isinstance(token, ScoredToken) and len(token.top_logprobs) == 5
        assert token.top_logprobs[0] == (int(token), token.logprob)
        values = [value for _, value in token.top_logprobs]
        assert values == sorted(values, reverse=True) and values[0] <= 0


@pytest.mark.parametrize("path", ["plain", "fast"])
def test_logprobs_are_the_models_not_the_samplers(demo_paths, path) -> None:
    """Sampled at temperature 0.5 with the strongest repetition penalty, the first token's log-probabilities are
    still the model's own next-token distribution (transformers' forward is the reference; the engines agree to
    bf16). The likeliest first token ('The') is in the prompt, so a penalty applied before scoring would move it."""
    loaded = demo_paths[path]
    settings = dataclasses.replace(
        sampled(loaded, seed=3, max_new_tokens=1), temperature=0.5, repetition_penalty=2.0, logprobs=3
    )
    (token,) = generate(loaded, settings, ANOTHER_STORY)
    prompt = encode_chat(loaded.tokenizer, ANOTHER_STORY)
    with torch.no_grad():
        reference = demo_paths["plain"].model(torch.tensor([prompt])).logits[0, -1].float().log_softmax(-1)
    assert token.top_logprobs[0][0] in prompt  # the case the penalty would change
    for alternative, value in token.top_logprobs:
        assert abs(value - reference[alternative].item()) < 0.1
    assert abs(token.logprob - reference[int(token)].item()) < 0.1


@pytest.mark.parametrize("path", ["plain", "fast"])
def test_a_seed_repeats_its_reply_and_no_seed_does_not(demo_paths, path) -> None:
    loaded = demo_paths[path]
    first, again = generate(loaded, sampled(loaded, seed=11)), generate(loaded, sampled(loaded, seed=11))
    assert first == again
    assert generate(loaded, sampled(loaded, seed=12)) != first
    assert generate(loaded, sampled(loaded, seed=None)) != generate(loaded, sampled(loaded, seed=None))


def test_a_seeded_reply_is_the_same_alone_and_in_a_batch(demo_slots) -> None:
    """The seeded request alone (in slot 0), then again once three others (sampled without a seed or a stop token)
    hold slots 0 to 2: it draws in another row, beside rows at other draw counts, and gives the same tokens."""
    seeded = sampled(demo_slots, seed=5, max_new_tokens=16)
    alone = generate(demo_slots, seeded)
    endless = dataclasses.replace(sampled(demo_slots, seed=None, max_new_tokens=64), stop_token_ids=())
    others = [
        threading.Thread(target=generate, args=(demo_slots, endless, [{"role": "user", "content": text}]))
        for text in ["Name three colors.", "What is the capital of Japan?", "Write a haiku."]
    ]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 60
    while demo_slots.scheduler.stats().active < len(others):
        assert time.monotonic() < deadline, "the other requests never started"
        time.sleep(0.005)
    together = generate(demo_slots, seeded)
    assert all(thread.is_alive() for thread in others)  # they shared every step of it
    for thread in others:
        thread.join()
    assert together == alone
