"""The fast engine on a GPU agrees with the plain transformers path (`pytest -m gpu`, on a CUDA GPU)."""

from __future__ import annotations

import threading
from dataclasses import replace
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


def test_a_prompt_copied_back_from_the_prefix_store_gives_a_fresh_prefills_logits(qwen_shaped) -> None:
    """Another chat took the slot in between; the prompt's first blocks come back from the store, the rest is
    prefilled by a captured graph."""
    from gptq_chat.engine.fast_engine import load_engine
    from gptq_chat.engine.prefix_store import BLOCK

    engine = load_engine(qwen_shaped, "marlin", torch.device("cuda"), 1024, prefix_cache=4 * BLOCK)
    ids = torch.randint(1000, 100_000, (600,), generator=torch.Generator().manual_seed(7)).tolist()
    document, other, question = ids[: 2 * BLOCK + 20], ids[300:500], ids[500:530]
    for prompt in (document, other):  # a chat about the document, then another chat in the same slot
        engine.prefill(prompt, GREEDY)
        engine.park(0, prompt)
    engine.prefill(document + question, GREEDY)
    assert engine.stats.restored_prompt_tokens == 2 * BLOCK and engine.stats.prefill_tokens == 20 + len(question)
    restored = engine.logits[0].clone()
    engine.reset()
    engine.prefill(document + question, GREEDY)
    fresh = engine.logits[0]
    assert (restored - fresh).abs().max().item() <= 0.02 * fresh.abs().max().item()


def test_sampling_respects_top_k_on_the_gpu(qwen_shaped, tokens) -> None:
    from gptq_chat.engine.fast_engine import load_engine

    engine = load_engine(qwen_shaped, "marlin", torch.device("cuda"), 1024)
    prompt = tokens[:PROMPT].tolist()
    settings = SamplingSettings(max_new_tokens=1, temperature=1.0, top_k=3, top_p=1.0, repetition_penalty=1.0)
    seen = set()
    for _ in range(40):
        engine.prefill(prompt, settings)  # the first token, drawn from the logits the engine keeps
        token = int(engine.next_tokens[0])
        logits = engine.logits[0]
        assert logits[token] >= logits.topk(3).values[-1], (token, logits.topk(4))
        seen.add(token)
    assert len(seen) >= 2, seen


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


def test_grammars_seeds_and_logprobs_under_cuda_graphs(qwen_shaped) -> None:
    """Two slots replaying captured graphs: each reply under its own bounded schema parses and validates, with no
    id of the logits' padding (151,646..151,935); a seed repeats its tokens alone and beside another request;
    greedy log-probabilities rank the chosen token first."""
    import json

    import jsonschema
    from transformers import AutoTokenizer

    from gptq_chat.chat.constraints import constraint_compiler
    from gptq_chat.engine.fast_engine import load_engine
    from gptq_chat.testing.json_schemas import SCHEMAS
    from gptq_chat.testing.qwen_tokenizer import SPECIAL_TOKEN_IDS

    engine = load_engine(qwen_shaped, "marlin", torch.device("cuda"), 1024, slots=2)
    assert engine.use_graphs
    scheduler = Scheduler(engine)
    tokenizer = AutoTokenizer.from_pretrained(qwen_shaped)
    stops = (SPECIAL_TOKEN_IDS["<|im_end|>"], SPECIAL_TOKEN_IDS["<|endoftext|>"])
    compiler = constraint_compiler(tokenizer, stops)
    prompt = forced_tokens()[:PROMPT].tolist()
    cases = [SCHEMAS[2], SCHEMAS[7]]  # enums, digits: bounded whatever random weights choose
    replies: dict[int, list[int]] = {}

    def ask(index: int, settings: SamplingSettings) -> None:
        replies[index] = list(scheduler.generate(prompt, settings, threading.Event()))

    base = SamplingSettings(max_new_tokens=64, temperature=0.0, repetition_penalty=1.0, stop_token_ids=stops)
    grammars = [compiler.json_schema(case.schema) for case in cases]
    threads = [
        threading.Thread(target=ask, args=(0, replace(base, constraint=grammars[0]))),
        threading.Thread(target=ask, args=(1, replace(base, constraint=grammars[1], temperature=1.0, seed=3))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, case in enumerate(cases):
        ids = replies[index]
        assert ids[-1] in stops and max(ids) < len(tokenizer)
        jsonschema.validate(json.loads(tokenizer.decode(ids[:-1])), case.schema)

    seeded = replace(base, temperature=1.0, top_k=0, top_p=1.0, seed=9, max_new_tokens=24, stop_token_ids=())
    ask(0, seeded)
    alone = replies[0]
    ask(0, replace(seeded, seed=10))
    assert replies[0] != alone
    threads = [
        threading.Thread(target=ask, args=(0, seeded)),
        threading.Thread(target=ask, args=(1, replace(seeded, seed=None))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert replies[0] == alone

    for token in scheduler.generate(prompt, replace(base, logprobs=3, max_new_tokens=8), threading.Event()):
        assert token.top_logprobs[0] == (int(token), token.logprob)
    scheduler.close()
