"""The memory planner's fast-engine terms against the bytes the engine really allocates, counted on the CPU.

memory_plan.py sizes what the fast engine needs from a model's shape alone. Here the engine is built and every tensor
it allocates is counted (tests/support/engine_bytes.py): at the shapes of Qwen's real configs on the meta device, and
for a real checkpoint on the CPU, where the two counts must agree. A buffer the engine allocates and the planner does
not count, or counts wrongly, fails here.
"""

from __future__ import annotations

import pytest

from gptq_chat.engine.fast_engine import FastEngine
from gptq_chat.engine.network import Transformer
from gptq_chat.engine.qwen_shapes import QWEN_SHAPES
from gptq_chat.loading.memory_plan import fast_buffer_bytes, sampling_bytes
from gptq_chat.loading.placement import plan_placement, standard_gpus
from gptq_chat.models import catalog
from tests.support.engine_bytes import (
    CONTEXTS,
    PROMPT,
    SAMPLED,
    SMALL_BUFFERS,
    Allocations,
    SamplingPeaks,
    footprint,
    held_bytes,
    network_on_meta,
)

# fp16 K and V of every layer for one token, written out from each model's config.json (sources: engine/qwen_shapes.py)
KV_PER_TOKEN = {
    "qwen1.5-7b": 32 * 2 * 32 * 128 * 2,  # 32 layers, 32 KV heads of 128 (no grouped-query attention)
    "qwen2.5-7b": 28 * 2 * 4 * 128 * 2,  # 28 layers, 4 KV heads of 128 (28 query heads share them)
    "qwen1.5-72b": 80 * 2 * 64 * 128 * 2,  # 80 layers, 64 KV heads of 128
}
SLOTS = (1, 2)


def test_the_meta_count_is_what_the_cpu_allocates_and_a_running_engine_adds_nothing(tiny_network: Transformer) -> None:
    """The real checkpoint's engine on the CPU: what it keeps once built is what the meta device's count says, and
    prefilling two slots and decoding them together leaves nothing more behind."""
    with Allocations() as allocations:
        engine = FastEngine(tiny_network, CONTEXTS[0], slots=2)
        built = allocations.held()
        for slot in (0, 1):
            engine.prefill(PROMPT, SAMPLED, slot=slot)
        engine.decode(2, len(PROMPT) + 2, greedy=False)
        ran = allocations.held()
    assert built == ran
    assert built == held_bytes(network_on_meta(tiny_network.shape), CONTEXTS[0], slots=2)


@pytest.mark.parametrize("slots", SLOTS)
@pytest.mark.parametrize("key", sorted(KV_PER_TOKEN))
def test_a_token_of_context_costs_what_the_planner_charges_for_it(key: str, slots: int) -> None:
    """Per token: each slot's K and V of every layer (from the config) and the rope tables' row (measured)."""
    shape = QWEN_SHAPES[key]
    assert shape.kv_bytes_per_token == KV_PER_TOKEN[key]
    planned = slots * shape.kv_bytes_per_token + fast_buffer_bytes(shape, 1, slots) - fast_buffer_bytes(shape, 0, slots)
    assert footprint(shape, slots).per_token == planned


@pytest.mark.parametrize("key", ["qwen1.5-7b", "qwen2.5-7b"])
def test_a_token_of_an_8_bit_cache_costs_what_the_planner_charges_for_it(key: str) -> None:
    """The engine's int8 K and V and their fp16 scales per token and head, against `kv_bytes_per_token`."""
    shape = QWEN_SHAPES[key].with_kv_cache("int8")
    assert shape.kv_bytes_per_token == KV_PER_TOKEN[key] // 2 + 2 * shape.num_layers * shape.num_kv_heads * 2
    context = 4096
    held = held_bytes(network_on_meta(shape), context)
    assert 0 <= held - (context * shape.kv_bytes_per_token + fast_buffer_bytes(shape, context)) < SMALL_BUFFERS


@pytest.mark.parametrize("slots", SLOTS)
@pytest.mark.parametrize("key", sorted(KV_PER_TOKEN))
def test_the_planner_counts_every_buffer_the_engine_keeps(key: str, slots: int) -> None:
    """At no context the planner's buffers are the vocabulary-sized ones (each slot's logits, seen-token and grammar
    mask rows): exactly the engine's. What it leaves to OVERHEAD_BYTES (ids, positions, settings, hidden states)
    stays small."""
    shape = QWEN_SHAPES[key]
    measured = footprint(shape, slots)
    assert fast_buffer_bytes(shape, 0, slots) == shape.vocab_size * measured.per_entry
    assert 0 <= measured.rest < SMALL_BUFFERS
    context = 4096  # the whole: every buffer the engine keeps, counted or left to the overhead
    held = held_bytes(network_on_meta(shape), context, slots)
    planned = context * slots * shape.kv_bytes_per_token + fast_buffer_bytes(shape, context, slots)
    assert 0 <= held - planned < SMALL_BUFFERS


def test_sampling_holds_what_the_planner_charges(sampling_peaks: SamplingPeaks) -> None:
    """At Qwen's real vocabulary: a prefill's last row, and decode steps of one and two rows, sampled."""
    vocab = sampling_peaks.vocab_size
    assert vocab == QWEN_SHAPES["qwen1.5-7b"].vocab_size == 151936
    assert 0 <= sampling_peaks.prefill - sampling_bytes(vocab, 1) < SMALL_BUFFERS
    for rows, peak in sampling_peaks.decode.items():
        assert 0 <= peak - sampling_bytes(vocab, rows) < SMALL_BUFFERS


def test_each_further_slot_costs_each_card_its_rows(sampling_peaks: SamplingPeaks) -> None:
    """A second slot: its own KV cache, its logits and seen-token rows, and one more row sampled in a decode step."""
    entry = catalog.find("qwen1.5-7b")
    vocab = entry.shape.vocab_size
    one, two = (plan_placement(entry, standard_gpus(1, 80), 4096, slots=slots).cards[0] for slots in SLOTS)
    kept = footprint(entry.shape, 2).per_entry - footprint(entry.shape, 1).per_entry
    sampled, left = divmod(sampling_peaks.decode[2] - sampling_peaks.decode[1], vocab)
    assert left < SMALL_BUFFERS
    assert two.kv_cache == 2 * one.kv_cache
    assert two.workspace - one.workspace == vocab * (kept + sampled)
