"""Attention over an 8-bit KV cache (gptq_chat/engine/quantized_attention.py).

- quantize_kv: int8 rounds to nearest (error <= scale / 2), float8_e4m3fn keeps 3 mantissa bits (relative
  error <= 2**-4, absolute 2**-10 * scale among its subnormals); all-zero rows stay finite.
- The plain-torch reference equals fp32 scaled_dot_product_attention on the dequantized cache with an
  explicit boolean mask built from the positions (an independent computation).
- The Triton kernel equals the reference. Without CUDA it runs only under TRITON_INTERPRET=1 (small
  shapes); the `gpu` variants cover the 7B shape (32 heads, head_dim 128) on non-contiguous cache views.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from gptq_chat.engine.quantized_attention import (
    attend_quantized,
    dequantized_attention,
    quantize_kv,
    store_quantized,
    triton_quantized_attention,
    triton_store_quantized,
)

EIGHT_BIT = [torch.int8, torch.float8_e4m3fn]


def random_cache(
    batch: int, kv_heads: int, length: int, dim: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Quantized k, k_scale, v, v_scale from random float32 keys and values of varied magnitudes."""
    gen = torch.Generator(device).manual_seed(seed)
    shape = (batch, kv_heads, length, dim)
    magnitude = torch.rand(*shape[:3], 1, generator=gen, device=device) * 4 + 0.1
    keys = torch.randn(shape, generator=gen, device=device) * magnitude
    values = torch.randn(shape, generator=gen, device=device)
    scale_dtype = torch.float16 if device == "cuda" else torch.float32  # the app's cache scales
    k, k_scale = quantize_kv(keys.to(scale_dtype), dtype)
    v, v_scale = quantize_kv(values.to(scale_dtype), dtype)
    return k, k_scale, v, v_scale


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16])
def test_int8_round_trip_within_half_a_step(x_dtype: torch.dtype) -> None:
    x = (torch.randn(2, 3, 7, 64) * torch.rand(2, 3, 7, 1) * 10).to(x_dtype)
    stored, scale = quantize_kv(x, torch.int8)
    assert stored.dtype == torch.int8 and scale.dtype == x_dtype and scale.shape == (2, 3, 7)
    error = (x.double() - stored.double() * scale.double().unsqueeze(-1)).abs()
    assert (error <= scale.double().unsqueeze(-1) * 0.5 * (1 + 1e-6)).all()
    assert stored.abs().amax(-1).min() >= 126  # the range is used


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16])
def test_fp8_round_trip_within_three_mantissa_bits(x_dtype: torch.dtype) -> None:
    x = (torch.randn(2, 3, 7, 64) * torch.rand(2, 3, 7, 1) * 10).to(x_dtype)
    stored, scale = quantize_kv(x, torch.float8_e4m3fn)
    assert stored.dtype == torch.float8_e4m3fn and scale.dtype == x_dtype
    scale = scale.double().unsqueeze(-1)
    error = (x.double() - stored.double() * scale).abs()
    assert (error <= x.double().abs() * 2**-4 + scale * 2**-10).all()


@pytest.mark.parametrize("dtype", EIGHT_BIT)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16])
def test_zero_rows_quantize_to_zero(dtype: torch.dtype, x_dtype: torch.dtype) -> None:
    x = torch.randn(1, 2, 4, 64).to(x_dtype)
    x[0, 1, 2] = 0
    stored, scale = quantize_kv(x, dtype)
    assert torch.isfinite(scale).all() and (scale > 0).all()
    assert not stored.float().isnan().any()
    assert (stored[0, 1, 2].float() == 0).all()


def sdpa_on_dequantized(q, k, k_scale, v, v_scale, positions) -> torch.Tensor:
    """fp32 scaled_dot_product_attention on the dequantized cache, kv heads repeated per group."""
    groups = q.shape[1] // k.shape[1]
    keys = (k.float() * k_scale.float().unsqueeze(-1)).repeat_interleave(groups, dim=1)
    values = (v.float() * v_scale.float().unsqueeze(-1)).repeat_interleave(groups, dim=1)
    mask = torch.arange(k.shape[2], device=q.device)[None, None, :] <= positions[:, :, None]  # [B, T, L]
    return F.scaled_dot_product_attention(q.float(), keys, values, attn_mask=mask.unsqueeze(1))


