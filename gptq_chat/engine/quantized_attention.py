"""Attention over an 8-bit (int8 or float8_e4m3fn) KV cache, read directly without an fp16 copy.

An 8-bit cache with one scale per token per kv head halves the bytes per token of context. Decode
attention is memory-bound, so reading the 8-bit tiles straight into registers (dequantizing there for
free: the K scale multiplies the scores, the V scale the probabilities) keeps it memory-bound on half the
bytes, instead of first writing and re-reading an fp16 copy of the cache window.

Shapes: q ``[B, H, T, D]``; k, v ``[B, KV, L, D]`` 8-bit; k_scale, v_scale ``[B, KV, L]``; positions
``[B, T]`` (query t of row b sees keys ``j <= positions[b, t]``). H is a multiple of KV (grouped-query
attention: query head h reads kv head ``h // (H // KV)``). The output is ``[B, H, T, D]`` in q's dtype.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gptq_chat.engine.devices import sm_count, triton_kernels

QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}

BLOCK_N = 64  # keys per tile
MAX_SPLITS = 64  # split-K pieces per (sequence, kv head, query block)
PROGRAMS_PER_SM = 3  # aim for about this many programs per SM before splitting the key range
MIN_SPLIT_TILES = 8  # keys per split at least 8 tiles: a short window is not worth a second (combining) launch


def quantize_kv(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-token-per-head quantization over the last dimension: ``(stored, scale)``.

    ``stored.float() * scale`` approximates x; scale has x's shape without its last dimension, in x's dtype.
    """
    qmax = QMAX[dtype]
    absmax = x.abs().amax(dim=-1, keepdim=True).float()
    # Rounded to x's dtype first, so that stored * scale uses exactly the scale that produced stored.
    scale = (absmax / qmax).to(x.dtype).clamp_min(torch.finfo(x.dtype).tiny)
    scaled = (x.float() / scale.float()).clamp(-qmax, qmax)
    stored = scaled.round().to(dtype) if dtype == torch.int8 else scaled.to(dtype)
    return stored, scale.squeeze(-1)


def store_quantized(x: torch.Tensor, positions: torch.Tensor, stored: torch.Tensor, scale: torch.Tensor) -> None:
    """Quantize new K or V ``x [B, KV, T, D]`` (`quantize_kv`) into cache rows ``stored [B, KV, L, D]`` and
    ``scale [B, KV, L]`` at ``positions [B, T]``: one Triton launch on the GPU (a decode step writes K and V of
    every layer: eager torch would be ~10 launches each), plain torch elsewhere."""
    if x.is_cuda and _triton() is not None:
        triton_store_quantized(x, positions, stored, scale)
        return
    values, scales = quantize_kv(x, stored.dtype)
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(-1)
    stored[rows, :, positions] = values.transpose(1, 2)
    scale[rows, :, positions] = scales.transpose(1, 2)


def triton_store_quantized(x: torch.Tensor, positions: torch.Tensor, stored: torch.Tensor, scale: torch.Tensor) -> None:
    """`store_quantized` as one Triton kernel: a program per (sequence, token, kv head)."""
    kernels = _triton()
    if kernels is None:
        raise RuntimeError("triton is not installed")
    batch, heads, steps, dim = x.shape
    kernels[2][(batch * steps, heads)](
        x, positions, stored, scale, *x.stride(), *positions.stride(), *stored.stride(), *scale.stride(), steps, dim,
        QMAX=QMAX[stored.dtype], TINY=torch.finfo(scale.dtype).tiny, ROUND=stored.dtype == torch.int8,
        BLOCK_D=max(16, _next_pow2(dim)), num_warps=1,
    )  # fmt: skip


