"""Our int4 kernels (engine/int4_linear.py): the torch reference reads GPTQ's layout as gptqmodel does; the GEMV
equals it for 1 to 16 rows, whole and partial column blocks, one or several input splits; the dequantizing kernel
gives its matrix; a linear sends decode rows to the one and prompts to the other. Without CUDA the kernels run only
under TRITON_INTERPRET=1 (small shapes); on a GPU with the 7B projections and a whole engine too."""

from __future__ import annotations

import os

import pytest
import torch

from gptq_chat.engine import int4_linear
from gptq_chat.engine.int4_linear import (
    MAX_ROWS,
    Int4Linear,
    dequantize_int4,
    dequantized_matmul,
    int4_gemv,
    unpack_int4,
)
from gptq_chat.engine.quant_linear import build_quant_linear
from gptq_chat.engine.shape import GPTQSettings

GROUP = 128


def packed_along_columns(nibbles: torch.Tensor) -> torch.Tensor:
    """Eight 4-bit values per int32 along the last dimension, lowest nibble first (GPTQ's qzeros)."""
    words = torch.zeros(nibbles.shape[0], nibbles.shape[1] // 8, dtype=torch.int64)
    for j in range(8):
        words |= nibbles[:, j::8].long() << (4 * j)
    return (words - (words >= 2**31).long() * 2**32).to(torch.int32)


def gptq_tensors(depth: int, columns: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random GPTQ v1 tensors of one linear: any weight nibble; any zero point a v1 checkpoint can store (zero - 1,
    so 0..14: gptqmodel's v1-to-v2 conversion adds one to the whole word and would carry out of a 15); scales of
    a trained model's size."""
    generator = torch.Generator().manual_seed(seed)
    groups = depth // GROUP
    zeros = torch.randint(0, 15, (groups, columns), generator=generator)
    return {
        "qweight": torch.randint(-(2**31), 2**31 - 1, (depth // 8, columns), generator=generator, dtype=torch.int32),
        "qzeros": packed_along_columns(zeros),
        "scales": (torch.rand(groups, columns, generator=generator) * 0.02 + 0.002).half(),
        "g_idx": torch.arange(depth, dtype=torch.int32) // GROUP,
    }


def test_the_reference_reads_gptqs_layout_as_gptqmodel_does() -> None:
    """Nibble order along the input dimension, zero points stored one less (v1), a scale per group and column:
    gptqmodel's own torch kernel, built from the same tensors, computes the same products."""
    tensors = gptq_tensors(256, 96)
    settings = GPTQSettings(bits=4, group_size=GROUP, sym=False, desc_act=False)
    # A copy: on the CPU gptqmodel's v1-to-v2 conversion rewrites the zero points it was given in place.
    theirs = build_quant_linear(
        {k: v.clone() for k, v in tensors.items()}, settings, "torch", torch.device("cpu"), torch.bfloat16
    )
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(1)).bfloat16()
    ours = dequantized_matmul(x.float(), tensors["qweight"], tensors["qzeros"], tensors["scales"], GROUP)
    expected = theirs(x).float()
    assert (ours - expected).abs().max() <= 1e-2 * expected.abs().max()  # bf16 keeps about 3 significant digits


def kernel_device() -> torch.device:
    """Where the Triton kernel runs: the CPU under TRITON_INTERPRET=1, else CUDA; skip otherwise."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not interpreted and not torch.cuda.is_available():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    pytest.importorskip("triton")
    return torch.device("cpu" if interpreted else "cuda")


def check(rows: int, depth: int, columns: int, split_k: int | None, seed: int = 0) -> None:
    """The kernel against the reference, within 1e-3 of the output's largest magnitude (both round to fp16)."""
    device = kernel_device()
    tensors = {name: value.to(device) for name, value in gptq_tensors(depth, columns, seed).items()}
    x = torch.randn(rows, depth, generator=torch.Generator().manual_seed(seed + 1)).half().to(device)
    parts = tensors["qweight"], tensors["qzeros"], tensors["scales"]
    out = int4_gemv(x, *parts, GROUP, split_k=split_k)
    expected = dequantized_matmul(x.float(), *parts, GROUP)
    assert out.shape == (rows, columns) and out.dtype == x.dtype
    error = (out.float() - expected).abs().max().item()
    assert error <= 1e-3 * expected.abs().max().item(), error


@pytest.mark.parametrize(
    ("rows", "depth", "columns", "split_k"),
    [
        (1, 256, 64, 1),  # one row, one column block, the input whole
        (3, 512, 72, 2),  # a partial second column block, two splits
        (16, 512, 128, 4),  # the most rows, a group per split
        (5, 384, 64, None),  # the split chosen from the shapes (three groups: three splits at most)
    ],
)
def test_the_kernel_equals_the_reference(rows: int, depth: int, columns: int, split_k: int | None) -> None:
    check(rows, depth, columns, split_k)


@pytest.mark.parametrize(("depth", "columns"), [(4096, 12288), (4096, 4096), (4096, 22016), (11008, 4096)])
def test_the_kernel_on_the_7b_projections(depth: int, columns: int) -> None:
    """Qwen1.5-7B's fused q/k/v, o, fused gate/up and down projections, at 1 and 16 rows (GPU only)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for rows in (1, MAX_ROWS):
        check(rows, depth, columns, None)


def test_the_dequantizing_kernel_gives_the_references_matrix() -> None:
    device = kernel_device()
    tensors = {name: value.to(device) for name, value in gptq_tensors(384, 72).items()}
    matrix = dequantize_int4(tensors["qweight"], tensors["qzeros"], tensors["scales"], GROUP)
    groups = torch.arange(384, device=device) // GROUP
    zeros = unpack_int4(tensors["qzeros"], 1).float() + 1
    expected = (unpack_int4(tensors["qweight"], 0).float() - zeros[groups]) * tensors["scales"].float()[groups]
    assert matrix.shape == (384, 72) and matrix.dtype == torch.float16
    torch.testing.assert_close(matrix, expected.half(), rtol=0, atol=0)  # one rounding to fp16, the same


def test_the_linear_sends_decode_rows_to_the_gemv_and_prompts_to_the_dequantized_product() -> None:
    device = kernel_device()
    tensors = gptq_tensors(256, 64)
    tensors["bias"] = torch.randn(64).half()
    linear = Int4Linear(tensors, GROUP, device, torch.float16)
    kernels = int4_linear._triton()
    launched: list[str] = []
    for name in ("gemv_kernel", "dequantize_kernel"):
        kernel = getattr(kernels, name)
        original = kernel.run
        kernel.run = lambda *a, _name=name, _run=original, **k: (launched.append(_name), _run(*a, **k))[1]
    try:
        for rows, kernel in ((1, "gemv_kernel"), (MAX_ROWS, "gemv_kernel"), (MAX_ROWS + 1, "dequantize_kernel")):
            x = torch.randn(1, rows, 256, device=device).half()
            launched.clear()
            out = linear(x)
            assert launched == [kernel] and out.shape == (1, rows, 64)
            expected = dequantized_matmul(x.float(), *(linear.qweight, linear.qzeros, linear.scales), GROUP)
            expected = expected + tensors["bias"].to(device).float()
            assert (out.float() - expected).abs().max() <= 2e-3 * expected.abs().max()
    finally:
        for name in ("gemv_kernel", "dequantize_kernel"):
            del getattr(kernels, name).run


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_an_engine_on_our_int4_kernels_gives_marlins_logits(qwen_shaped) -> None:
    """bench.py's `sdpa-int4` variant: Qwen1.5-0.5B's shapes, decode steps in captured graphs through the GEMV,
    the prompt through the dequantized product, teacher-forced logits against the Marlin engine's."""
    from gptq_chat.engine.fast_engine import load_engine
    from tests.support.teacher_forcing import PROMPT, assert_logits_agree, forced_tokens, teacher_forced

    tokens = forced_tokens().tolist()
    logits = {}
    for backend in ("marlin", "int4"):
        engine = load_engine(qwen_shaped, backend, torch.device("cuda"), 1024)
        logits[backend] = teacher_forced(engine, [tokens], [PROMPT])[0].cpu()
        del engine
    assert_logits_agree(logits["int4"], logits["marlin"], "our int4 kernels vs Marlin")
