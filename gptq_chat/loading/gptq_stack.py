"""Which GPTQ stack is installed, and what `from_pretrained` must be given on it.

Two stacks load the same Qwen GPTQ-Int4 checkpoints:

- modern: transformers 5 + optimum 2 + gptqmodel (requirements.txt; what CI and the GPU machines run);
- legacy: the tutorial's torch 2.1.1+cu118 + transformers 4.37 + optimum 1.17 + auto-gptq 0.7.1
  (env/legacy-cu118/), for machines that must stay on CUDA 11.8.

They differ in how a kernel is asked for and in the name of the dtype argument; the page and the
commands are the same on both. The legacy stack runs through optimum 1.17's GPTQ quantizer, which
offers auto-gptq's ExLlama v1/v2 kernels and its plain CUDA kernel only (transformers 4.37's
`GPTQConfig` has no `backend` and no Marlin switch), so a Marlin request becomes ExLlamaV2 there.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any, Protocol

MODERN = "modern"
LEGACY = "legacy"
STACK_LABELS = {
    MODERN: "transformers 5 + optimum + gptqmodel",
    LEGACY: "transformers 4 + optimum 1.x + auto-gptq (legacy, env/legacy-cu118)",
}

# Our kernel names (kernels.py) -> transformers 4.37 GPTQConfig arguments. exllama_config's version 2 is
# transformers' ExllamaVersion.TWO (an int enum); use_exllama=False selects auto-gptq's CUDA kernel
# (qlinear_cuda_old), which also has a plain torch fallback.
LEGACY_KERNEL_ARGS: dict[str, dict[str, Any]] = {
    "marlin": {"use_exllama": True, "exllama_config": {"version": 2}},
    "exllama_v2": {"use_exllama": True, "exllama_config": {"version": 2}},
    "triton": {"use_exllama": False},
    "torch": {"use_exllama": False},
    "torch_aten": {"use_exllama": False},
}
LEGACY_KERNEL_NAMES = {"marlin": "exllama_v2 (auto-gptq; Marlin is not reachable through optimum 1.17)"}


class KernelRequest(Protocol):
    """What `kernels.KernelChoice` offers: our name for the kernel, and gptqmodel's."""

    backend: str

    @property
    def gptqmodel_backend(self) -> str: ...


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def major(version: str | None) -> int:
    """The leading number of a version string (0 when unknown)."""
    head = (version or "0").split(".")[0]
    return int(head) if head.isdigit() else 0


def stack_for(transformers_version: str | None, auto_gptq_version: str | None) -> str:
    """transformers 4.x with auto-gptq is the legacy stack; anything else is meant to be the modern one."""
    return LEGACY if 0 < major(transformers_version) < 5 and auto_gptq_version else MODERN


def installed_stack() -> str:
    return stack_for(installed_version("transformers"), installed_version("auto-gptq"))


def gptq_config_kwargs(bits: int, kernel: KernelRequest, stack: str) -> dict[str, Any]:
    """The arguments of `transformers.GPTQConfig` that load a checkpoint with `kernel` on `stack`."""
    if stack == LEGACY:
        return {"bits": bits, **LEGACY_KERNEL_ARGS[kernel.backend]}
    return {"bits": bits, "backend": kernel.gptqmodel_backend}


DTYPE_ARGUMENT = {MODERN: "dtype", LEGACY: "torch_dtype"}  # transformers 5 renamed `torch_dtype` to `dtype`


def from_pretrained_kwargs(bits: int, kernel: KernelRequest, dtype: Any, stack: str | None = None) -> dict[str, Any]:
    """`quantization_config` and the dtype, under the name this transformers takes."""
    from transformers import GPTQConfig

    stack = stack or installed_stack()
    return {"quantization_config": GPTQConfig(**gptq_config_kwargs(bits, kernel, stack)), DTYPE_ARGUMENT[stack]: dtype}


def kernel_label(kernel: str, stack: str) -> str:
    """The kernel that really runs for our `kernel` name on `stack`."""
    return LEGACY_KERNEL_NAMES.get(kernel, kernel) if stack == LEGACY else kernel


def is_quantized_module(module: Any) -> bool:
    """A GPTQ linear layer of either stack (gptqmodel's BaseQuantLinear, or auto-gptq's QuantLinear classes)."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("auto_gptq.nn_modules.qlinear") and cls.__name__ == "QuantLinear":
            return True
        if cls.__module__.startswith("gptqmodel.") and cls.__name__ == "BaseQuantLinear":
            return True
    return False


def fast_engine_available() -> bool:
    """The fast engine builds its layers from gptqmodel's kernels; the legacy stack has none."""
    return importlib.util.find_spec("gptqmodel") is not None