def dequantized_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    k_scale: torch.Tensor,
    v: torch.Tensor,
    v_scale: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Reference: dequantize the cache to float32, mask keys beyond each query's position, softmax."""
    batch, heads, steps, dim = q.shape
    kv_heads, length = k.shape[1], k.shape[2]
    keys = k.float() * k_scale.float().unsqueeze(-1)
    values = v.float() * v_scale.float().unsqueeze(-1)
    grouped = q.float().reshape(batch, kv_heads, (heads // kv_heads) * steps, dim)  # [B, KV, groups*T, D]
    scores = (grouped @ keys.transpose(-1, -2)).view(batch, heads, steps, length) * dim**-0.5
    visible = torch.arange(length, device=q.device) <= positions.unsqueeze(-1)  # [B, T, L]
    scores = scores.masked_fill(~visible.unsqueeze(1), float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(batch, kv_heads, -1, length)
    return (probs @ values).view(batch, heads, steps, dim).to(q.dtype)


def _build_kernels() -> Any:
    """Define the Triton kernels (only called once triton imports)."""
    import triton
    import triton.language as tl

    @triton.jit
    def attend_kernel(
        Q, K, KS, V, VS, POS, OUT, PACC, PM, PL,
        scale_log2,
        stride_qb, stride_qh, stride_qt, stride_qd,
        stride_kb, stride_kh, stride_kl, stride_kd,
        stride_ksb, stride_ksh, stride_ksl,
        stride_vb, stride_vh, stride_vl, stride_vd,
        stride_vsb, stride_vsh, stride_vsl,
        stride_pb, stride_pt,
        stride_ob, stride_oh, stride_ot, stride_od,
        KV, T, L, D, CHUNK,
        GROUPS: tl.constexpr, SPLITS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):  # fmt: skip
        """One (sequence, kv head) x block of (query position, head in group) rows x chunk of keys."""
        pid_bh = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_s = tl.program_id(2)
        b = (pid_bh // KV).to(tl.int64)
        kv = (pid_bh % KV).to(tl.int64)
        rows_total = GROUPS * T
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # row = t * GROUPS + g
        row_ok = rows < rows_total
        t = rows // GROUPS
        g = rows % GROUPS
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D

        q_ptrs = Q + b * stride_qb + (kv * GROUPS + g[:, None]) * stride_qh + t[:, None] * stride_qt
        q = tl.load(q_ptrs + d[None, :] * stride_qd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        pos = tl.load(POS + b * stride_pb + t * stride_pt, mask=row_ok, other=-1)

        # Keys of this split, cut at the block's last visible key (a bound read from memory: graph-safe).
        lo = pid_s * CHUNK
        hi = tl.minimum(tl.minimum(lo + CHUNK, L), tl.max(pos).to(tl.int32) + 1)

        k_base = K + b * stride_kb + kv * stride_kh
        v_base = V + b * stride_vb + kv * stride_vh
        ks_base = KS + b * stride_ksb + kv * stride_ksh
        vs_base = VS + b * stride_vsb + kv * stride_vsh

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            n_ok = n < hi
            kd_ok = n_ok[:, None] & d_ok[None, :]
            k = tl.load(k_base + n[:, None] * stride_kl + d[None, :] * stride_kd, mask=kd_ok, other=0.0)
            k_scale = tl.load(ks_base + n * stride_ksl, mask=n_ok, other=0.0).to(tl.float32)
            s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION)
            s = s * (k_scale * scale_log2)[None, :]
            s = tl.where(n_ok[None, :] & (n[None, :] <= pos[:, None]), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all masked so far: avoid -inf - -inf
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + n[:, None] * stride_vl + d[None, :] * stride_vd, mask=kd_ok, other=0.0)
            v_scale = tl.load(vs_base + n * stride_vsl, mask=n_ok, other=0.0).to(tl.float32)
            pv = (p * v_scale[None, :]).to(q.dtype)
            acc = acc * alpha[:, None] + tl.dot(pv, v.to(q.dtype), input_precision=DOT_PRECISION)
            m_i = m_new

        if SPLITS == 1:
            out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
            o_ptrs = OUT + b * stride_ob + (kv * GROUPS + g[:, None]) * stride_oh + t[:, None] * stride_ot
            od_ok = row_ok[:, None] & d_ok[None, :]
            tl.store(o_ptrs + d[None, :] * stride_od, out.to(OUT.dtype.element_ty), mask=od_ok)
        else:
            part = (pid_bh.to(tl.int64) * SPLITS + pid_s) * rows_total + rows  # [B*KV, SPLITS, rows] scratch
            tl.store(PM + part, m_i, mask=row_ok)
            tl.store(PL + part, l_i, mask=row_ok)
            tl.store(PACC + part[:, None] * D + d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])

    @triton.jit
    def combine_kernel(
        PACC, PM, PL, OUT,
        stride_ob, stride_oh, stride_ot, stride_od,
        KV, T, D,
        GROUPS: tl.constexpr, SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """Merge the splits' partial (acc, max, sum) of one (sequence, kv head, row) into the output."""
        pid = tl.program_id(0).to(tl.int64)
        rows_total = GROUPS * T
        bh = pid // rows_total
        row = pid % rows_total
        b = bh // KV
        kv = bh % KV
        t = row // GROUPS
        g = row % GROUPS
        s = tl.arange(0, BLOCK_S)
        s_ok = s < SPLITS
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D
        part = (bh * SPLITS + s) * rows_total + row
        m = tl.load(PM + part, mask=s_ok, other=float("-inf"))
        sums = tl.load(PL + part, mask=s_ok, other=0.0)
        m_max = tl.max(m, 0)
        w = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # empty splits weigh 0
        denom = tl.sum(w * sums, 0)
        acc = tl.load(PACC + part[:, None] * D + d[None, :], mask=s_ok[:, None] & d_ok[None, :], other=0.0)
        out = tl.sum(acc * w[:, None], 0) / tl.where(denom == 0.0, 1.0, denom)
        o_ptr = OUT + b * stride_ob + (kv * GROUPS + g) * stride_oh + t * stride_ot
        tl.store(o_ptr + d * stride_od, out.to(OUT.dtype.element_ty), mask=d_ok)

    @triton.jit
    def store_kernel(
        X, POS, OUT, SCALE,
        stride_xb, stride_xh, stride_xt, stride_xd,
        stride_pb, stride_pt,
        stride_ob, stride_oh, stride_ol, stride_od,
        stride_sb, stride_sh, stride_sl,
        T, D,
        QMAX: tl.constexpr, TINY: tl.constexpr, ROUND: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """Quantize one (sequence, token, kv head) row of new K or V and write it and its scale at its position:
        `quantize_kv` and the cache write in one launch."""
        pid = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1).to(tl.int64)
        b = pid // T
        t = pid % T
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D
        x = tl.load(X + b * stride_xb + h * stride_xh + t * stride_xt + d * stride_xd, mask=d_ok, other=0.0)
        x = x.to(tl.float32)
        stored_scale = (tl.max(tl.abs(x), 0) / QMAX).to(SCALE.dtype.element_ty)  # rounded as it is kept
        scale = tl.maximum(stored_scale.to(tl.float32), TINY)
        scaled = tl.minimum(tl.maximum(x / scale, -QMAX), QMAX)
        if ROUND:  # to nearest, ties to even, as torch.round: the fp32 add itself rounds (|scaled| <= 127)
            scaled = (scaled + 12582912.0) - 12582912.0
        position = tl.load(POS + b * stride_pb + t * stride_pt)
        out = OUT + b * stride_ob + h * stride_oh + position * stride_ol
        tl.store(out + d * stride_od, scaled.to(OUT.dtype.element_ty), mask=d_ok)
        tl.store(SCALE + b * stride_sb + h * stride_sh + position * stride_sl, scale.to(SCALE.dtype.element_ty))

    return attend_kernel, combine_kernel, store_kernel


def _next_pow2(n: int) -> int:
    """Smallest power of two >= n."""
    return 1 << max(n - 1, 0).bit_length()


def _block_m(rows: int) -> int:
    """Query rows per program: at least 16 (tl.dot), at most 64."""
    return 16 if rows <= 16 else 32 if rows <= 32 else 64


def choose_splits(programs: int, length: int, sms: int) -> tuple[int, int]:
    """``(splits, chunk)``: split the key range only while programs are short of ~PROGRAMS_PER_SM per SM.

    programs counts (sequence, kv head, query block) programs. Each split covers ``chunk`` keys, a multiple
    of BLOCK_N. A pure function of shapes, so fixed per call shape (CUDA graphs).
    """
    tiles = math.ceil(length / BLOCK_N)
    target = PROGRAMS_PER_SM * sms
    wanted = 1 if programs * 2 >= target else math.ceil(target / programs)
    return split_keys(length, max(1, min(wanted, tiles // MIN_SPLIT_TILES, MAX_SPLITS)))


def split_keys(length: int, splits: int) -> tuple[int, int]:
    """``(splits, chunk)`` for about `splits` pieces of `length` keys, each a whole number of BLOCK_N tiles (the
    last may be short; fewer pieces where the tiles do not spread that far)."""
    chunk = math.ceil(math.ceil(length / BLOCK_N) / splits) * BLOCK_N
    return math.ceil(length / chunk), chunk


def triton_quantized_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    k_scale: torch.Tensor,
    v: torch.Tensor,
    v_scale: torch.Tensor,
    positions: torch.Tensor,
    *,
    splits: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Flash-decoding attention straight from the 8-bit cache; same contract as `dequantized_attention`.

    ``splits``, ``num_warps`` and ``num_stages`` override what is chosen from the shapes (tests, tuning). No host
    syncs and only shape-dependent allocations: capturable in a CUDA graph.
    """
    kernels = _triton()
    if kernels is None:
        raise RuntimeError("triton is not installed")
    attend_kernel, combine_kernel, _ = kernels
    batch, heads, steps, dim = q.shape
    kv_heads, length = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    rows = groups * steps
    block_m = _block_m(rows)
    block_d = max(16, _next_pow2(dim))
    m_blocks = math.ceil(rows / block_m)
    programs = batch * kv_heads * m_blocks
    if splits is None:
        splits, chunk = choose_splits(programs, length, sm_count(q.device))
    else:
        splits, chunk = split_keys(length, splits)

    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if splits > 1:
        part_acc = torch.empty(batch * kv_heads, splits, rows, dim, device=q.device, dtype=torch.float32)
        part_m = torch.empty(batch * kv_heads, splits, rows, device=q.device, dtype=torch.float32)
        part_l = torch.empty_like(part_m)
    else:
        part_acc = part_m = part_l = out  # unused
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    num_warps = num_warps or (4 if block_m * block_d <= 64 * 64 else 8)
    tuning = {"num_stages": num_stages} if num_stages else {}
    attend_kernel[(batch * kv_heads, m_blocks, splits)](
        q, k, k_scale, v, v_scale, positions, out, part_acc, part_m, part_l,
        dim**-0.5 * math.log2(math.e),
        *q.stride(), *k.stride(), *k_scale.stride(), *v.stride(), *v_scale.stride(), *positions.stride(), *out.stride(),
        kv_heads, steps, length, dim, chunk,
        GROUPS=groups, SPLITS=splits, BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_D=block_d,
        DOT_PRECISION=precision, num_warps=num_warps, **tuning,
    )  # fmt: skip
    if splits > 1:
        combine_kernel[(batch * kv_heads * rows,)](
            part_acc, part_m, part_l, out, *out.stride(), kv_heads, steps, dim,
            GROUPS=groups, SPLITS=splits, BLOCK_S=_next_pow2(splits), BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
    return out


def attend_quantized(
    q: torch.Tensor,
    k: torch.Tensor,
    k_scale: torch.Tensor,
    v: torch.Tensor,
    v_scale: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """The Triton kernel for CUDA tensors where triton imports, the plain-torch reference otherwise."""
    if q.is_cuda and _triton() is not None:
        return triton_quantized_attention(q, k, k_scale, v, v_scale, positions)
    return dequantized_attention(q, k, k_scale, v, v_scale, positions)


_triton = triton_kernels(_build_kernels)
