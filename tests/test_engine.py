"""The fast engine and its scheduler on the CPU (no graph capture): same greedy text as the plain path."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter

import pytest
import torch

from gptq_chat.chat.prompt import encode_chat, with_system
from gptq_chat.chat.reply import ChatSettings, complete_reply, stream_reply
from gptq_chat.engine.fast_engine import window_buckets
from gptq_chat.engine.prefix_store import common_prefix
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.sampling import SamplingState, sample
from gptq_chat.engine.scheduler import Scheduler
from tests.support.batching import most_active
from tests.support.near_tie import assert_near_tie

pytestmark = pytest.mark.slow
QUESTIONS = ["What is the capital of France?", "Name three colors.", "How many days are in a week?"]


@pytest.fixture(scope="module")
def paths(demo_paths):
    """(plain, fast), as this module unpacks them."""
    return demo_paths["plain"], demo_paths["fast"]


def wait_until_idle(scheduler, seconds: float = 5.0) -> bool:
    """The worker frees a slot between two steps; give it that long."""
    deadline = time.monotonic() + seconds
    while scheduler.stats().active or scheduler.stats().waiting:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def greedy(loaded, max_new_tokens: int = 32) -> ChatSettings:
    return ChatSettings(sampling=dataclasses.replace(loaded.defaults, temperature=0.0, max_new_tokens=max_new_tokens))


def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def test_engine_is_the_fast_path_and_says_so(paths) -> None:
    _, fast = paths
    assert fast.facts.engine == "fast engine (eager)"
    assert fast.facts.max_context == 1024 and fast.engine.context_length == 1024
    attention = fast.model.blocks[0].attention
    assert attention.qkv.out_features == 9 * 64 + 2 * 3 * 64  # q, k, v fused into one GEMM
    assert fast.model.blocks[0].mlp.gate_up.out_features == 2 * 1536


@pytest.mark.parametrize("question", QUESTIONS)
def test_engine_gives_the_plain_paths_greedy_text(paths, question) -> None:
    plain, fast = paths
    expected = complete_reply(plain.scheduler, plain.tokenizer, ask(question), greedy(plain)).text
    reply = complete_reply(fast.scheduler, fast.tokenizer, ask(question), greedy(fast))
    assert reply.text == expected
    assert reply.stats.finish_reason in ("stop", "length")


def test_second_turn_reuses_the_first_turns_cache(paths) -> None:
    _, fast = paths
    engine, tokenizer = fast.engine, fast.tokenizer
    first = complete_reply(fast.scheduler, tokenizer, ask(QUESTIONS[0]), greedy(fast))
    history = [*ask(QUESTIONS[0]), {"role": "assistant", "content": first.text}, *ask("And of Japan?")]
    prompt = encode_chat(tokenizer, with_system(greedy(fast).system_prompt, history))
    engine.prefill(prompt, greedy(fast).sampling)
    assert engine.stats.reused_prompt_tokens > first.stats.prompt_tokens
    assert engine.stats.prefill_tokens < 20
    reused = engine.logits[0].clone()
    engine.cached[0] = []  # the reference: the whole prompt computed at once
    engine.prefill(prompt, greedy(fast).sampling)
    fresh = engine.logits[0]
    # Cached K/V were computed token by token, the reference in one batch: bf16 rounding differs a little.
    assert (reused - fresh).abs().max() <= 0.05 * fresh.abs().max()
    assert reused.argmax() == fresh.argmax()


def test_stop_and_length_limit(paths) -> None:
    _, fast = paths
    stop = threading.Event()
    reply = stream_reply(fast.scheduler, fast.tokenizer, ask("Write a long story."), greedy(fast, 100), stop)
    for i, _ in enumerate(reply):
        if i == 2:
            stop.set()
    assert reply.stats.finish_reason == "cancelled" and reply.stats.new_tokens <= 4
    assert wait_until_idle(fast.scheduler)
    short = complete_reply(fast.scheduler, fast.tokenizer, ask("Tell me about the sea."), greedy(fast, 5))
    assert short.stats.new_tokens == 5 and short.stats.finish_reason == "length"


def test_sampling_follows_top_k_and_temperature(paths) -> None:
    _, fast = paths
    engine = fast.engine
    prompt = fast.tokenizer.apply_chat_template(ask("Say a word."), add_generation_prompt=True)["input_ids"]
    engine.prefill(list(prompt), SamplingSettings(temperature=0.0))
    top3 = set(engine.logits[0].topk(3).indices.tolist())
    settings = SamplingSettings(max_new_tokens=1, temperature=1.0, top_k=3, top_p=1.0, repetition_penalty=1.0)
    torch.manual_seed(0)
    seen = {next(iter(fast.scheduler.generate(list(prompt), settings, threading.Event()))) for _ in range(30)}
    assert seen <= top3 and len(seen) >= 2


def test_the_sampler_draws_the_renormalised_nucleus_of_a_known_distribution() -> None:
    """Five tokens with known probabilities: top-p 0.8 keeps the three whose mass above them is under 0.8 (0.85 of
    it), drawn in proportion; the other two never."""
    probs = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    draws = 4000
    state = SamplingState.allocate(draws, len(probs), torch.device("cpu"))
    settings = SamplingSettings(temperature=1.0, top_p=0.8, top_k=0, repetition_penalty=1.0)
    for row in range(draws):
        state.configure(row, settings, torch.tensor([], dtype=torch.long))
    torch.manual_seed(0)
    drawn = torch.bincount(sample(probs.log().expand(draws, -1), state, greedy=False), minlength=len(probs))
    assert drawn[3:].sum() == 0
    expected = probs[:3] / probs[:3].sum()
    assert torch.allclose(drawn[:3] / draws, expected, atol=0.03), drawn  # about 4 standard errors at 4,000 draws


def first_token_logits(loaded, prompt: list[int]) -> torch.Tensor:
    """The model's own next-token scores for `prompt`, from transformers' forward (the reference the engines match)."""
    with torch.no_grad():
        return loaded.model(torch.tensor([prompt])).logits[0, -1].float()


def one_token(source, prompt: list[int], settings: SamplingSettings) -> int:
    (token,) = source.generate(prompt, settings, threading.Event())  # read to the end: the engine is free again
    return token


@pytest.mark.parametrize("path", ["plain", "fast"])
def test_top_p_draws_only_from_the_nucleus(paths, path) -> None:
    """A top-p halfway into the third likeliest token's share keeps exactly three tokens, 25 % of the mass."""
    plain, fast = paths
    loaded = plain if path == "plain" else fast
    prompt = list(fast.tokenizer.apply_chat_template(ask("Say a word."), add_generation_prompt=True)["input_ids"])
    probs, order = first_token_logits(plain, prompt).softmax(-1).sort(descending=True)
    p = probs[:4].tolist()
    assert p[2] - p[3] > 0.03 and sum(p[:3]) < 0.3  # margins for rounding; most of the mass lies outside
    nucleus = set(order[:3].tolist())
    top_p = p[0] + p[1] + p[2] / 2
    settings = SamplingSettings(max_new_tokens=1, temperature=1.0, top_p=top_p, top_k=0, repetition_penalty=1.0)
    torch.manual_seed(0)
    drawn = Counter(one_token(loaded.scheduler, prompt, settings) for _ in range(60))
    # Without top-p, 60 draws all inside would have probability 0.3**60; each nucleus token has >= 25 % of it.
    assert set(drawn) == nucleus, (drawn, nucleus)


