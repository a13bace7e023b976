"""Which GPTQ kernel runs a checkpoint on this device.

gptqmodel's own AUTO choice picks Machete on Hopper, which downloads CUTLASS at first use and
fails offline; and it cannot explain its choice to a user. We choose from a short, ordered list
of kernels known to work offline, and say why.
"""

from __future__ import annotations

from dataclasses import dataclass

from gptq_chat.loading.checkpoint import CheckpointInfo

# Fastest first. Machete (Hopper) is left out on purpose: it fetches CUTLASS on first use.
CUDA_PREFERENCE = ("marlin", "exllama_v2", "triton", "torch")
CPU_PREFERENCE = ("torch_aten", "torch")
MARLIN_MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class KernelSpec:
    """What a kernel can run (mirrors the SUPPORTS_* tables in gptqmodel's QuantLinear classes)."""

    bits: tuple[int, ...]
    group_sizes: tuple[int, ...]
    asymmetric: bool
    min_capability: tuple[int, int] | None  # on CUDA; None: not a CUDA kernel
    cpu: bool = False
    gptqmodel_name: str = ""  # gptqmodel's BACKEND value, where it differs from ours


KERNELS: dict[str, KernelSpec] = {
    "marlin": KernelSpec((4, 8), (-1, 32, 64, 128), asymmetric=False, min_capability=MARLIN_MIN_CAPABILITY),
    "exllama_v2": KernelSpec((4,), (-1, 32, 64, 128), asymmetric=True, min_capability=(6, 0)),
    "triton": KernelSpec((2, 4, 8), (-1, 16, 32, 64, 128, 256, 512, 1024), asymmetric=True, min_capability=(6, 0)),
    "torch_aten": KernelSpec(
        (4,), (16, 32, 64, 128), asymmetric=True, min_capability=None, cpu=True, gptqmodel_name="gptq_torch_aten"
    ),
    "torch": KernelSpec(
        (2, 3, 4, 8), (-1, 16, 32, 64, 128, 256, 512, 1024), asymmetric=True, min_capability=(6, 0), cpu=True
    ),
}


@dataclass(frozen=True)
class KernelChoice:
    backend: str
    reason: str

    @property
    def gptqmodel_backend(self) -> str:
        """The name gptqmodel (and transformers' GPTQConfig) knows this kernel by."""
        return KERNELS[self.backend].gptqmodel_name or self.backend


class KernelError(ValueError):
    """No kernel can run this checkpoint here, or the one asked for cannot."""


def why_not(kernel: str, info: CheckpointInfo, capability: tuple[int, int] | None) -> str | None:
    """The reason `kernel` cannot run `info` on a device of `capability` (None: the CPU), or None if it can."""
    spec = KERNELS[kernel]
    if capability is None and not spec.cpu:
        return f"{kernel} needs a CUDA GPU"
    if capability is not None and spec.min_capability is None:
        return f"{kernel} runs on the CPU only"
    if capability is not None and capability < spec.min_capability:
        need = ".".join(map(str, spec.min_capability))
        return f"{kernel} needs compute capability {need}+, this GPU has {capability[0]}.{capability[1]}"
    if info.gptq.bits not in spec.bits:
        return f"{kernel} does not run {info.gptq.bits}-bit weights"
    if info.gptq.group_size not in spec.group_sizes:
        return f"{kernel} does not run group size {info.gptq.group_size}"
    if not info.gptq.sym and not spec.asymmetric:
        return f"{kernel} runs only symmetric quantization (this checkpoint has sym=false)"
    return None


def choose_kernel(info: CheckpointInfo, capability: tuple[int, int] | None, requested: str = "auto") -> KernelChoice:
    """The fastest kernel that runs `info` here; an explicit request wins if it can run at all."""
    if requested != "auto":
        if requested not in KERNELS:
            raise KernelError(f"Unknown GPTQ kernel '{requested}'. Choose one of: auto, {', '.join(KERNELS)}")
        problem = why_not(requested, info, capability)
        if problem:
            raise KernelError(f"Cannot use the requested kernel: {problem}. Use backend='auto' to pick one.")
        return KernelChoice(requested, "asked for explicitly")
    preference = CPU_PREFERENCE if capability is None else CUDA_PREFERENCE
    skipped = []
    for kernel in preference:
        problem = why_not(kernel, info, capability)
        if problem is None:
            where = "CPU" if capability is None else f"compute capability {capability[0]}.{capability[1]}"
            reason = f"fastest kernel for {info.gptq.bits}-bit, group {info.gptq.group_size} on {where}"
            if skipped:
                reason += f" ({'; '.join(skipped)})"
            return KernelChoice(kernel, reason)
        skipped.append(problem)
    raise KernelError(f"No GPTQ kernel can run {info.name} here: {'; '.join(skipped)}")
