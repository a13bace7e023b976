"""Each visible GPU's memory, read live: the loader's placement input, the page's table, the doctor's lines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from gptq_chat.loading.memory_plan import CUDA_CONTEXT_BYTES, gib
from gptq_chat.loading.placement import GpuSpec


def visible_gpus(indices: Sequence[int] | None = None) -> list[GpuSpec]:
    """The CUDA GPUs this process sees (or the ones named), free memory as every process leaves it; [] without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()) if indices is None else indices:
        free, total = torch.cuda.mem_get_info(index)
        gpus.append(GpuSpec(index, int(total), int(free), torch.cuda.get_device_name(index)))
    return gpus


def named_gpus(device: str) -> list[int] | None:
    """The card indices a device string names ("cuda:1" → [1], "cuda:0,1" → [0, 1]); None for plain "cuda"."""
    return [int(i) for i in device.split(":", 1)[1].split(",")] if ":" in device else None


def gpus_for(device: str) -> list[GpuSpec]:
    """The cards a device string names: "cuda" every visible one, "cuda:1" that one, "cuda:0,1" those."""
    if not device.startswith("cuda"):
        return []
    return visible_gpus(named_gpus(device))


def cap_card(index: int, limit_bytes: int) -> None:
    """Let this process's allocator use at most `limit_bytes` of card `index`, its CUDA context counted in."""
    import torch

    total = torch.cuda.get_device_properties(index).total_memory
    allocator = max(limit_bytes - CUDA_CONTEXT_BYTES, 0)
    torch.cuda.set_per_process_memory_fraction(min(allocator / total, 1.0), index)


def cap_gpus(gpus: Sequence[GpuSpec], limit_bytes: int) -> list[GpuSpec]:
    """Let this process use at most `limit_bytes` of each card, as if the cards were that size (two 80 GB
    cards standing for two 24 GB ones): torch's allocator then refuses more, and plans see the smaller card.

    The CUDA context (outside the allocator) counts against the limit, as it does on a real card that size.
    """
    import torch

    capped = []
    for gpu in gpus:
        cap_card(gpu.index, limit_bytes)
        room = limit_bytes - torch.cuda.memory_reserved(gpu.index)
        capped.append(replace(gpu, total_bytes=min(limit_bytes, gpu.total_bytes), free_bytes=min(gpu.free_bytes, room)))
    return capped


def usage(total_bytes: int, free_bytes: int) -> str:
    """ "1.5 GiB used of 24.0 GiB, 22.5 GiB free": one wording for the doctor and the page."""
    return f"{gib(total_bytes - free_bytes)} used of {gib(total_bytes)}, {gib(free_bytes)} free"


@dataclass(frozen=True)
class GpuMemoryRow:
    """One GPU as the page's table shows it (the page names the columns in its language)."""

    gpu: str
    name: str
    used: str
    total: str
    free: str
    used_fraction: float  # for a progress bar


def gpu_memory_rows(gpus: Sequence[GpuSpec] | None = None) -> list[GpuMemoryRow]:
    """A row per GPU (default: every visible one, read now); no rows on a machine without CUDA."""
    gpus = visible_gpus() if gpus is None else gpus
    return [
        GpuMemoryRow(
            gpu=f"GPU {gpu.index}",
            name=gpu.name,
            used=gib(gpu.total_bytes - gpu.free_bytes),
            total=gib(gpu.total_bytes),
            free=gib(gpu.free_bytes),
            used_fraction=(gpu.total_bytes - gpu.free_bytes) / gpu.total_bytes if gpu.total_bytes else 0.0,
        )
        for gpu in gpus
    ]
