"""Placements over several GPUs and the one fit rule, with the shapes of Qwen's real configs (engine/qwen_shapes.py)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from gptq_chat.engine.devices import CUDA_CONTEXT_BYTES
from gptq_chat.loading.fit import DEFAULT_GPU_CONTEXT_CAP, MIN_CONTEXT, fit, with_freed
from gptq_chat.loading.gpus import GpuSpec
from gptq_chat.loading.memory_plan import (
    FAST_GRAPH_POOL_BYTES,
    GIB,
    OVERHEAD_BYTES,
    cached_as,
    embedding_bytes,
    layer_weight_bytes,
    real_share,
    total_weight_bytes,
)
from gptq_chat.loading.placement import (
    PCIE_BYTES_PER_S,
    Placement,
    PlacementRefused,
    largest_context,
    largest_tensor_parallel_context,
    needs_row,
    plan_placement,
    plan_tensor_parallel,
    standard_gpus,
)
from gptq_chat.models import catalog
from tests.support.engine_bytes import SamplingPeaks, footprint

KIB, MIB = 1024, 1024**2
FIXED = CUDA_CONTEXT_BYTES + OVERHEAD_BYTES  # guesses to calibrate on a GPU, as is FAST_GRAPH_POOL_BYTES


def shape(key: str) -> catalog.CatalogEntry:
    """A catalog model: its shape, Qwen's GPTQ settings, its published size."""
    return catalog.find(key)


def layer_counts(placement: Placement) -> list[int]:
    return [card.layers for card in placement.cards]


def assert_fits(placement: Placement) -> None:
    """Every layer exactly once, in order, and no card over its free memory."""
    assert (
        placement.layer_devices()
        == [d for card in placement.cards for d in [card.gpu.index] * card.layers] + ["cpu"] * placement.cpu_layers
    )
    assert len(placement.layer_devices()) == placement.model.shape.num_layers
    first = 0
    for card in placement.cards:
        assert card.first_layer == first and card.total <= card.gpu.free_bytes
        first += card.layers
    assert sum(card.embedding for card in placement.cards) == sum(card.head for card in placement.cards) == 1


def test_72b_on_two_24_gib_cards_holds_only_the_context_its_free_bytes_allow(sampling_peaks: SamplingPeaks) -> None:
    """The longest context, from first principles: Qwen1.5-72B-Chat's config.json and the bytes the fast engine
    allocates, counted on the CPU (tests/support/engine_bytes.py). The head's card (40 layers, lm_head and norm) has
    24 GiB; what is left after its weights and fixed buffers, over what one more token costs it, is the answer."""
    qwen72b = shape("qwen1.5-72b")
    hidden, intermediate, vocab = 8192, 24576, 152064  # config.json: 80 layers, 64 heads of 128 and as many K/V heads
    matrix = vocab * hidden * 2  # the fp16 embedding, and the untied lm_head of the same shape
    layers_half = (total_weight_bytes(qwen72b) - 2 * matrix - hidden * 2) // 2  # 40 of 80 identical layers
    weights_on_head_card = layers_half + matrix + hidden * 2
    # what the engine keeps on that card: per token, fp16 K and V of its 40 layers and its rope tables' row
    engine = footprint(dataclasses.replace(qwen72b.shape, num_layers=40))
    sampled = sampling_peaks.prefill // sampling_peaks.vocab_size  # bytes per vocabulary entry, sampling a row
    # the fast prefill's peak per token (fused gate|up) is a GPU figure, measured on an H100 by test_doctor_gpu.py
    per_token = engine.per_token + (2 * hidden + 4 * intermediate) * 2
    # the engine's ids, positions and hidden state (engine.rest, a few KiB) are in the overhead
    fixed = FIXED + weights_on_head_card + vocab * (engine.per_entry + sampled) + FAST_GRAPH_POOL_BYTES
    expected = (24 * GIB - fixed) // per_token
    gpus = standard_gpus(2, 24)

    assert largest_context(qwen72b, gpus) == expected
    assert 2048 < expected < 4096  # a short chat only
    placed = plan_placement(qwen72b, gpus, expected)
    assert layer_counts(placed) == [40, 40] and placed.cards[0].embedding and placed.cards[1].head
    assert_fits(placed)
    assert placed.cards[1].kv_cache == 40 * expected * 32 * KIB  # 2.5 MiB per token over 80 layers
    with pytest.raises(PlacementRefused) as refused:
        plan_placement(qwen72b, gpus, expected + 1)
    assert refused.value.largest_context == expected
    assert f"at most {expected // 256 * 256:,} tokens" in refused.value.fix


