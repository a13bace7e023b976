"""A GPU as the engine sees it: what a CUDA context costs outside the allocator, capping the allocator, how many
SMs it has, how long a captured graph takes on it, and the Triton kernels written for it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

Kernels = TypeVar("Kernels")

CUDA_CONTEXT_BYTES = 512 * 1024**2  # ~0.5 GB per card for the CUDA context (driver, cuBLAS handles, kernel images)


def cap_card(index: int, limit_bytes: int) -> None:
    """Let this process's allocator use at most `limit_bytes` of card `index`, its CUDA context counted in: the
    card then behaves as one of that size (two 80 GB cards standing for two 24 GB ones)."""
    import torch

    total = torch.cuda.get_device_properties(index).total_memory
    allocator = max(limit_bytes - CUDA_CONTEXT_BYTES, 0)
    torch.cuda.set_per_process_memory_fraction(min(allocator / total, 1.0), index)


@functools.cache
def sm_count(device: Any) -> int:
    """Streaming multiprocessors of a torch device (132, an H100 SXM's, where it is not CUDA: Triton's interpreter)."""
    import torch

    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def replay_milliseconds(graph: Any, replays: int = 20, warm: int = 3) -> float:
    """A captured CUDA graph's time on its card: `warm` replays first, then the mean of `replays`."""
    import torch

    for _ in range(warm):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def triton_kernels(build: Callable[[], Kernels]) -> Callable[[], Kernels | None]:
    """`build`'s kernels, defined once on first use, or None where triton does not import (a CPU-only torch)."""

    @functools.cache
    def kernels() -> Kernels | None:
        try:
            import triton  # noqa: F401
        except ImportError:
            return None
        return build()

    return kernels
