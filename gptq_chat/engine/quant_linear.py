"""GPTQ linear layers built straight from checkpoint tensors, with projections that share an input fused.

q/k/v read the same activations, and so do gate/up: concatenated along the output dimension in
GPTQ layout (before any kernel repacks them), each group becomes one wide GEMM. At batch 1 the
narrow 4096x4096 GEMMs reach only ~30 % of the memory bandwidth and the wide ones 50-65 %
(docs/benchmarks.md), and there are fewer launches per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gptq_chat.engine.shape import GPTQSettings

GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")
OURS = "int4"  # the kernel of engine/int4_linear.py: a measurement variant (bench.py --variants sdpa-int4)


def fuse_gptq_tensors(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate several GPTQ linears that share an input into one, along the output dimension."""
    if len(parts) == 1:
        return dict(parts[0])
    first = parts[0]["g_idx"]
    if any(not torch.equal(p["g_idx"], first) for p in parts[1:]):
        raise ValueError("cannot fuse projections with different act-order permutations")
    fused = {name: torch.cat([p[name] for p in parts], dim=1) for name in ("qweight", "qzeros", "scales")}
    fused["g_idx"] = first
    if "bias" in parts[0]:
        fused["bias"] = torch.cat([p["bias"] for p in parts])
    return fused


def columns_of(parts: dict[str, torch.Tensor], first: int, end: int, bits: int) -> dict[str, torch.Tensor]:
    """Output features first..end-1 of a GPTQ linear (tensor parallelism: q/k/v heads, gate/up rows of the MLP).

    GPTQ packs 32 // bits zero points per int32 along the output dimension, so the bounds must be multiples of it.
    """
    pack = 32 // bits
    sliced = {
        "qweight": parts["qweight"][:, first:end],
        "qzeros": parts["qzeros"][:, first // pack : end // pack],
        "scales": parts["scales"][:, first:end],
        "g_idx": parts["g_idx"],
    }
    if "bias" in parts:
        sliced["bias"] = parts["bias"][first:end]
    return {name: value.contiguous() for name, value in sliced.items()}


def rows_of(
    parts: dict[str, torch.Tensor], first: int, end: int, settings: GPTQSettings, keep_bias: bool
) -> dict[str, torch.Tensor]:
    """Input features first..end-1 of a GPTQ linear (tensor parallelism: o_proj, down_proj), whole groups only.

    Each card's partial products are summed afterwards, so only one of them may add the bias. Without
    act-order, input feature i belongs to group i // group_size: the slice's groups are renumbered from 0.
    """
    pack = 32 // settings.bits
    group = settings.group_size if settings.group_size > 0 else None
    sliced = {
        "qweight": parts["qweight"][first // pack : end // pack],
        "qzeros": parts["qzeros"][first // group : end // group] if group else parts["qzeros"],
        "scales": parts["scales"][first // group : end // group] if group else parts["scales"],
        "g_idx": parts["g_idx"][first:end] - (first // group if group else 0),
    }
    if keep_bias and "bias" in parts:
        sliced["bias"] = parts["bias"]
    return {name: value.contiguous() for name, value in sliced.items()}


def kernel_class(backend: str) -> type:
    """The gptqmodel QuantLinear class behind one of our kernel names (see kernels.py)."""
    if backend == "marlin":
        from gptqmodel.nn_modules.qlinear.marlin import MarlinLinear

        return MarlinLinear
    if backend == "torch_aten":
        from gptqmodel.nn_modules.qlinear.torch_aten_kernel import TorchAtenLinear

        return TorchAtenLinear
    if backend == "torch":
        from gptqmodel.nn_modules.qlinear.torch import TorchLinear

        return TorchLinear
    raise ValueError(f"the fast engine does not drive the {backend} kernel")


def build_quant_linear(
    tensors: dict[str, torch.Tensor], settings: GPTQSettings, backend: str, device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """One gptqmodel QuantLinear on `device`, loaded from GPTQ v1 tensors and made ready to run; or, for `OURS`, the
    linear of engine/int4_linear.py on the same tensors."""
    from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module

    if backend == OURS:
        from gptq_chat.engine.int4_linear import Int4Linear

        if settings.desc_act or settings.bits != 4:
            raise ValueError(f"the {OURS} kernel reads 4-bit checkpoints without act-order only")
        return Int4Linear(tensors, settings.group_size, device, dtype)

    cls = kernel_class(backend)
    in_features = tensors["g_idx"].shape[0]
    out_features = tensors["scales"].shape[1]
    module = cls(
        bits=settings.bits,
        group_size=settings.group_size,
        sym=settings.sym,
        desc_act=settings.desc_act,
        in_features=in_features,
        out_features=out_features,
        bias="bias" in tensors,
        register_buffers=True,
        dtype=dtype,
        backend=cls.SUPPORTS_BACKENDS[0],
    )
    state = {name: tensors[name] for name in GPTQ_PARTS}
    if "bias" in tensors:
        state["bias"] = tensors["bias"].to(dtype)
    state["scales"] = state["scales"].to(dtype)
    for name, value in state.items():
        current = getattr(module, name)
        if isinstance(current, nn.Parameter):
            setattr(module, name, nn.Parameter(value.to(device), requires_grad=False))
        else:
            setattr(module, name, value.to(device))
    module.to(device)
    if getattr(cls, "REQUIRES_FORMAT_V2", False):
        convert_gptq_v1_to_v2_format_module(module, bits=settings.bits, pack_dtype=torch.int32)
    module.post_init()
    module.eval()
    return module
