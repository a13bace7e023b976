"""The chat core end to end on the real demo GPTQ model: load, chat, stream, stop, truncate."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from gptq_chat.chat.prompt import build_prompt
from gptq_chat.chat.reply import ChatSettings, complete_reply, stream_reply
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.loading.loader import load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(demo_model_dir):
    loaded = load(demo_model_dir, device="cpu")
    return loaded, loaded.engine


def greedy(loaded, max_new_tokens: int = 48, **changes) -> ChatSettings:
    sampling = dataclasses.replace(loaded.defaults, temperature=0.0, max_new_tokens=max_new_tokens)
    return ChatSettings(sampling=sampling, **changes)


def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def test_demo_model_answers_paris(demo) -> None:
    loaded, engine = demo
    reply = complete_reply(engine, loaded.tokenizer, ask("What is the capital of France?"), greedy(loaded, 128))
    assert "Paris" in reply.text
    stats = reply.stats
    assert stats.finish_reason == "stop"  # the end-of-turn token from generation_config.json ended it
    assert 0 < stats.new_tokens < 128
    assert stats.prompt_tokens > 10 and stats.first_token_seconds is not None
    assert stats.tokens_per_second > 0


def test_streamed_pieces_are_the_plain_generate_output_in_order(demo) -> None:
    loaded, engine = demo
    settings = greedy(loaded, max_new_tokens=40)
    history = ask("Name three colors.")
    reply = stream_reply(engine, loaded.tokenizer, history, settings)
    pieces = list(reply)
    assert len(pieces) > 3
    prompt = build_prompt(loaded.tokenizer, history, settings.system_prompt, settings.context_length, 40)
    ids = torch.tensor([prompt.ids])
    out = loaded.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=40,
        do_sample=False,
        eos_token_id=list(settings.sampling.stop_token_ids),
        repetition_penalty=settings.sampling.repetition_penalty,
    )
    expected = loaded.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "".join(pieces) == reply.text == expected


def test_stop_ends_generation_early_and_frees_the_engine(demo) -> None:
    loaded, engine = demo
    settings = greedy(loaded, max_new_tokens=200)
    stop = threading.Event()
    reply = stream_reply(engine, loaded.tokenizer, ask("Write a long story about a dragon."), settings, stop)
    received = []
    for piece in reply:
        received.append(piece)
        if len(received) == 3:
            stop.set()
    assert reply.stats.finish_reason == "cancelled"
    assert reply.stats.new_tokens <= 5
    assert not engine.busy
    again = complete_reply(engine, loaded.tokenizer, ask("What is the capital of France?"), greedy(loaded))
    assert "Paris" in again.text


def test_abandoned_stream_frees_the_engine(demo) -> None:
    loaded, engine = demo
    reply = stream_reply(engine, loaded.tokenizer, ask("Count to one hundred."), greedy(loaded, 200))
    pieces = iter(reply)
    next(pieces)
    assert engine.busy
    pieces.close()  # what happens when a browser tab goes away mid-reply
    assert not engine.busy


def test_max_new_tokens_setting_reaches_generate(demo) -> None:
    loaded, engine = demo
    reply = complete_reply(engine, loaded.tokenizer, ask("Tell me about the ocean."), greedy(loaded, 5))
    assert reply.stats.new_tokens == 5
    assert reply.stats.finish_reason == "length"


def test_sampling_settings_change_the_output(demo) -> None:
    loaded, engine = demo
    hot = dataclasses.replace(
        greedy(loaded, 24),
        sampling=SamplingSettings(
            max_new_tokens=24,
            temperature=1.5,
            top_p=1.0,
            top_k=0,
            stop_token_ids=greedy(loaded).sampling.stop_token_ids,
        ),
    )
    torch.manual_seed(0)
    texts = {complete_reply(engine, loaded.tokenizer, ask("Say something."), hot).text for _ in range(3)}
    assert len(texts) > 1  # sampled, not greedy
    cold = {complete_reply(engine, loaded.tokenizer, ask("Say something."), greedy(loaded, 24)).text for _ in range(2)}
    assert len(cold) == 1


def test_long_chat_keeps_working_by_dropping_old_turns(demo) -> None:
    loaded, engine = demo
    history = []
    for i in range(30):
        history += [
            {"role": "user", "content": f"Tell me fact number {i} about cats."},
            {"role": "assistant", "content": "Cats sleep for a large part of the day and are very curious. " * 3},
        ]
    history += ask("What is the capital of France?")
    reply = complete_reply(engine, loaded.tokenizer, history, greedy(loaded, context_length=512))
    assert reply.stats.dropped_messages > 0
    assert reply.stats.prompt_tokens <= 512 - 48
    assert "Paris" in reply.text


def test_checkpoint_defaults_come_from_generation_config(demo) -> None:
    loaded, _ = demo
    defaults = loaded.defaults
    config = loaded.generation_config
    assert defaults.stop_token_ids and loaded.tokenizer.convert_tokens_to_ids("<|im_end|>") in defaults.stop_token_ids
    assert defaults.temperature == pytest.approx(config.temperature)
    assert defaults.top_p == pytest.approx(config.top_p)


def test_loader_reports_the_kernel_and_caches(demo, demo_model_dir) -> None:
    loaded, _ = demo
    facts = loaded.facts
    assert facts.device == "cpu" and facts.bits == 4 and facts.group_size == 64
    assert facts.kernel_class == "TorchAtenLinear" and facts.backend == "torch_aten"
    assert facts.engine == "transformers generate" and "CPU" in facts.engine_reason
    assert facts.quantized_layers == 7 * loaded.info.shape.num_layers
    assert facts.default_context <= facts.max_context
    assert load(demo_model_dir, device="cpu") is loaded
