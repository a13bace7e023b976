"""Each visible GPU's memory, read live: the loader's placement input, the page's table, the doctor's lines."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from gptq_chat.engine.devices import cap_card
from gptq_chat.loading.memory_plan import GIB, gib


@dataclass(frozen=True)
class GpuSpec:
    """One GPU the loader may use: its CUDA index and memory (placements are planned against `free_bytes`)."""

    index: int
    total_bytes: int
    free_bytes: int
    name: str = ""
    bandwidth: float = 0.0  # peak memory bandwidth, bytes/s (0: unknown); what decides the split (interconnect.py)


def visible_gpus(indices: Sequence[int] | None = None) -> list[GpuSpec]:
    """The CUDA GPUs this process sees (or the ones named), free memory as every process leaves it; [] without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()) if indices is None else indices:
        free, total = torch.cuda.mem_get_info(index)
        gpus.append(GpuSpec(index, int(total), int(free), torch.cuda.get_device_name(index), memory_bandwidth(index)))
    return gpus


def memory_bandwidth(index: int) -> float:
    """A CUDA card's peak memory bandwidth in bytes/s, from its memory clock (kHz; two transfers a clock) and bus
    width (bits): 3.35 TB/s for an H100 SXM, 1.01 TB/s for an RTX 4090. 0 where CUDA does not report them."""
    import torch

    properties = torch.cuda.get_device_properties(index)
    clock_khz, bus_bits = getattr(properties, "memory_clock_rate", 0), getattr(properties, "memory_bus_width", 0)
    return clock_khz * 1e3 * 2 * bus_bits / 8


def named_gpus(device: str) -> list[int] | None:
    """The card indices a device string names ("cuda:1" → [1], "cuda:0,1" → [0, 1]); None for plain "cuda"."""
    return [int(i) for i in device.split(":", 1)[1].split(",")] if ":" in device else None


def gpus_for(device: str) -> list[GpuSpec]:
    """The cards a device string names: "cuda" every visible one, "cuda:1" that one, "cuda:0,1" those."""
    if not device.startswith("cuda"):
        return []
    return visible_gpus(named_gpus(device))


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


def parse_card_sizes(text: str) -> list[int]:
    """Card sizes as people type them, comma-separated: `24`, `24GiB`, `24G` (GiB, as cards are sold: a "24 GB"
    RTX 4090 has 24 GiB), `80GB` (decimal), `8192MiB` -> bytes each."""
    sizes = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([\d.]+)\s*(gib|gb|g|mib|mb|m)?\s*", part.lower())
        if not match:
            raise ValueError(f"not a card size: {part!r} (e.g. 24 or 24GiB)")
        number, unit = float(match.group(1)), match.group(2) or "gib"
        scale = {"gib": GIB, "g": GIB, "gb": 1e9, "mib": 1024**2, "m": 1024**2, "mb": 1e6}[unit]
        sizes.append(int(number * scale))
    return sizes


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
