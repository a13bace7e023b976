"""Each visible GPU's memory, read live: the loader's placement input, the page's table, the doctor's lines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from placement import GpuSpec
from vram_planner import gib


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
