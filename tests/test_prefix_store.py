"""Prompts kept across chats (engine/prefix_store.py): the demo model's fast engine on the CPU, and the plan's size."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from gptq_chat.engine.prefix_store import BLOCK, MIN_GAIN, common_prefix
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.qwen_shapes import QWEN_SHAPES
from gptq_chat.loading.fit import PREFIX_CACHE_CONTEXTS, PREFIX_CACHE_SHARE, fit
from gptq_chat.loading.placement import plan_placement, standard_gpus
from gptq_chat.models import catalog
from tests.support.engine_bytes import held_bytes, network_on_meta

GREEDY = SamplingSettings(max_new_tokens=1, temperature=0.0, repetition_penalty=1.0)
STORE = 8 * BLOCK  # the engine below keeps 1,024 tokens of other chats' prompts


def tokens(seed: int, length: int) -> list[int]:
    return torch.randint(100, 20_000, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path):
    from gptq_chat.engine.fast_engine import load_engine

    return load_engine(demo_model_dir, "torch_aten", torch.device("cpu"), 1024, prefix_cache=STORE)


@pytest.fixture(scope="module")
def int8_engine(demo_model_dir: Path):
    from gptq_chat.engine.fast_engine import load_engine

    return load_engine(demo_model_dir, "torch_aten", torch.device("cpu"), 1024, prefix_cache=STORE, kv_cache="int8")


def turn(engine, prompt: list[int]) -> None:
    """A prompt prefilled into slot 0 and the slot retired holding it, as a finished reply leaves it."""
    engine.prefill(prompt, GREEDY)
    engine.park(0, prompt)


def test_common_prefix_finds_the_first_difference_anywhere() -> None:
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.randrange(3) for _ in range(rng.randrange(0, 600))]
        b = a[: rng.randrange(0, len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(0, 300))]
        naive = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        assert common_prefix(a, b) == common_prefix(b, a) == naive


def test_a_document_asked_about_again_after_another_chat_is_not_prefilled_again(engine) -> None:
    engine.reset()
    document = tokens(1, 300)
    turn(engine, document + tokens(2, 20))  # the first question about it
    turn(engine, tokens(3, 200))  # another chat takes the slot
    second = document + tokens(4, 25)  # a new chat, the same document, another question
    engine.prefill(second, GREEDY)
    kept = len(document) // BLOCK * BLOCK  # whole blocks only
    assert engine.stats.restored_prompt_tokens == engine.stats.reused_prompt_tokens == kept
    assert engine.stats.prefill_tokens == len(second) - kept
    restored = engine.logits[0].clone()
    engine.reset()  # the reference: the whole prompt computed at once
    engine.prefill(second, GREEDY)
    fresh = engine.logits[0]
    assert engine.stats.prefill_tokens == len(second)
    assert (restored - fresh).abs().max() <= 0.05 * fresh.abs().max()  # as a slot's own reuse (test_engine.py)
    assert restored.argmax() == fresh.argmax()


def test_an_int8_cache_is_kept_and_restored_with_its_scales(int8_engine) -> None:
    """The kept blocks come back bit for bit: values and the scales that read them."""
    engine = int8_engine
    engine.reset()
    document = tokens(1, 300)
    turn(engine, document + tokens(2, 20))
    parts = [part[0, :, : 2 * BLOCK].clone() for part in engine.model.caches[3].parts()]
    assert len(parts) == 4 and parts[0].dtype == torch.int8
    turn(engine, tokens(3, 200))  # another chat overwrites the row
    engine.prefill(document + tokens(4, 25), GREEDY)
    assert engine.stats.restored_prompt_tokens == 2 * BLOCK
    for kept, now in zip(parts, engine.model.caches[3].parts(), strict=True):
        assert torch.equal(now[0, :, : 2 * BLOCK], kept)


def test_the_least_recently_used_prompt_goes_first(engine) -> None:
    engine.reset()
    a, b, c, d = (tokens(seed, 3 * BLOCK + 10) for seed in (5, 6, 7, 8))  # three blocks kept of each
    turn(engine, a)
    turn(engine, b)  # keeps a
    turn(engine, a + tokens(9, 5))  # keeps b; a comes back from the store and is now the most recently used
    assert engine.stats.restored_prompt_tokens == 3 * BLOCK
    turn(engine, c)  # a is held already (its whole blocks are the same)
    turn(engine, d)  # keeps c: 9 blocks wanted, 8 held, so b, the least recently used, goes
    assert [entry.tokens for entry in engine.store.entries.values()] == [a[: 3 * BLOCK], c[: 3 * BLOCK]]


def test_a_later_turn_of_the_same_chat_replaces_the_earlier_one(engine) -> None:
    engine.reset()
    first = tokens(12, 2 * BLOCK + 40)
    turn(engine, first)
    turn(engine, tokens(13, 100))  # keeps the first turn: 2 blocks
    longer = first + tokens(14, 3 * BLOCK)  # the chat goes on: its reply and the next question
    turn(engine, longer)
    turn(engine, tokens(15, 100))  # keeps the longer turn: 5 blocks, which hold the first turn's 2
    assert engine.store.held == 5 * BLOCK and len(engine.store.entries) == 1


def test_a_small_gain_is_prefilled_rather_than_copied(engine) -> None:
    engine.reset()
    shared = tokens(16, BLOCK)
    turn(engine, shared + tokens(17, 50))
    turn(engine, shared[: BLOCK - MIN_GAIN + 1] + tokens(18, 50))  # keeps the first; shares most of its block
    engine.prefill(shared + tokens(19, 10), GREEDY)
    assert engine.stats.restored_prompt_tokens == 0  # MIN_GAIN - 1 more tokens than the slot holds: not copied
    assert engine.stats.reused_prompt_tokens == BLOCK - MIN_GAIN + 1


def test_the_benchmark_conversation_computes_the_document_once_with_the_store(engine) -> None:
    """bench.py --document's six requests (a 300-token document here): with the store, each request after another
    chat took the slot computes only what follows the kept blocks; without it, everything."""
    from gptq_chat.testing.document_reuse import compare

    figures = compare(engine, document=300, reply=2, vocab=20_000)
    without = {step["name"]: step["computed_tokens"] for step in figures["without"]}
    kept = {step["name"]: step["computed_tokens"] for step in figures["with_store"]}
    prompts = {step["name"]: step["prompt_tokens"] for step in figures["without"]}
    assert kept["second question, same chat"] == without["second question, same chat"] < 50  # the slot's own
    for name in ("same document, new chat", "the other chat goes on", "the first chat again"):
        assert without[name] == prompts[name]
        assert kept[name] < 60
    assert engine.store.capacity == STORE  # the comparison puts the engine's own store back


@pytest.mark.parametrize("kv_cache", ["fp16", "int8"])
@pytest.mark.parametrize("key", ["qwen1.5-7b", "qwen2.5-7b"])
def test_the_store_allocates_what_the_planner_charges_for_it(key: str, kv_cache: str) -> None:
    """Each kept token costs what a token of context costs: K and V of every layer (and their scales in an 8-bit
    cache), nothing else."""
    shape = QWEN_SHAPES[key].with_kv_cache(kv_cache)
    model = network_on_meta(shape)
    grown = held_bytes(model, 1024, prefix_cache=STORE) - held_bytes(model, 1024)
    assert grown == STORE * shape.kv_bytes_per_token


def test_the_prefix_cache_gets_what_the_context_leaves_spare() -> None:
    entry = catalog.find("qwen1.5-7b")
    gpus = standard_gpus(1, 24)
    layout, off = fit(entry, gpus, fast=True), fit(entry, gpus, fast=True, prefix_cache=0)
    assert off.prefix_cache == 0 and layout.context == off.context == 8192  # never at the context's expense
    spare = plan_placement(entry, gpus, layout.context, path="fast").cards[0].spare
    assert layout.prefix_cache % BLOCK == 0 and 0 < layout.prefix_cache <= PREFIX_CACHE_CONTEXTS * layout.context
    assert layout.prefix_cache * entry.shape.kv_bytes_per_token <= PREFIX_CACHE_SHARE * spare
    assert f"prompts kept for reuse: {layout.prefix_cache:,} tokens" in layout.summary()
    assert fit(entry, gpus, fast=True, prefix_cache=1000).prefix_cache == 1000 // BLOCK * BLOCK  # a ceiling
    assert fit(entry, gpus, fast=False).prefix_cache == 0  # transformers' generate keeps no store


def test_a_split_model_keeps_prompts_only_where_every_card_has_room() -> None:
    """72B over two 24 GiB cards: the context takes nearly everything, so little or nothing is kept; over two 80 GiB
    cards (named, so both are used), each keeps its share of two contexts."""
    entry = catalog.find("qwen1.5-72b")
    tight = fit(entry, standard_gpus(2, 24), fast=True)
    roomy = fit(entry, standard_gpus(2, 80), fast=True, named=True)
    for layout in (tight, roomy):
        for card in layout.placement.cards:
            per_token = card.kv_cache / layout.context
            assert layout.prefix_cache * per_token <= PREFIX_CACHE_SHARE * card.spare
    assert tight.prefix_cache < roomy.prefix_cache == PREFIX_CACHE_CONTEXTS * roomy.context