@pytest.mark.parametrize("dtype", EIGHT_BIT)
@pytest.mark.parametrize(
    ("batch", "kv_heads", "groups", "steps", "length", "dim"),
    [
        (2, 4, 1, 1, 40, 128),  # decode
        (2, 2, 1, 5, 40, 64),  # verify: positions start..start+4
        (2, 2, 3, 5, 33, 64),  # grouped-query attention
    ],
)
def test_reference_matches_sdpa(dtype, batch, kv_heads, groups, steps, length, dim) -> None:
    k, k_scale, v, v_scale = random_cache(batch, kv_heads, length, dim, dtype)
    q = torch.randn(batch, kv_heads * groups, steps, dim)
    positions = torch.tensor([[length - steps], [3]]) + torch.arange(steps)
    out = dequantized_attention(q, k, k_scale, v, v_scale, positions)
    expected = sdpa_on_dequantized(q, k, k_scale, v, v_scale, positions)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attend_quantized(q, k, k_scale, v, v_scale, positions), out)


def triton_device() -> str:
    """Where the Triton tests run: the CPU under TRITON_INTERPRET=1, else CUDA; skip otherwise."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not interpreted and not torch.cuda.is_available():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    pytest.importorskip("triton")
    return "cpu" if interpreted else "cuda"


def check_kernel(q, k, k_scale, v, v_scale, positions, splits: int | None = None, rel: float = 2e-3) -> None:
    """The Triton kernel's output against the reference, within rel of the output's largest magnitude."""
    out = triton_quantized_attention(q, k, k_scale, v, v_scale, positions, splits=splits)
    expected = dequantized_attention(q, k, k_scale, v, v_scale, positions)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    error = (out.float() - expected.float()).abs().max().item()
    assert error <= rel * expected.float().abs().max().item(), error


@pytest.mark.parametrize("dtype", EIGHT_BIT)
@pytest.mark.parametrize(
    ("batch", "kv_heads", "groups", "steps", "length", "dim", "splits"),
    [
        (2, 2, 3, 1, 150, 64, None),  # decode, GQA, splits chosen from the shapes
        (1, 2, 1, 5, 130, 128, 3),  # verify, three splits, last one partial
        (2, 1, 2, 9, 70, 64, 2),  # verify at T=9
        (1, 1, 1, 40, 200, 64, 1),  # prefill: two query blocks, no combine
        (2, 1, 4, 3, 256, 64, 4),  # splits entirely beyond the short row's positions
    ],
)
@pytest.mark.parametrize("q_dtype", [torch.float32, torch.float16])
def test_triton_kernel_matches_reference(dtype, batch, kv_heads, groups, steps, length, dim, splits, q_dtype) -> None:
    device = triton_device()
    k, k_scale, v, v_scale = random_cache(batch, kv_heads, length, dim, dtype, device)
    q = torch.randn(batch, kv_heads * groups, steps, dim).to(device, q_dtype)
    starts = torch.tensor([length - steps - 1, 2])[:batch, None]  # row 1 sees only a few keys
    positions = (starts + torch.arange(steps)).to(device)
    check_kernel(q, k, k_scale, v, v_scale, positions, splits)


def test_triton_kernel_reads_strided_views() -> None:
    device = triton_device()
    k, k_scale, v, v_scale = random_cache(5, 2, 100, 64, torch.int8, device)
    rows, window = slice(1, 5, 2), 70  # rows 1 and 3 of the cache, its first 70 slots
    views = [t[rows, :, :window] for t in (k, k_scale, v, v_scale)]
    q = torch.randn(2, 4, 8, 64, device=device).transpose(1, 2).contiguous().transpose(1, 2)  # strided q too
    positions = torch.tensor([[60], [30]], device=device) + torch.arange(8, device=device)
    check_kernel(q, *views, positions, splits=2)


GPU_7B = dict(kv_heads=32, groups=1, dim=128)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", EIGHT_BIT)
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("steps", [1, 5, 300])
@pytest.mark.parametrize("window", [128, 4096, 8192])
def test_triton_kernel_7b_shapes_on_views(dtype, batch, steps, window) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    if steps > window:
        pytest.skip("more queries than the window")
    kv_heads, dim = GPU_7B["kv_heads"], GPU_7B["dim"]
    k, k_scale, v, v_scale = random_cache(2 * batch + 1, kv_heads, window + 64, dim, dtype, "cuda")
    rows = slice(1, 1 + 2 * batch, 2)
    views = [t[rows, :, :window] for t in (k, k_scale, v, v_scale)]
    q = torch.randn(batch, kv_heads * GPU_7B["groups"], steps, dim, device="cuda", dtype=torch.float16)
    starts = torch.tensor([(window - steps) * (batch - b) // batch for b in range(batch)], device="cuda")
    positions = starts[:, None] + torch.arange(steps, device="cuda")
    check_kernel(q, *views, positions)


@pytest.mark.gpu
def test_triton_kernel_replays_in_a_cuda_graph() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    k, k_scale, v, v_scale = random_cache(2, 32, 4096, 128, torch.int8, "cuda")
    q = torch.randn(2, 32, 1, 128, device="cuda", dtype=torch.float16)
    positions = torch.tensor([[100], [4000]], device="cuda")
    triton_quantized_attention(q, k, k_scale, v, v_scale, positions)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_quantized_attention(q, k, k_scale, v, v_scale, positions)
    for new in ([[4095], [0]], [[2000], [63]]):
        positions.copy_(torch.tensor(new))
        q.normal_()
        graph.replay()
        expected = dequantized_attention(q, k, k_scale, v, v_scale, positions)
        assert (out.float() - expected.float()).abs().max() <= 2e-3 * expected.float().abs().max()


def stored_by(store, x: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype, length: int):
    """What `store` leaves in fresh cache rows (filled with a marker) when it writes x at positions."""
    batch, heads, _, dim = x.shape
    stored = torch.full((batch, heads, length, dim), 7, dtype=torch.int8, device=x.device).to(dtype)
    scale = torch.full((batch, heads, length), -1.0, dtype=x.dtype, device=x.device)
    store(x, positions, stored, scale)
    return stored, scale


def scattered(x, positions, stored, scale) -> None:
    """The reference write: quantize_kv, then each token's row and scale at its position."""
    values, scales = quantize_kv(x, stored.dtype)
    for b in range(x.shape[0]):
        for t, position in enumerate(positions[b].tolist()):
            stored[b, :, position] = values[b, :, t]
            scale[b, :, position] = scales[b, :, t]