def tensor_parallel_context_by_hand(world: int, kv_cache: str, sampling_peaks: SamplingPeaks) -> int:
    """Qwen1.5-72B split by tensors over `world` 24 GiB cards, from first principles: each card holds 1/world of
    every layer, of the vocabulary and of the KV cache (64/world heads), and prefills its share of the MLP's rows
    (the residual stream stays whole); a follower's card also carries the first process's CUDA context."""
    qwen72b = cached_as(shape("qwen1.5-72b"), kv_cache)
    hidden, intermediate, vocab = 8192, 24576, 152064  # config.json, as above
    engine = footprint(qwen72b.shape.split(world))  # per token: K/V of 64/world heads x 80 layers, rope's row
    sampled = sampling_peaks.prefill // sampling_peaks.vocab_size
    per_token = engine.per_token + (2 * hidden + 4 * intermediate // world) * 2
    weights = total_weight_bytes(qwen72b) // world
    fixed = FIXED + CUDA_CONTEXT_BYTES + weights + vocab * (engine.per_entry + sampled) + FAST_GRAPH_POOL_BYTES
    return int((24 * GIB - fixed) // per_token)


def test_72b_split_by_tensors_over_two_24_gib_cards_holds_4096_tokens_with_an_8_bit_cache(
    sampling_peaks: SamplingPeaks,
) -> None:
    """The seed's case: 4,096 tokens, the 8-bit cache issue's bar, met by the split the loader takes on its own."""
    qwen72b, gpus = shape("qwen1.5-72b"), standard_gpus(2, 24)
    int8 = cached_as(qwen72b, "int8")
    expected = tensor_parallel_context_by_hand(2, "int8", sampling_peaks)

    assert largest_tensor_parallel_context(int8, gpus) == expected
    layout = fit(qwen72b, gpus, fast=True, kv_cache="auto")
    assert layout.placement.tensor_parallel and layout.kv_cache == "int8"
    assert layout.context == expected // 256 * 256 >= 4096
    with pytest.raises(PlacementRefused) as refused:
        plan_tensor_parallel(int8, gpus, expected + 1)
    assert refused.value.largest_context == expected


def test_72b_over_four_24_gib_cards_is_split_four_ways_by_tensors(sampling_peaks: SamplingPeaks) -> None:
    """Four RTX 4090-sized cards: 64 heads, 24,576 MLP rows and 152,064 vocabulary entries all split four ways, so
    every layer is quartered; fp16 holds about 18k tokens there, the usual 8,192 without asking, and the whole
    32k window in 8 bits."""
    qwen72b, gpus = shape("qwen1.5-72b"), standard_gpus(4, 24)
    expected = tensor_parallel_context_by_hand(4, "fp16", sampling_peaks)
    assert largest_tensor_parallel_context(qwen72b, gpus) == expected > 16384
    layout = fit(qwen72b, gpus, fast=True, kv_cache="auto")
    assert layout.placement.tensor_parallel and [card.share for card in layout.placement.cards] == [4] * 4
    assert (layout.context, layout.kv_cache) == (DEFAULT_GPU_CONTEXT_CAP, "fp16")
    whole = fit(qwen72b, gpus, fast=True, context=32768, kv_cache="auto")
    assert whole.placement.tensor_parallel and (whole.context, whole.kv_cache) == (32768, "int8")


def test_72b_on_one_24_gib_card_is_refused_with_the_numbers() -> None:
    qwen72b = shape("qwen1.5-72b")
    with pytest.raises(PlacementRefused) as refused:
        plan_placement(qwen72b, [GpuSpec(0, 24 * GIB, 23 * GIB, "RTX 4090")], 8192)
    error = refused.value
    assert error.largest_context == 0 and error.available == {0: 23 * GIB}
    assert error.needed[0] > total_weight_bytes(qwen72b) + 8192 * 5 * MIB // 2  # weights + 20 GiB of KV cache, and more
    assert f"weights {total_weight_bytes(qwen72b) / GIB:.1f} GiB + KV cache 20.0 GiB" in error.problem
    assert "has 23.0 GiB free" in error.problem and "Not even the weights fit" in error.problem
    assert "one 80 GiB card holds 8,192 tokens" in error.fix
    assert "--kv-cache" not in error.fix  # no cache format helps weights that do not fit
    assert error.problem in str(error) and error.fix in str(error)  # shown like a CheckpointError


def test_72b_on_two_80_gib_cards_holds_its_whole_window() -> None:
    qwen72b = shape("qwen1.5-72b")
    gpus = standard_gpus(2, 80)
    at_8k = plan_placement(qwen72b, gpus, 8192)
    assert at_8k.single_card and at_8k.cards[0].gpu.index == 0  # 61 GiB: one card holds it
    assert largest_context(qwen72b, gpus) == qwen72b.shape.max_position_embeddings == 32768
    at_32k = plan_placement(qwen72b, gpus, 32768)  # 80 GiB of KV cache alone: split
    assert layer_counts(at_32k) == [40, 40] and all(card.kv_cache == 40 * GIB for card in at_32k.cards)
    assert_fits(at_32k)


def test_7b_on_one_24_gib_card_is_not_split() -> None:
    qwen7b = shape("qwen1.5-7b")
    alone = plan_placement(qwen7b, standard_gpus(1, 24), 8192)
    assert alone.single_card and set(alone.device_map().values()) == {0}
    two = plan_placement(qwen7b, [GpuSpec(0, 24 * GIB, 20 * GIB), GpuSpec(1, 24 * GIB, 22 * GIB)], 8192)
    assert two.single_card and two.cards[0].gpu.index == 0  # GPU 0, the app's default, holds it
    busy = plan_placement(qwen7b, [GpuSpec(0, 24 * GIB, 4 * GIB), GpuSpec(1, 24 * GIB, 22 * GIB)], 8192)
    assert busy.single_card and busy.cards[0].gpu.index == 1


def test_a_forced_split_of_7b_gives_each_card_as_many_layers() -> None:
    qwen7b = shape("qwen1.5-7b")
    two = plan_placement(qwen7b, standard_gpus(2, 24), 8192, split=True)
    assert layer_counts(two) == [16, 16] and two.cards[0].embedding and two.cards[1].head
    four = plan_placement(qwen7b, standard_gpus(4, 24), 8192, split=True)
    # the end cards also hold a 1.2 GB fp16 matrix (about 5 layers with their KV cache): fewer layers there,
    # and no two cards further apart than one layer
    per_layer = layer_weight_bytes(qwen7b) + 8192 * 16 * KIB
    totals = [card.total for card in four.cards]
    assert max(totals) - min(totals) <= per_layer and sum(layer_counts(four)) == 32
    assert four.cards[0].layers < four.cards[1].layers and four.cards[3].layers < four.cards[2].layers
    assert_fits(two)
    assert_fits(four)


def test_uneven_cards_get_layers_until_moving_one_would_make_the_fullest_card_fuller() -> None:
    qwen72b = shape("qwen1.5-72b")
    placed = plan_placement(qwen72b, [GpuSpec(0, 80 * GIB, 80 * GIB), GpuSpec(1, 24 * GIB, 24 * GIB)], 16384)
    assert_fits(placed)
    big, small = placed.cards
    assert big.layers > 3 * small.layers
    per_layer = layer_weight_bytes(qwen72b) + 16384 * 32 * KIB  # its weights and its 16k tokens of K and V
    fullest = max(placed.cards, key=lambda card: card.total / card.gpu.free_bytes)
    other = small if fullest is big else big
    # one layer fewer on the fullest card would make the other one fuller than the fullest is now
    assert (other.total + per_layer) / other.gpu.free_bytes > fullest.total / fullest.gpu.free_bytes


def test_a_tied_model_keeps_its_head_with_the_embedding() -> None:
    """Qwen2.5-0.5B ties lm_head to embed_tokens: they are one tensor, so on the plain path one card holds both."""
    placed = plan_placement(shape("qwen2.5-0.5b"), standard_gpus(2, 24), 8192, split=True, path="plain")
    assert_fits(placed)
    assert [card.embedding for card in placed.cards] == [card.head for card in placed.cards]
    assert placed.device_map()["lm_head"] == placed.device_map()["model.embed_tokens"]


def test_the_fast_engine_charges_a_tied_head_its_copy_on_the_last_card() -> None:
    """Split, the fast engine's last card multiplies by its own copy of a tied embedding (fast_model.Transformer):
    that card pays for it, and the two cards' weights add up to the model's plus one embedding."""
    model = shape("qwen2.5-0.5b")
    placed = plan_placement(model, standard_gpus(2, 24), 8192, split=True, path="fast")
    assert_fits(placed)
    first, last = placed.cards
    assert first.embedding and last.head and not last.embedding
    per_layer = (first.weights - embedding_bytes(model.shape) * real_share(model)) / first.layers
    assert last.weights - last.layers * per_layer >= embedding_bytes(model.shape) * real_share(model) * 0.99
    plain = plan_placement(model, standard_gpus(2, 24), 8192, split=True, path="plain")
    assert sum(c.weights for c in placed.cards) - sum(c.weights for c in plain.cards) == pytest.approx(
        embedding_bytes(model.shape) * real_share(model), rel=0.01
    )


def test_the_fast_engine_gets_the_embedding_first_and_the_head_last() -> None:
    """Its decode step is one CUDA graph per card, in layer order: tokens enter on the first card, logits
    leave from the last, so the planner puts the ends there whatever would balance better."""
    for cards in (2, 4):
        placed = plan_placement(shape("qwen1.5-72b"), standard_gpus(cards, 48), 4096, path="fast")
        assert_fits(placed)
        assert placed.cards[0].embedding and placed.cards[-1].head
        assert not any(card.embedding for card in placed.cards[1:]) and not any(c.head for c in placed.cards[:-1])


def meta_model(key: str) -> torch.nn.Module:
    """Qwen2ForCausalLM built from the real config, on the meta device (no memory)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    real = catalog.find(key).shape
    config = Qwen2Config(
        hidden_size=real.hidden_size,
        intermediate_size=real.intermediate_size,
        num_hidden_layers=real.num_layers,
        num_attention_heads=real.num_heads,
        num_key_value_heads=real.num_kv_heads,
        vocab_size=real.vocab_size,
        tie_word_embeddings=real.tie_word_embeddings,
    )
    with torch.device("meta"):
        return Qwen2ForCausalLM(config)


@pytest.mark.parametrize(
    ("key", "gpus", "offload"),
    [("qwen1.5-72b", standard_gpus(4, 24), False), ("qwen1.5-72b", standard_gpus(2, 24), True)],
    ids=["4x24", "2x24+cpu"],
)
def test_the_device_map_names_every_parameter_and_buffer_of_the_real_model(
    key: str, gpus: list[GpuSpec], offload: bool
) -> None:
    from accelerate.utils import check_device_map
    from transformers.integrations.accelerate import expand_device_map

    placed = plan_placement(shape(key), gpus, 8192, path="plain", allow_cpu_offload=offload)
    assert bool(placed.cpu_layers) == offload
    device_map = placed.device_map()
    model = meta_model(key)
    names = [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]
    assert any("rotary_emb" in name for name in names)
    # transformers sends a name the map does not match to device_map[""] (else the CPU): here, nowhere
    assert "unmapped" not in expand_device_map({**device_map, "": "unmapped"}, names).values()
    check_device_map(model, device_map)
    layers = [name for name in device_map if name.startswith("model.layers.")]
    assert layers == [f"model.layers.{i}" for i in range(80)]


def test_the_tiny_checkpoint_loads_with_a_per_module_map_as_with_one_device(tiny_gptq_dir: Path) -> None:
    """transformers takes every key of the map (rotary_emb included) for a real GPTQ checkpoint; on a machine
    without GPUs both "cards" are the CPU, so the two loads must compute the same logits."""
    from transformers import AutoModelForCausalLM

    from gptq_chat.loading.checkpoint import inspect_checkpoint
    from gptq_chat.loading.gptq_stack import from_pretrained_kwargs
    from gptq_chat.loading.kernels import choose_kernel

    info = inspect_checkpoint(tiny_gptq_dir)
    placed = plan_placement(info, standard_gpus(2, 24), 1024, path="plain", split=True)
    assert set(placed.device_map().values()) == {0, 1}  # its tied 78 MB embedding on one card, layers on the other
    kwargs = from_pretrained_kwargs(info.gptq.bits, choose_kernel(info, None), torch.float32)
    per_module = {name: "cpu" for name in placed.device_map()}
    tokens = torch.tensor([[1, 2, 3, 4]])
    logits = []
    for device_map in (per_module, {"": "cpu"}):
        model = AutoModelForCausalLM.from_pretrained(tiny_gptq_dir, device_map=device_map, **kwargs)
        with torch.no_grad():
            logits.append(model(tokens).logits)
    torch.testing.assert_close(logits[0], logits[1])


def test_cpu_offload_only_when_asked_and_then_loudly(caplog: pytest.LogCaptureFixture) -> None:
    qwen72b = shape("qwen1.5-72b")
    gpus = standard_gpus(2, 24)
    with pytest.raises(PlacementRefused) as refused:
        plan_placement(qwen72b, gpus, 8192, path="plain")
    assert "CPU offload" in refused.value.fix
    with caplog.at_level(logging.WARNING, logger="placement"):
        placed = plan_placement(qwen72b, gpus, 8192, path="plain", allow_cpu_offload=True)
    assert_fits(placed)
    assert placed.layer_devices()[-placed.cpu_layers :] == ["cpu"] * placed.cpu_layers  # the last layers
    assert placed.cpu_bytes == placed.cpu_layers * layer_weight_bytes(qwen72b)
    # every token copies the offloaded weights over PCIe: that bounds the speed
    assert f"at most {PCIE_BYTES_PER_S / placed.cpu_bytes:.1f} tokens/s" in placed.warning
    assert placed.warning in caplog.text and placed.warning in placed.summary()
    # accelerate runs the offloaded layers on the lowest-numbered GPU: their KV cache is there
    first = placed.cards[0]
    assert first.kv_cache == (first.layers + placed.cpu_layers) * 8192 * 32 * KIB
    fits_anyway = plan_placement(qwen72b, standard_gpus(2, 48), 8192, path="plain", allow_cpu_offload=True)
    assert fits_anyway.cpu_layers == 0 and not fits_anyway.warning
    with pytest.raises(ValueError, match="plain path"):
        plan_placement(qwen72b, gpus, 8192, path="fast", allow_cpu_offload=True)


def test_needs_table_rows_for_7b_14b_and_72b() -> None:
    seven, fourteen, seventy_two = (needs_row(shape(key), 8192) for key in ("qwen1.5-7b", "qwen1.5-14b", "qwen1.5-72b"))
    assert all(s.fits for s in seven.setups)  # 5.9 GB of weights, 4 GiB of KV cache at 8k
    assert all(s.fits for s in fourteen.setups)  # 9.9 GB, 6.25 GiB at 8k (40 layers x 5120)
    cells = {(s.cards, s.card_gib): s for s in seventy_two.setups}
    assert not cells[(1, 24)].fits and cells[(1, 24)].largest_context == 0  # 38.4 GiB of weights
    two_by_24 = largest_context(shape("qwen1.5-72b"), standard_gpus(2, 24))  # first principles: the test above
    assert not cells[(2, 24)].fits and cells[(2, 24)].largest_context == two_by_24
    # 4 x 24 GiB, 2 x 48 GiB, 1 x 80 GiB: 38.4 GiB + 20 GiB of KV cache + a few GiB of workspace fit in each
    assert cells[(4, 24)].fits and cells[(2, 48)].fits and cells[(1, 80)].fits
    # (48 - 38.4 - 1 fixed) GiB over 2.5 MiB KV + 0.2 MiB prefill per token: ~3.2k
    assert 3072 <= cells[(1, 48)].largest_context < 4096
    assert [seventy_two.compact(size) for size in (24, 48, 80)] == ["x4", "x2", "yes"]
    assert seven.compact(24) == "yes"
    # 16 GiB of KV cache at 32k on top of 5.5 GiB of weights: one 24 GiB card holds (24 - 5.5 - 1 fixed) GiB over
    # 512 KiB of K and V + 82 KiB of plain prefill per token, about 30.8k tokens
    long_chat = needs_row(shape("qwen1.5-7b"), 32768, path="plain")
    assert long_chat.compact(24) == "x2" and 30 * 1024 <= long_chat.setups[0].largest_context < 31 * 1024


def test_gpu_memory_rows_show_used_total_and_free_per_card() -> None:
    from gptq_chat.loading.gpus import gpu_memory_rows, usage

    gpus = [GpuSpec(0, 24 * GIB, 23 * GIB, "NVIDIA GeForce RTX 4090"), GpuSpec(1, 80 * GIB, 20 * GIB, "NVIDIA H100")]
    first, second = gpu_memory_rows(gpus)
    assert (first.gpu, first.name, first.used, first.total, first.free) == (
        "GPU 0", "NVIDIA GeForce RTX 4090", "1.0 GiB", "24.0 GiB", "23.0 GiB",
    )  # fmt: skip
    assert second.used == "60.0 GiB" and second.used_fraction == 0.75
    assert usage(80 * GIB, 20 * GIB) == "60.0 GiB used of 80.0 GiB, 20.0 GiB free"


@pytest.mark.gpu
def test_the_cards_planned_against_are_the_real_ones_with_their_real_memory() -> None:
    from gptq_chat.loading.gpus import gpu_memory_rows, visible_gpus

    live = visible_gpus()
    assert [gpu.index for gpu in live] == list(range(torch.cuda.device_count())) and live
    for gpu in live:
        free, total = torch.cuda.mem_get_info(gpu.index)
        assert gpu.total_bytes == total and abs(gpu.free_bytes - free) < 256 * MIB
        assert gpu.name == torch.cuda.get_device_name(gpu.index)
    assert [row.gpu for row in gpu_memory_rows()] == [f"GPU {gpu.index}" for gpu in live]


def test_switching_to_a_model_that_needs_two_cards_is_checked_over_both() -> None:
    """The page's model switch asks the loader's rule before unloading anything, with the current model's memory
    counted as freed: 72B on two 24 GiB cards holds its minimum context; on two 16 GiB cards it is refused."""
    big = shape("qwen1.5-72b")
    assert fit(big, standard_gpus(2, 24), fast=True).context >= MIN_CONTEXT
    with pytest.raises(PlacementRefused) as refused:
        fit(big, standard_gpus(2, 16), fast=True)
    assert "GiB" in refused.value.problem and "larger GPUs" in refused.value.fix
    # What the current model frees counts: two cards each 9 GiB short are enough once 18 GiB are freed.
    short = [GpuSpec(i, 24 * GIB, 15 * GIB) for i in range(2)]
    with pytest.raises(PlacementRefused):
        fit(big, short, fast=True)
    assert [gpu.free_bytes for gpu in with_freed(short, 18 * GIB)] == [24 * GIB, 24 * GIB]
    assert fit(big, with_freed(short, 18 * GIB), fast=True).context >= MIN_CONTEXT


def test_no_model_is_loaded_with_less_context_than_a_chat_needs() -> None:
    """Asked for no context, the rule plans the longest that fits; below MIN_CONTEXT it refuses, with the longest."""
    big = shape("qwen1.5-72b")
    cramped = standard_gpus(2, 21)  # holds the weights and a few hundred tokens
    longest = largest_context(big, cramped)
    assert 0 < longest < MIN_CONTEXT
    with pytest.raises(PlacementRefused, match=f"The longest context that fits: {longest:,} tokens"):
        fit(big, cramped, fast=True, split="layers")
    assert fit(big, cramped, fast=True, split="layers", context=longest).context == longest  # asked for: as asked


def test_the_loader_splits_only_what_one_card_cannot_hold() -> None:
    """`fit.fit`, the loader's decision on several cards."""
    two, seven = standard_gpus(2, 24), shape("qwen1.5-7b")
    layout = fit(seven, two, fast=True)
    assert (layout.device, layout.placement, layout.context) == ("cuda:0", None, DEFAULT_GPU_CONTEXT_CAP)
    layout = fit(seven, two, fast=True, context=4096, split="layers", named=True)  # "cuda:0,1"
    assert layout.placement is not None and layout.context == 4096 and layout_layers(layout) == [16, 16]
    big = shape("qwen1.5-72b")
    layout = fit(big, two, fast=True, split="layers")
    longest = largest_context(big, two, path="fast")
    assert layout.placement is not None and layout.device == "cuda:0" and layout.cards == ["cuda:0", "cuda:1"]
    assert layout.context == min(longest // 256 * 256, DEFAULT_GPU_CONTEXT_CAP) and longest - 256 < layout.context
    assert layout.placement.layer_devices() == [0] * 40 + [1] * 40
    with pytest.raises(PlacementRefused, match="longest context that fits") as refused:
        fit(big, two, fast=True, context=8192, split="layers")
    assert "store the KV cache in 8 bits, about twice the context on the same cards: `--kv-cache int8`" in str(
        refused.value
    )
    with pytest.raises(PlacementRefused) as refused:  # already in 8 bits: no such advice
        fit(big, two, fast=True, context=8192, split="layers", kv_cache="int8")
    assert "--kv-cache" not in refused.value.fix


def layout_layers(layout) -> list[int]:
    return [card.layers for card in layout.placement.cards]


def test_a_model_that_needs_two_cards_has_its_tensors_split_where_it_can() -> None:
    """`fit.fit`: "auto" halves every layer (tensor parallelism, the faster split) unless the engine, the model's
    shape or the context asked for rules it out; then the layers are split."""
    two, big = standard_gpus(2, 24), shape("qwen1.5-72b")
    layout = fit(big, two, fast=True)
    assert layout.device == "cuda:0" and layout.placement.tensor_parallel
    assert [c.share for c in layout.placement.cards] == [2, 2]
    assert layout.context == min(largest_tensor_parallel_context(big, two) // 256 * 256, DEFAULT_GPU_CONTEXT_CAP)
    # An MLP whose rows do not split into whole 128-wide groups on each card (as Qwen1.5-14B's float one):
    uneven_mlp = dataclasses.replace(big, intermediate_size=24576 + 64)
    # Asked for, the plain path (transformers has no tensor parallelism here), a shape that does not halve:
    for model, split, fast in [(big, "layers", True), (big, "auto", False), (uneven_mlp, "auto", True)]:
        placement = fit(model, two, fast=fast, split=split).placement
        assert not placement.tensor_parallel and placement.layer_devices() == [0] * 40 + [1] * 40
    # One card holds a 7B model: nothing is split unless the cards are named ("cuda:0,1").
    assert fit(shape("qwen1.5-7b"), two, fast=True).placement is None
    layout = fit(shape("qwen1.5-7b"), two, fast=True, context=4096, named=True)
    assert layout.placement.tensor_parallel and layout.context == 4096
    # 24 + 48 GiB: halves are limited by the smaller card, whole layers are not; a context only they hold.
    uneven = [GpuSpec(0, 24 * GIB, 24 * GIB), GpuSpec(1, 48 * GIB, 48 * GIB)]
    longest = largest_tensor_parallel_context(big, uneven)
    layout = fit(big, uneven, fast=True, context=longest + 4096)
    assert not layout.placement.tensor_parallel and layout.context == longest + 4096
    # "tensor" is a demand: refused with the reason.
    with pytest.raises(
        ValueError, match=r"cannot be split by tensor parallelism: its 24640 MLP rows .* --split layers"
    ):
        fit(uneven_mlp, two, fast=True, split="tensor")
    with pytest.raises(ValueError, match="runs on the fast engine"):
        fit(big, two, fast=False, split="tensor")
    with pytest.raises(PlacementRefused, match="with tensor parallelism"):
        fit(big, uneven, fast=True, context=longest + 4096, split="tensor")


def test_the_command_line_shows_the_split_the_loader_would_choose(capsys: pytest.CaptureFixture[str]) -> None:
    """`python download.py --list --cards 24,24 qwen1.5-72b`: tensor parallel by default, the layers on request
    or where only they hold the context; a model one card holds stays on one card; a refusal goes to stderr."""
    from download import main

    def listed(*args: str) -> int:
        return main(["--list", "--cards", "24,24", *args])

    assert listed("qwen1.5-72b", "--context", "2048") == 0
    assert "tensor parallel" in capsys.readouterr().out
    assert listed("qwen1.5-72b", "--context", "2048", "--split", "layers") == 0
    assert "GPU 0: embedding, layers 0-39" in capsys.readouterr().out
    assert listed("qwen1.5-72b", "--context", "2560") == 0  # too long for halves
    assert "GPU 0: embedding, layers 0-39" in capsys.readouterr().out
    assert listed("qwen1.5-7b", "--context", "2048") == 0
    assert "on cuda:0" in capsys.readouterr().out
    assert listed("qwen1.5-72b", "--context", "8192", "--split", "tensor") == 1
    assert "with tensor parallelism" in capsys.readouterr().err
    assert listed("--context", "4096", "--kv-cache", "fp16") == 0  # every known model on these cards
    table = capsys.readouterr().out
    assert "qwen1.5-7b    yes, on GPU 0" in table and "qwen2.5-72b   yes, tensor parallel over 2 GPUs" in table
    longest = largest_context(shape("qwen1.5-72b"), standard_gpus(2, 24))  # no grouped-query attention
    assert f"qwen1.5-72b   no: at most {longest:,} tokens of context" in table
