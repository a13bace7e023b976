"""A one-shot all-reduce for the small sums of a tensor-parallel decode step, between cards with peer access.

A decode step of Qwen1.5-72B split over two cards adds up 163 partial results of one token's hidden state (16 KB
each): latency, not bandwidth. NCCL's ring takes several steps per sum. Here each card copies its part into a buffer
that every card of the group maps (torch's symmetric memory, over NVLink or PCIe peer-to-peer), and one kernel on
each card reads every card's part and adds them up, as vLLM's and SGLang's custom all-reduces do for small messages.
Inside the captured CUDA graphs like the rest. NVLink multicast (`multimem` operations) is not used: peer reads only.

Messages over `ONE_SHOT_MAX_BYTES` (a prompt's hidden states) go through NCCL, which is faster for them.
`ALL_REDUCES` names the choices: NCCL always, the one-shot for small messages, or the one-shot where every pair of
cards has peer access (`auto`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist

ALL_REDUCES = ("auto", "nccl", "one-shot")
DEFAULT_ALL_REDUCE = "nccl"  # until the one-shot is measured against NCCL on two cards (docs/benchmarks.md)
ONE_SHOT_MAX_BYTES = 512 * 1024  # 16 rows of Qwen1.5-72B's hidden state are 256 KiB; a prompt chunk is far more


class OneShotReduce:
    """This card's buffer in the group's symmetric memory, and the sum through it."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        self.group = dist.group.WORLD.group_name
        symm_mem.enable_symm_mem_for_group(self.group)
        self.buffer = symm_mem.empty(ONE_SHOT_MAX_BYTES // dtype.itemsize, dtype=dtype, device=device)
        symm_mem.rendezvous(self.buffer, self.group)  # collective: every card maps every other card's buffer

    def takes(self, x: torch.Tensor) -> bool:
        """Whether `x` goes through the one-shot (small enough, the buffer's dtype), else through NCCL."""
        return x.dtype == self.buffer.dtype and x.numel() <= self.buffer.numel()

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Every card's `x` added up, written into `x` on every card."""
        flat = x.view(-1)
        staged = self.buffer[: flat.numel()]
        staged.copy_(flat)
        torch.ops.symm_mem.one_shot_all_reduce_out(staged, "sum", self.group, out=flat)
        return x


def resolve_all_reduce(asked: str, devices: Sequence[torch.device]) -> str:
    """The all-reduce every card of a tensor-parallel group will use ("nccl" or "one-shot"), decided once for all
    of them: "auto" takes the one-shot where every pair of cards has peer access and NCCL is not told to avoid it.
    Raises ValueError, saying why, for a one-shot asked where it cannot run."""
    if asked not in ALL_REDUCES:
        raise ValueError(f"the all-reduce is one of {', '.join(ALL_REDUCES)}, not {asked!r}")
    if asked == "nccl":
        return "nccl"
    on_gpus = all(device.type == "cuda" for device in devices)
    problem = peer_access_problem([device.index for device in devices]) if on_gpus else "it needs CUDA GPUs"
    if problem and asked == "one-shot":
        raise ValueError(f"The one-shot all-reduce cannot run here: {problem}. Use --all-reduce nccl")
    return "nccl" if problem else "one-shot"


def peer_access_problem(indices: Sequence[int]) -> str | None:
    """Why these CUDA cards cannot read each other's memory as NCCL would (so an all-reduce goes through host
    memory), or None."""
    if os.environ.get("NCCL_P2P_DISABLE") == "1":
        return "NCCL_P2P_DISABLE=1 says these cards are not to use peer-to-peer"
    for a in indices:
        for b in indices:
            if a != b and not torch.cuda.can_device_access_peer(a, b):
                return f"GPU {a} cannot read GPU {b}'s memory (no peer-to-peer between them)"
    return None