def test_prompt_longer_than_the_cache_is_refused(paths) -> None:
    _, fast = paths
    with pytest.raises(ValueError, match="context holds 1024"):
        fast.scheduler.generate(list(range(5, 1100)), SamplingSettings(), threading.Event())


def test_window_buckets_and_prefix() -> None:
    assert window_buckets(8192) == [256, 512, 1024, 2048, 4096, 6144, 8192]
    assert window_buckets(300) == [256, 300]
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix([], [1]) == 0


def test_batched_requests_each_get_their_own_answer(paths, demo_slots, demo_model_dir) -> None:
    """Four questions decoded together, joining at different times, give the texts each gets alone."""
    _, fast = paths
    alone = {q: complete_reply(fast.scheduler, fast.tokenizer, ask(q), greedy(fast, 24)).text for q in QUESTIONS}
    questions = [*QUESTIONS, "What is the capital of Japan?"]
    alone[questions[-1]] = complete_reply(fast.scheduler, fast.tokenizer, ask(questions[-1]), greedy(fast, 24)).text
    answers: dict[str, str] = {}

    def ask_in_thread(question: str, delay: float) -> None:
        time.sleep(delay)
        answers[question] = complete_reply(
            demo_slots.scheduler, demo_slots.tokenizer, ask(question), greedy(fast, 24)
        ).text

    threads = [threading.Thread(target=ask_in_thread, args=(q, 0.3 * i)) for i, q in enumerate(questions)]
    for thread in threads:
        thread.start()
    together = most_active(demo_slots.scheduler, threads)
    for question in questions:
        if answers[question] != alone[question]:  # batching may flip a near tie (tests/near_tie.py)
            settings = greedy(fast).sampling
            messages = with_system(greedy(fast).system_prompt, ask(question))
            assert_near_tie(demo_model_dir, settings, messages, alone[question], answers[question])
    assert together >= 3  # they really were decoded in the same steps
    assert demo_slots.scheduler.stats().served >= len(questions) and wait_until_idle(demo_slots.scheduler)


@pytest.mark.parametrize("which", ["plain", "batched"])
def test_a_stream_closed_before_reading_leaves_the_queue(paths, demo_slots, which) -> None:
    scheduler = paths[0].scheduler if which == "plain" else demo_slots.scheduler
    prompt = paths[0].tokenizer.apply_chat_template(ask("Hi"), add_generation_prompt=True)["input_ids"]
    served = scheduler.stats().served
    stream = scheduler.generate(list(prompt), SamplingSettings(max_new_tokens=50), threading.Event())
    assert scheduler.stats().waiting + scheduler.stats().active == 1
    stream.close()
    assert wait_until_idle(scheduler) and scheduler.stats().served == served + 1
    assert not scheduler.busy


def test_a_model_split_over_two_devices_gives_the_same_text(paths, demo_model_dir) -> None:
    """The layers in two segments (on the CPU, `cpu` and `cpu:0` count as two devices): the hidden state
    hand-over between segments, per-segment positions and caches give the one-device engine's text."""
    from gptq_chat.engine.fast_engine import load_engine

    _, fast = paths
    layers = fast.model.shape.num_layers
    devices = [torch.device("cpu")] * (layers // 2) + [torch.device("cpu", 0)] * (layers - layers // 2)
    split = load_engine(demo_model_dir, "torch_aten", torch.device("cpu"), 512, layer_devices=devices, slots=2)
    assert len(split.model.segments) == 2 and "split over 2 devices" in split.name
    assert split.model.segments[1].first == layers // 2
    scheduler = Scheduler(split)
    for question in QUESTIONS[:2]:
        expected = complete_reply(fast.scheduler, fast.tokenizer, ask(question), greedy(fast)).text
        assert complete_reply(scheduler, fast.tokenizer, ask(question), greedy(fast)).text == expected
    scheduler.close()
