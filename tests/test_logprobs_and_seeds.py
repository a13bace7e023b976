"""Log-probabilities and seeds through the scheduler on the real demo model, on both paths."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

from gptq_chat.chat.prompt import encode_chat
from gptq_chat.engine.protocols import SamplingSettings, ScoredToken
from gptq_chat.loading.loader import load

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "Tell me a short story about a cat."}]


@pytest.fixture(scope="module")
def paths(demo_model_dir):
    """The loader's cached models: the same objects as tests/test_engine.py's."""
    return {
        "plain": load(demo_model_dir, device="cpu", engine="plain"),
        "fast": load(demo_model_dir, device="cpu", engine="fast", context_length=1024),
    }


@pytest.fixture(scope="module")
def batched(demo_model_dir):
    return load(demo_model_dir, device="cpu", engine="fast", context_length=512, slots=4)


def generate(loaded, settings: SamplingSettings, messages=QUESTION) -> list[int]:
    prompt = encode_chat(loaded.tokenizer, messages)
    return list(loaded.scheduler.generate(prompt, settings, threading.Event()))


def sampled(loaded, seed: int | None, max_new_tokens: int = 12) -> SamplingSettings:
    return dataclasses.replace(
        loaded.defaults, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, seed=seed
    )


@pytest.mark.parametrize("path", ["plain", "fast"])
def test_greedy_logprobs_rank_the_chosen_token_first(paths, path) -> None:
    loaded = paths[path]
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
def test_logprobs_are_the_models_not_the_samplers(paths, path) -> None:
    """Sampled at temperature 0.5 with a repetition penalty, the first token's log-probabilities are still the
    model's own next-token distribution (transformers' forward is the reference; the engines agree to bf16)."""
    loaded = paths[path]
    settings = dataclasses.replace(sampled(loaded, seed=3, max_new_tokens=1), temperature=0.5, logprobs=3)
    (token,) = generate(loaded, settings)
    prompt = encode_chat(loaded.tokenizer, QUESTION)
    with torch.no_grad():
        reference = paths["plain"].model(torch.tensor([prompt])).logits[0, -1].float().log_softmax(-1)
    for alternative, value in token.top_logprobs:
        assert abs(value - reference[alternative].item()) < 0.1
    assert abs(token.logprob - reference[int(token)].item()) < 0.1


@pytest.mark.parametrize("path", ["plain", "fast"])
def test_a_seed_repeats_its_reply_and_no_seed_does_not(paths, path) -> None:
    loaded = paths[path]
    first, again = generate(loaded, sampled(loaded, seed=11)), generate(loaded, sampled(loaded, seed=11))
    assert first == again
    assert generate(loaded, sampled(loaded, seed=12)) != first
    assert generate(loaded, sampled(loaded, seed=None)) != generate(loaded, sampled(loaded, seed=None))


def test_a_seeded_reply_is_the_same_alone_and_in_a_batch(batched) -> None:
    """The seeded request alone, then while three others (sampled without a seed) share its decode steps."""
    seeded = sampled(batched, seed=5, max_new_tokens=16)
    alone = generate(batched, seeded)
    replies: dict[int, list[int]] = {}
    gate = threading.Barrier(5, timeout=60)
    others = ["Name three colors.", "What is the capital of Japan?", "Write a haiku."]

    def ask(index: int) -> None:
        settings = seeded if index == 0 else sampled(batched, seed=None, max_new_tokens=24)
        messages = QUESTION if index == 0 else [{"role": "user", "content": others[index - 1]}]
        gate.wait()
        replies[index] = generate(batched, settings, messages)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    gate.wait()
    together = 0
    while any(thread.is_alive() for thread in threads):
        together = max(together, batched.scheduler.stats().active)
        time.sleep(0.005)
    assert replies[0] == alone
    assert together >= 3
