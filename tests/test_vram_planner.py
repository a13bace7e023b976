"""The memory plan, with the shapes of Qwen's real configs and the sizes Qwen published."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptq_chat.engine.shape import ModelShape
from gptq_chat.loading.checkpoint import inspect_checkpoint
from gptq_chat.loading.gpus import GpuSpec
from gptq_chat.loading.memory_plan import (
    CUDA_CONTEXT_BYTES,
    GIB,
    OVERHEAD_BYTES,
    estimated_weight_bytes,
    plan,
    total_weight_bytes,
)
from gptq_chat.loading.placement import PlacementRefused, largest_context, plan_placement, standard_gpus
from gptq_chat.models import catalog
from gptq_chat.testing.random_checkpoint import TEST_SHAPES

KIB, MIB = 1024, 1024**2


def shape(key: str) -> ModelShape:
    return catalog.find(key).shape


def one_card(size: int) -> list[GpuSpec]:
    return [GpuSpec(0, size, size)]


def test_kv_cache_per_token_follows_the_real_configs() -> None:
    # Qwen1.5 has no grouped-query attention: 2 (K, V) x layers x hidden x 2 bytes
    assert shape("qwen1.5-7b").kv_bytes_per_token == 512 * KIB  # 32 layers x 4096
    assert shape("qwen1.5-72b").kv_bytes_per_token == 2.5 * MIB  # 80 layers x 8192
    assert shape("qwen1.5-32b").kv_bytes_per_token == 256 * KIB  # 64 layers, 8 KV heads of 128 (GQA)
    assert shape("qwen2.5-7b").kv_bytes_per_token == 56 * KIB  # 28 layers, 4 KV heads of 128
    assert shape("qwen2.5-72b").kv_bytes_per_token == 320 * KIB  # 80 layers, 8 KV heads of 128


@pytest.mark.parametrize("entry", [e for e in catalog.KNOWN_MODELS if e.published_weight_bytes], ids=lambda e: e.key)
def test_weight_formula_reproduces_every_published_checkpoint_size(entry: catalog.CatalogEntry) -> None:
    assert estimated_weight_bytes(entry) == pytest.approx(entry.published_weight_bytes, rel=0.01), entry.size_source


def test_a_downloaded_checkpoint_is_planned_from_its_config_and_real_file_size(tiny_gptq_dir: Path) -> None:
    info = inspect_checkpoint(tiny_gptq_dir)
    assert total_weight_bytes(info) == info.weight_bytes
    assert info.shape == TEST_SHAPES["tiny"]  # config.json, read back by the one rule, gives the shape written
    # the layout formula against a real file: only the safetensors header is missing
    assert 0 < info.weight_bytes - estimated_weight_bytes(info) < 64 * KIB


def test_7b_at_8k_fits_a_24_gib_card_and_the_parts_add_up() -> None:
    qwen7b = catalog.find("qwen1.5-7b")
    result = plan(qwen7b, 8192)
    assert result.weights == qwen7b.weight_bytes == int((3.99 + 1.87) * 1e9)
    assert result.kv_cache == 4 * GIB  # 8192 x 512 KiB
    assert result.cuda_context == CUDA_CONTEXT_BYTES and result.overhead == OVERHEAD_BYTES
    assert result.total == result.weights + result.kv_cache + result.activations + CUDA_CONTEXT_BYTES + OVERHEAD_BYTES
    card = plan_placement(qwen7b, one_card(24 * GIB), 8192, path="plain").cards[0]
    assert card.total == pytest.approx(result.total, abs=64)  # the same parts, each layer's bytes rounded down
    assert f"needs {result.total / GIB:.1f} GiB on one card" in result.summary()


def test_generate_computes_one_row_of_logits_a_raw_forward_all_of_them() -> None:
    qwen7b = catalog.find("qwen1.5-7b")
    generate = plan(qwen7b, 8192, prompt_tokens=8000)
    raw = plan(qwen7b, 8192, prompt_tokens=8000, full_logits=True)
    # transformers 5: generate passes logits_to_keep=1; Qwen2ForCausalLM.forward keeps fp16 logits
    assert raw.activations - generate.activations == (8000 - 1) * 151936 * 2
    eager = plan(qwen7b, 8192, prompt_tokens=8000, attention="eager")
    assert eager.activations - generate.activations == 32 * 8000**2 * 6
    with pytest.raises(ValueError, match="attention"):
        plan(qwen7b, 8192, attention="flash")


@pytest.mark.parametrize(
    ("context", "prompt", "measured_gb"),
    [(1024, 128, 6.1), (8192, 4096, 11.3), (8192, 8000, 17.0)],
)
def test_planner_matches_the_peak_vram_measured_on_an_h100(context: int, prompt: int, measured_gb: float) -> None:
    """Measured on an H100: Qwen1.5-7B shape, Marlin, static cache of `context`, raw forward (all logits), torch's
    peak."""
    result = plan(catalog.find("qwen1.5-7b"), context, prompt_tokens=prompt, attention="sdpa-masked", full_logits=True)
    allocated = result.total - result.cuda_context - result.overhead  # what torch's allocator counts
    assert allocated / 1e9 == pytest.approx(measured_gb, rel=0.15)


def test_72b_at_32k_does_not_fit_one_80_gib_card_and_the_longest_context_does() -> None:
    qwen72b = catalog.find("qwen1.5-72b")
    assert plan(qwen72b, 32768).kv_cache == 32768 * 2.5 * MIB  # 80 GiB of KV cache alone
    longest = largest_context(qwen72b, one_card(80 * GIB), path="plain")
    assert 8192 < longest < 32768
    plan_placement(qwen72b, one_card(80 * GIB), longest, path="plain")
    with pytest.raises(PlacementRefused, match=f"The longest context that fits: {longest:,} tokens"):
        plan_placement(qwen72b, one_card(80 * GIB), longest + 1, path="plain")


def test_cards_that_cannot_hold_the_weights_report_no_context_at_all() -> None:
    qwen72b = catalog.find("qwen1.5-72b")
    assert largest_context(qwen72b, one_card(24 * GIB), path="plain") == 0
    with pytest.raises(PlacementRefused, match="Not even the weights fit"):
        plan_placement(qwen72b, one_card(24 * GIB), 4096, path="plain")
    assert largest_context(qwen72b, standard_gpus(2, 24), path="plain") > 0  # two cards share its layers
