"""A GPU's memory as torch sees it: what a CUDA context costs outside the allocator, and capping the allocator."""

from __future__ import annotations

CUDA_CONTEXT_BYTES = 512 * 1024**2  # ~0.5 GB per card for the CUDA context (driver, cuBLAS handles, kernel images)


def cap_card(index: int, limit_bytes: int) -> None:
    """Let this process's allocator use at most `limit_bytes` of card `index`, its CUDA context counted in: the
    card then behaves as one of that size (two 80 GB cards standing for two 24 GB ones)."""
    import torch

    total = torch.cuda.get_device_properties(index).total_memory
    allocator = max(limit_bytes - CUDA_CONTEXT_BYTES, 0)
    torch.cuda.set_per_process_memory_fraction(min(allocator / total, 1.0), index)
