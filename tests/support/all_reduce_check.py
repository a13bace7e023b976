"""Two processes, one per card, sum the same fp16 parts through NCCL and through the one-shot all-reduce
(engine/one_shot_reduce.py) and compare the sums bit for bit: tests/test_multi_gpu.py."""

from __future__ import annotations

import multiprocessing

import torch
import torch.distributed as dist

from gptq_chat.engine.network import Shard
from gptq_chat.engine.tensor_parallel import card_shard, free_port, join_group

SHAPES = ((1, 4096), (1, 8192), (16, 8192), (512, 8192))  # the last: a prompt chunk, past the one-shot's size


def compare_on_two_cards(timeout: float = 240) -> str:
    """ "equal", or the first difference rank 0 saw."""
    context = multiprocessing.get_context("spawn")
    results, port = context.Queue(), free_port()
    processes = [context.Process(target=_compare, args=(rank, port, results)) for rank in range(2)]
    for process in processes:
        process.start()
    try:
        return results.get(timeout=timeout)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


def _compare(rank: int, port: int, results: object) -> None:
    device = torch.device(f"cuda:{rank}")
    join_group(rank, 2, port, device)
    nccl, one_shot = Shard(rank, 2), card_shard(rank, 2, device, "one-shot", torch.float16)
    outcome = "equal"
    generator = torch.Generator(device=device).manual_seed(rank)
    for shape in SHAPES:
        part = torch.randn(shape, generator=generator, device=device, dtype=torch.float16)
        expected, eager = nccl.reduce(part.clone()), one_shot.reduce(part.clone())
        static = part.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            one_shot.reduce(static)
        static.copy_(part)
        graph.replay()
        torch.cuda.synchronize(device)
        for label, got in (("eager", eager), ("graph", static)):
            if outcome == "equal" and not torch.equal(got, expected):
                largest = (got.float() - expected.float()).abs().max().item()
                outcome = f"{label} {tuple(shape)}: differs from NCCL's sum by up to {largest}"
        del graph
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        results.put(outcome)  # type: ignore[attr-defined]
