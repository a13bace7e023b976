"""Load a GPTQ checkpoint once per process, on the best device and kernel, and describe the result.

Validation comes first (`checkpoint.py`), so a broken folder fails in milliseconds with a fix,
not minutes later with a traceback from deep inside transformers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoint import CheckpointInfo, find_checkpoint
from kernels import KernelChoice, choose_kernel

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

# A CPU has no VRAM to size the cache by; keep prompts short enough to stay responsive there.
CPU_CONTEXT_TOKENS = 4096
# Keep this much of the free VRAM after the weights for activations, the allocator and other apps.
VRAM_HEADROOM = 0.25
DEFAULT_GPU_CONTEXT_CAP = 8192


@dataclass(frozen=True)
class ModelFacts:
    """What the page, the doctor and the benchmarks show about a loaded model."""

    name: str
    path: Path
    device: str
    device_name: str
    dtype: str
    backend: str
    kernel_class: str
    kernel_reason: str
    quantized_layers: int
    bits: int
    group_size: int
    memory_bytes: int
    load_seconds: float
    max_context: int
    default_context: int


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    info: CheckpointInfo
    facts: ModelFacts


def pick_device(device: str | None) -> str:
    """CUDA when there is a GPU, else the CPU; an explicit choice wins."""
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"device='{device}' was asked for, but torch sees no CUDA GPU "
                f"(torch {torch.__version__}). Run `python env/doctor.py` to see why, or use device='cpu'."
            )
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_capability(device: str) -> tuple[int, int] | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return tuple(torch.cuda.get_device_capability(torch.device(device)))  # type: ignore[return-value]


def default_context(info: CheckpointInfo, device: str, free_bytes: int | None) -> int:
    """A context length that fits comfortably: never the model's whole window by default."""
    limit = info.max_position_embeddings
    if free_bytes is None:
        return min(limit, CPU_CONTEXT_TOKENS)
    budget = free_bytes * (1 - VRAM_HEADROOM)
    fits = int(budget // max(info.kv_bytes_per_token, 1))
    tokens = min(limit, DEFAULT_GPU_CONTEXT_CAP, max(fits // 1024 * 1024, 1024))
    return tokens


def quantized_modules(model: Any) -> list[Any]:
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    return [m for m in model.modules() if isinstance(m, BaseQuantLinear)]


def memory_in_use(device: str) -> int:
    """Bytes this process holds on `device`: allocated VRAM on a GPU, resident memory on the CPU."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.memory_allocated(torch.device(device)))
    import psutil

    return int(psutil.Process().memory_info().rss)


def device_label(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({os.cpu_count()} cores)"


def load_uncached(
    name_or_path: str | Path, backend: str = "auto", device: str | None = None, progress: Progress | None = None
) -> LoadedModel:
    """Validate, choose device and kernel, load; `load` is the cached version callers want."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPTQConfig

    report = progress or (lambda message, fraction: None)
    started = time.perf_counter()
    report("Checking the checkpoint", 0.02)
    info = find_checkpoint(name_or_path)
    device = pick_device(device)
    choice: KernelChoice = choose_kernel(info, device_capability(device), backend)
    log.info("Loading %s on %s with the %s kernel (%s)", info.path, device, choice.backend, choice.reason)
    dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16
    before = memory_in_use(device)

    report("Loading the tokenizer", 0.05)
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    size_gb = info.weight_bytes / 1e9
    report(f"Loading {size_gb:.1f} GB of weights onto {device} ({choice.backend} kernel)", 0.1)
    model = AutoModelForCausalLM.from_pretrained(
        info.path,
        dtype=dtype,
        device_map={"": device},
        quantization_config=GPTQConfig(bits=info.bits, backend=choice.gptqmodel_backend),
    )
    model.eval()
    layers = quantized_modules(model)
    if not layers:
        raise RuntimeError(f"{info.path} loaded without any GPTQ layers; the quantization config was ignored")
    report("Ready", 1.0)

    free = torch.cuda.mem_get_info(torch.device(device))[0] if device.startswith("cuda") else None
    facts = ModelFacts(
        name=info.name,
        path=info.path,
        device=device,
        device_name=device_label(device),
        dtype=str(dtype).removeprefix("torch."),
        backend=choice.backend,
        kernel_class=type(layers[0]).__name__,
        kernel_reason=choice.reason,
        quantized_layers=len(layers),
        bits=info.bits,
        group_size=info.group_size,
        memory_bytes=max(memory_in_use(device) - before, 0),
        load_seconds=time.perf_counter() - started,
        max_context=info.max_position_embeddings,
        default_context=default_context(info, device, free),
    )
    log.info("Loaded %s in %.1f s: %s", info.name, facts.load_seconds, facts)
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, facts=facts)


_cache: dict[tuple[str, str, str], LoadedModel] = {}
_cache_lock = threading.Lock()


def load(
    name_or_path: str | Path, backend: str = "auto", device: str | None = None, progress: Progress | None = None
) -> LoadedModel:
    """Load once per process: the same arguments return the same model object."""
    key = (str(find_checkpoint(name_or_path).path), backend, pick_device(device))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = load_uncached(name_or_path, backend, device, progress)
        return _cache[key]