@pytest.mark.parametrize("dtype", EIGHT_BIT)
def test_store_writes_quantized_rows_and_scales_at_the_positions_only(dtype: torch.dtype) -> None:
    x = torch.randn(2, 3, 4, 64) * torch.rand(2, 3, 4, 1) * 5
    positions = torch.tensor([[0, 1, 2, 3], [9, 4, 6, 11]])
    stored, scale = stored_by(store_quantized, x, positions, dtype, 12)
    expected_stored, expected_scale = stored_by(scattered, x, positions, dtype, 12)
    assert torch.equal(stored.float(), expected_stored.float()) and torch.equal(scale, expected_scale)
    assert (scale[1, :, [0, 1, 2, 3, 5, 7, 8, 10]] == -1).all()  # rows not written are untouched


@pytest.mark.parametrize("dtype", EIGHT_BIT)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16])
def test_triton_store_writes_what_quantize_kv_gives(dtype: torch.dtype, x_dtype: torch.dtype) -> None:
    device = triton_device()
    if device == "cpu" and dtype == torch.float8_e4m3fn:
        pytest.skip("Triton's interpreter converts some values just below a power of two to float8 an octave low")
    x = (torch.randn(2, 3, 5, 128, device=device) * torch.rand(2, 3, 5, 1, device=device) * 20).to(x_dtype)
    x[0, 1, 2] = 0  # an all-zero row: scale at its floor, values 0
    x[1, 0, 0, :4] = torch.tensor([0.5, 1.5, -2.5, 127.0])  # ties (int8 rounds them to even), the range's end
    positions = torch.tensor([[3, 4, 5, 6, 7], [0, 8, 2, 9, 1]], device=device)
    ours = stored_by(triton_store_quantized, x, positions, dtype, 10)
    expected = stored_by(scattered, x, positions, dtype, 10)
    assert torch.equal(ours[1], expected[1])
    assert torch.equal(ours[0].float(), expected[0].float())
