"""GPTQ-Int4 linears on kernels of our own, in the checkpoint's own layout: a GEMV for decode steps, a dequantize
then cuBLAS for prompts (`Int4Linear`, the kernel named "int4"; bench.py --variants sdpa,sdpa-int4 measures it
against Marlin).

Decode: a GEMV at 1 to 16 rows.

At batch 1 a decode step is a read of every weight; Marlin reaches about 48 % of an H100's bandwidth on the 7B
shape's projections (docs/benchmarks.md). This kernel is the candidate to replace it for decode: each program
reads a [group_size x BLOCK_N] tile of packed int4 weights (GPTQ packs eight input rows into an int32 along the
input dimension, so a tile's words are contiguous along the output dimension: wide, coalesced loads), unpacks and
re-centres it on the group's zero point in registers, multiplies it with the rows' activations on the tensor cores
(`tl.dot`, rows padded to 16), and scales the group's partial sum once. The input dimension is split over
`split_k` programs per column block so that a narrow projection still fills the card; their partial sums meet
in an fp32 output by atomic adds.

Shapes: x ``[M, K]`` (M <= MAX_ROWS); qweight ``[K / 8, N]`` int32; qzeros ``[K / group, N / 8]`` int32 (GPTQ v1:
the stored zero is one less than the real one); scales ``[K / group, N]``. No act-order (desc_act) checkpoints.
`dequantized_matmul` is the reference: the same weights dequantized to a matrix, in torch.

Prompts: a prompt's GEMM is compute-bound, and fp16 tensor-core GEMMs (cuBLAS) reach far more than a kernel that
dequantizes as it multiplies; so a prompt's rows meet the projection's weights dequantized first (`dequantize_int4`,
one Triton pass into a temporary fp16 matrix that lives for that one product).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from gptq_chat.engine.devices import sm_count, triton_kernels

PACK = 8  # int4 values per int32
MAX_ROWS = 16  # rows this kernel serves (a decode step of up to 16 slots); more: Marlin
BLOCK_N = 64  # output columns per program
TARGET_PROGRAMS_PER_SM = 4  # split the input dimension until about this many programs per SM


def unpack_int4(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """Eight 4-bit values out of each int32 along `dim` (lowest nibble first), as int32 0..15."""
    shifts = torch.arange(0, 32, 4, device=packed.device, dtype=torch.int32)
    nibbles = (packed.unsqueeze(dim + 1) >> shifts.view([-1] + [1] * (packed.dim() - dim - 1))) & 0xF
    return nibbles.flatten(dim, dim + 1)


def dequantized_matmul(
    x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> torch.Tensor:
    """x @ W with W dequantized in fp32 from the GPTQ v1 tensors: the reference the kernel is checked against."""
    weights = unpack_int4(qweight, 0).float()  # [K, N]
    zeros = unpack_int4(qzeros, 1).float() + 1  # [G, N]: v1 stores zero - 1
    groups = torch.arange(weights.shape[0], device=x.device) // group_size
    dequantized = (weights - zeros[groups]) * scales.float()[groups]
    return (x.float() @ dequantized).to(x.dtype)


def choose_split_k(columns: int, groups: int, sms: int) -> int:
    """How many programs share one column block's input dimension (whole groups each): enough for about
    TARGET_PROGRAMS_PER_SM programs per SM, never more than there are groups. A function of shapes alone, so fixed
    per captured graph."""
    blocks = math.ceil(columns / BLOCK_N)
    wanted = max(1, math.ceil(TARGET_PROGRAMS_PER_SM * sms / blocks))
    split = min(wanted, groups)
    while groups % split:  # whole groups per program
        split -= 1
    return split


def int4_gemv(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    *,
    split_k: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """x @ W for 1..MAX_ROWS rows of x ``[M, K]``, W the GPTQ v1 int4 weights: ``[M, N]`` in x's dtype.

    `split_k`, `num_warps` and `num_stages` override the defaults (tests, tuning on a card). No host syncs, and
    allocations that depend on shapes only: capturable in a CUDA graph."""
    kernel = _triton()
    if kernel is None:
        raise RuntimeError("triton is not installed")
    rows, depth = x.shape
    columns = qweight.shape[1]
    if rows > MAX_ROWS:
        raise ValueError(f"int4_gemv serves up to {MAX_ROWS} rows, not {rows}")
    if depth % group_size or group_size % PACK or qweight.shape[0] * PACK != depth:
        raise ValueError(f"K={depth} must be whole groups of {group_size} (a multiple of {PACK}) and qweight's rows")
    groups = depth // group_size
    split = split_k or choose_split_k(columns, groups, sm_count(x.device))
    # One program per column block writes its result; several add theirs into fp32 (zeroed, then cast): two more
    # launches, worth it only where the column blocks alone leave the card idle.
    out = (
        torch.empty(rows, columns, device=x.device, dtype=x.dtype)
        if split == 1
        else x.new_zeros(rows, columns, dtype=torch.float32)
    )
    grid = (math.ceil(columns / BLOCK_N), split)
    kernel.gemv_kernel[grid](
        x, qweight, qzeros, scales, out,
        rows, columns, groups // split,
        x.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0), out.stride(0),
        GROUP=group_size, BLOCK_N=BLOCK_N, BLOCK_M=16, ADD=split > 1, num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out if split == 1 else out.to(x.dtype)


def dequantize_int4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """The GPTQ v1 weights as an fp16 (scales' dtype) matrix ``[K, N]``: one Triton program per group and column
    block."""
    kernel = _triton()
    if kernel is None:
        raise RuntimeError("triton is not installed")
    depth, columns = qweight.shape[0] * PACK, qweight.shape[1]
    out = torch.empty(depth, columns, device=qweight.device, dtype=scales.dtype)
    grid = (math.ceil(columns / BLOCK_N), depth // group_size)
    kernel.dequantize_kernel[grid](
        qweight, qzeros, scales, out, columns,
        qweight.stride(0), qzeros.stride(0), scales.stride(0), out.stride(0),
        GROUP=group_size, BLOCK_N=BLOCK_N,
    )  # fmt: skip
    return out


class Int4Linear(nn.Module):
    """A GPTQ v1 linear (4 bits, no act-order) on our kernels, its tensors as the checkpoint has them: decode rows
    (up to MAX_ROWS) through `int4_gemv`, more rows through `dequantize_int4` and a dense GEMM."""

    def __init__(self, tensors: dict[str, torch.Tensor], group_size: int, device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.group_size = group_size
        for name in ("qweight", "qzeros"):  # copies: another kernel may rewrite the tensors it is given in place
            self.register_buffer(name, tensors[name].to(device, copy=True).contiguous())
        self.register_buffer("scales", tensors["scales"].to(device, dtype, copy=True).contiguous())
        bias = tensors.get("bias")
        self.register_buffer("bias", None if bias is None else bias.to(device, dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] <= MAX_ROWS:
            out = int4_gemv(flat, self.qweight, self.qzeros, self.scales, self.group_size)
        else:
            out = flat @ dequantize_int4(self.qweight, self.qzeros, self.scales, self.group_size)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], out.shape[-1])


def _build_kernel() -> Any:
    """Define the Triton kernels (only called once triton imports)."""
    import triton
    import triton.language as tl

    @triton.jit
    def gemv_kernel(
        X, QW, QZ, S, OUT,
        rows, columns, groups_per_program,
        stride_x, stride_qw, stride_qz, stride_s, stride_out,
        GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, ADD: tl.constexpr,
    ):  # fmt: skip
        block, split = tl.program_id(0), tl.program_id(1)
        n = block * BLOCK_N + tl.arange(0, BLOCK_N)
        in_columns = n < columns
        m = tl.arange(0, BLOCK_M)
        in_rows = m < rows
        packed_rows = tl.arange(0, GROUP // 8)  # the int32 rows of one group
        shifts = (tl.arange(0, 8) * 4)[None, :, None]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        first = split * groups_per_program
        for g in range(first, first + groups_per_program):
            words = tl.load(
                QW + (g * (GROUP // 8) + packed_rows)[:, None] * stride_qw + n[None, :], mask=in_columns[None, :]
            )  # [GROUP / 8, BLOCK_N]
            nibbles = (words[:, None, :] >> shifts) & 0xF  # [GROUP / 8, 8, BLOCK_N]: input row 8r + j
            zero_word = tl.load(QZ + g * stride_qz + n // 8, mask=in_columns)
            zeros = ((zero_word >> ((n % 8) * 4)) & 0xF) + 1  # GPTQ v1 stores zero - 1
            centred = (tl.reshape(nibbles, (GROUP, BLOCK_N)) - zeros[None, :]).to(tl.float16)
            k = g * GROUP + tl.arange(0, GROUP)
            xs = tl.load(X + m[:, None] * stride_x + k[None, :], mask=in_rows[:, None], other=0.0).to(tl.float16)
            scale = tl.load(S + g * stride_s + n, mask=in_columns, other=0.0).to(tl.float32)
            acc += tl.dot(xs, centred) * scale[None, :]
        target = OUT + m[:, None] * stride_out + n[None, :]
        if ADD:
            tl.atomic_add(target, acc, mask=in_rows[:, None] & in_columns[None, :])
        else:
            tl.store(target, acc.to(OUT.dtype.element_ty), mask=in_rows[:, None] & in_columns[None, :])

    @triton.jit
    def dequantize_kernel(
        QW, QZ, S, OUT,
        columns,
        stride_qw, stride_qz, stride_s, stride_out,
        GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        block, g = tl.program_id(0), tl.program_id(1)
        n = block * BLOCK_N + tl.arange(0, BLOCK_N)
        in_columns = n < columns
        packed_rows = tl.arange(0, GROUP // 8)
        words = tl.load(
            QW + (g * (GROUP // 8) + packed_rows)[:, None] * stride_qw + n[None, :], mask=in_columns[None, :]
        )
        nibbles = (words[:, None, :] >> (tl.arange(0, 8) * 4)[None, :, None]) & 0xF
        zero_word = tl.load(QZ + g * stride_qz + n // 8, mask=in_columns)
        zeros = ((zero_word >> ((n % 8) * 4)) & 0xF) + 1
        scale = tl.load(S + g * stride_s + n, mask=in_columns, other=0.0).to(tl.float32)
        weights = (tl.reshape(nibbles, (GROUP, BLOCK_N)) - zeros[None, :]).to(tl.float32) * scale[None, :]
        k = g * GROUP + tl.arange(0, GROUP)
        tl.store(OUT + k[:, None] * stride_out + n[None, :], weights.to(OUT.dtype.element_ty), mask=in_columns[None, :])

    return SimpleNamespace(gemv_kernel=gemv_kernel, dequantize_kernel=dequantize_kernel)


_triton = triton_kernels(_build_kernel)
