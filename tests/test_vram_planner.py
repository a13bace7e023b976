"""The VRAM planner, with the shapes of Qwen's real configs and the sizes Qwen published."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptq_chat.loading.checkpoint import inspect_checkpoint
from gptq_chat.loading.memory_plan import (
    CUDA_CONTEXT_BYTES,
    GIB,
    OVERHEAD_BYTES,
    ModelShape,
    max_context,
    plan,
)
from gptq_chat.models import catalog
from gptq_chat.testing.random_checkpoint import QWEN_SHAPES

KIB, MIB = 1024, 1024**2


def shape(key: str) -> ModelShape:
    return catalog.find(key).model_shape()


def test_kv_cache_per_token_follows_the_real_configs() -> None:
    # Qwen1.5 has no grouped-query attention: 2 (K, V) x layers x hidden x 2 bytes
    assert shape("qwen1.5-7b").kv_bytes_per_token == 512 * KIB  # 32 layers x 4096
    assert shape("qwen1.5-72b").kv_bytes_per_token == 2.5 * MIB  # 80 layers x 8192
    assert shape("qwen1.5-32b").kv_bytes_per_token == 256 * KIB  # 64 layers, 8 KV heads of 128 (GQA)
    assert shape("qwen2.5-7b").kv_bytes_per_token == 56 * KIB  # 28 layers, 4 KV heads of 128
    assert shape("qwen2.5-72b").kv_bytes_per_token == 320 * KIB  # 80 layers, 8 KV heads of 128


@pytest.mark.parametrize("entry", [e for e in catalog.KNOWN_MODELS if e.published_weight_bytes], ids=lambda e: e.key)
def test_weight_formula_reproduces_every_published_checkpoint_size(entry: catalog.CatalogEntry) -> None:
    estimated = ModelShape.from_qwen_shape(entry.shape).estimated_weight_bytes
    assert estimated == pytest.approx(entry.published_weight_bytes, rel=0.01), entry.size_source


def test_a_downloaded_checkpoint_is_planned_from_its_config_and_real_file_size(tiny_gptq_dir: Path) -> None:
    info = inspect_checkpoint(tiny_gptq_dir)
    tiny = ModelShape.from_checkpoint(info)
    assert tiny.weights == info.weight_bytes
    assert tiny.kv_bytes_per_token == info.kv_bytes_per_token
    assert tiny.intermediate_size == QWEN_SHAPES["tiny"].intermediate_size and tiny.tie_word_embeddings
    # the layout formula against a real file: only the safetensors header is missing
    assert 0 < info.weight_bytes - tiny.estimated_weight_bytes < 64 * KIB


def test_7b_at_8k_fits_a_24_gib_card_and_the_parts_add_up() -> None:
    qwen7b = shape("qwen1.5-7b")
    result = plan(qwen7b, 8192, [24 * GIB])
    assert result.fits and result.card is not None
    assert result.weights == qwen7b.weight_bytes == int((3.99 + 1.87) * 1e9)
    assert result.kv_cache == 4 * GIB  # 8192 x 512 KiB
    assert result.cuda_context == CUDA_CONTEXT_BYTES and result.overhead == OVERHEAD_BYTES
    assert result.total == result.weights + result.kv_cache + result.activations + CUDA_CONTEXT_BYTES + OVERHEAD_BYTES
    assert result.card.spare == 24 * GIB - result.total
    assert "Fits on GPU 0" in result.summary()


def test_generate_computes_one_row_of_logits_a_raw_forward_all_of_them() -> None:
    qwen7b = shape("qwen1.5-7b")
    generate = plan(qwen7b, 8192, [80 * GIB], prompt_tokens=8000)
    raw = plan(qwen7b, 8192, [80 * GIB], prompt_tokens=8000, full_logits=True)
    # transformers 5: generate passes logits_to_keep=1; Qwen2ForCausalLM.forward keeps fp16 logits
    assert raw.activations - generate.activations == (8000 - 1) * 151936 * 2
    eager = plan(qwen7b, 8192, [80 * GIB], prompt_tokens=8000, attention="eager")
    assert eager.activations - generate.activations == 32 * 8000**2 * 6
    with pytest.raises(ValueError, match="attention"):
        plan(qwen7b, 8192, [80 * GIB], attention="flash")


@pytest.mark.parametrize(
    ("context", "prompt", "measured_gb"),
    [(1024, 128, 6.1), (8192, 4096, 11.3), (8192, 8000, 17.0)],
)
def test_planner_matches_the_peak_vram_measured_on_an_h100(context: int, prompt: int, measured_gb: float) -> None:
    """NOTES.md: Qwen1.5-7B shape, Marlin, static cache of `context`, raw forward (all logits), torch's peak."""
    result = plan(shape("qwen1.5-7b"), context, [], prompt_tokens=prompt, attention="sdpa-masked", full_logits=True)
    allocated = result.total - result.cuda_context - result.overhead  # what torch's allocator counts
    assert allocated / 1e9 == pytest.approx(measured_gb, rel=0.15)


def test_72b_at_32k_does_not_fit_one_80_gib_card_and_the_longest_context_does() -> None:
    qwen72b = shape("qwen1.5-72b")
    result = plan(qwen72b, 32768, [80 * GIB])
    assert not result.fits and result.kv_cache == 32768 * 2.5 * MIB  # 80 GiB of KV cache alone
    longest = result.max_context
    assert 8192 < longest < 32768
    assert plan(qwen72b, longest, [80 * GIB]).fits and not plan(qwen72b, longest + 1, [80 * GIB]).fits
    assert f"{longest:,} tokens" in result.summary()


def test_cards_that_cannot_hold_the_weights_report_no_context_at_all() -> None:
    qwen72b = shape("qwen1.5-72b")
    result = plan(qwen72b, 4096, [24 * GIB])
    assert not result.fits and result.max_context == 0
    assert "not even the weights" in result.summary()
    assert max_context(qwen72b, [24 * GIB, 24 * GIB]) == 0  # one card at a time: placement.py spreads it
