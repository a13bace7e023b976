"""The fast engine on a GPU agrees with the plain transformers path (`pytest -m gpu`, on a CUDA GPU)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.scheduler import Scheduler
from gptq_chat.loading.loader import load_uncached
from tests.support.teacher_forcing import (
    FORCED,
    GREEDY,
    PROMPT,
    assert_logits_agree,
    forced_alone,
    forced_tokens,
    teacher_forced,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return forced_tokens()


@pytest.fixture(scope="module")
def plain_logits(qwen_shaped: Path, tokens: torch.Tensor) -> torch.Tensor:
    plain = load_uncached(qwen_shaped, backend="marlin", device="cuda", engine="plain")
    with torch.inference_mode():
        logits = plain.model(tokens.unsqueeze(0).cuda()).logits[0, PROMPT - 1 : PROMPT + FORCED - 1].float()
    del plain
    torch.cuda.empty_cache()
    return logits


@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
def test_engine_logits_match_the_plain_path(qwen_shaped, tokens, plain_logits, attention) -> None:
    from gptq_chat.engine.fast_engine import load_engine

    engine = load_engine(qwen_shaped, "marlin", torch.device("cuda"), 1024, decode_attention=attention)
    assert engine.use_graphs and len(engine.graphs) == 2 * len(engine.windows) and engine.prefill_graphs
    assert_logits_agree(forced_alone(engine, tokens), plain_logits, attention)


def test_graphs_replay_what_the_eager_step_computes(qwen_shaped, tokens) -> None:
    from gptq_chat.engine.fast_engine import load_engine

    graphs = load_engine(qwen_shaped, "marlin", torch.device("cuda"), 1024)
    eager = load_engine(qwen_shaped, "marlin", torch.device("cuda"), 1024, use_graphs=False)
    a, b = forced_alone(graphs, tokens), forced_alone(eager, tokens)
    assert (a - b).abs().max().item() <= 0.02 * b.abs().max().item()


def test_generate_streams_and_reuses_the_prompt_prefix(qwen_shaped, tokens) -> None:
    from gptq_chat.engine.fast_engine import load_engine

    engine = load_engine(qwen_shaped, "marlin", torch.device("cuda"), 1024)
    prompt = tokens[:PROMPT].tolist()
    first = list(Scheduler(engine).generate(prompt, GREEDY, threading.Event()))
    assert len(first) == FORCED
    follow_up = prompt + first + tokens[PROMPT : PROMPT + 10].tolist()
    engine.prefill(follow_up, GREEDY)  # the next turn of a chat: only the new tokens are computed
    assert engine.stats.reused_prompt_tokens >= PROMPT + FORCED - 1
    assert engine.stats.prefill_tokens <= 11
    reused = engine.logits[0].clone()
    fresh = load_engine(qwen_shaped, "marlin", torch.device("cuda"), 1024, use_graphs=False)
    fresh.prefill(follow_up, GREEDY)  # the whole prompt at once: the reference for the reused cache
    assert (reused - fresh.logits[0]).abs().max().item() <= 0.02 * fresh.logits[0].abs().max().item()


def test_sampling_respects_top_k_on_the_gpu(qwen_shaped, tokens) -> None:
    from gptq_chat.engine.fast_engine import load_engine

    engine = load_engine(qwen_shaped, "marlin", torch.device("cuda"), 1024)
    prompt = tokens[:PROMPT].tolist()
    settings = SamplingSettings(max_new_tokens=1, temperature=1.0, top_k=3, top_p=1.0, repetition_penalty=1.0)
    scheduler = Scheduler(engine)
    seen = {next(iter(scheduler.generate(prompt, settings, threading.Event()))) for _ in range(40)}
    engine.prefill(prompt, GREEDY)
    allowed = set(engine.logits[0].topk(3).indices.tolist())
    assert seen <= allowed and len(seen) >= 2


def test_sequences_decoded_together_match_each_decoded_alone(qwen_shaped) -> None:
    """Four slots in one batched step (different prompt lengths, prompts in slots 1-3 prefilled eagerly)
    give each sequence the logits it gets alone, within the tolerance above."""
    from gptq_chat.engine.fast_engine import load_engine

    engine = load_engine(qwen_shaped, "marlin", torch.device("cuda"), 1024, slots=4)
    assert engine.rows == [1, 2, 4] and len(engine.graphs) == 2 * 3 * len(engine.windows)
    prompts = [PROMPT, 60, 150, 90]
    sequences = [
        torch.randint(1000, 100_000, (p + FORCED,), generator=torch.Generator().manual_seed(i)).tolist()
        for i, p in enumerate(prompts)
    ]
    together = teacher_forced(engine, sequences, prompts)
    for slot, (ids, prompt) in enumerate(zip(sequences, prompts, strict=True)):
        alone = teacher_forced(engine, [ids], [prompt])[0]
        scale = alone.abs().max().item()
        diff = (together[slot] - alone).abs().max().item()
        print(f"slot {slot}: max |logit| {scale:.3f}, max |diff| batched vs alone {diff:.4f}")
        assert diff <= 0.02 * scale
        top2 = alone.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 0.04 * scale
        assert torch.equal(together[slot].argmax(-1)[clear], alone.argmax(-1)[clear])
