"""What one all-reduce costs between a set of cards, timed the way the tensor-parallel engine runs it.

One process per card joins a group as the engine's do (`tensor_parallel.join_group`: NCCL between GPUs, gloo on the
CPU), sums a token's hidden state a few times through the engine's own `Shard.reduce` (NCCL, or the one-shot) to
settle the communicator, then times `repeats` sums: on GPUs inside a captured CUDA graph, as the engine's decode
steps run them, on the CPU one after the other. The first card's
process reports the mean; `loading/interconnect.py` decides the split by it.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist

from gptq_chat.engine.devices import replay_milliseconds
from gptq_chat.engine.network import Shard
from gptq_chat.engine.tensor_parallel import card_shard, free_port, join_group

WARM_UP = 8
REPLAYS = 4  # the graph of `repeats` all-reduces is replayed this many times, timed as one


def measure_all_reduce(
    devices: Sequence[torch.device],
    width: int,
    *,
    dtype: torch.dtype = torch.float16,
    repeats: int = 64,
    timeout: float = 180.0,
    method: str = "nccl",
) -> float:
    """Seconds one all-reduce of `width` values of `dtype` takes among `devices` (one process each), through NCCL or
    the one-shot (`method`, as `tensor_parallel.card_shard` takes it).

    Raises RuntimeError with the first card's error where a process fails, or when nothing comes within `timeout`
    seconds (a hung NCCL start); the processes are ended either way."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port, world = free_port(), len(devices)
    processes = [
        context.Process(
            target=_probe,
            args=(rank, world, port, str(device), width, dtype, repeats, method, results),
            daemon=True,
        )
        for rank, device in enumerate(devices)
    ]
    for process in processes:
        process.start()
    try:
        outcome = results.get(timeout=timeout)
    except queue.Empty:
        outcome = f"no result within {timeout:.0f} s"
    for process in processes:  # after a result they leave the group by themselves; after a failure they may hang
        process.join(timeout=30 if isinstance(outcome, float) else 0)
        if process.is_alive():
            process.kill()
    if isinstance(outcome, str):
        raise RuntimeError(f"the all-reduce probe failed: {outcome}")
    return outcome


def _probe(
    rank: int,
    world: int,
    port: int,
    device: str,
    width: int,
    dtype: torch.dtype,
    repeats: int,
    method: str,
    results: object,
) -> None:
    """One card's part: join, settle, time, leave (graphs freed before the group: pytorch/pytorch#115388)."""
    try:
        card = torch.device(device)
        join_group(rank, world, port, card)
        shard = card_shard(rank, world, card, method, dtype)
        x = torch.ones(1, width, dtype=dtype, device=card)
        for _ in range(WARM_UP):
            shard.reduce(x)
        seconds = _timed_in_graph(shard, x, repeats) if card.type == "cuda" else _timed(shard, x, repeats)
        dist.barrier()
        dist.destroy_process_group()
    except Exception as error:
        if rank == 0:
            results.put(f"{device}: {type(error).__name__}: {error}")  # type: ignore[attr-defined]
        raise
    if rank == 0:
        results.put(seconds)  # type: ignore[attr-defined]


def _timed(shard: Shard, x: torch.Tensor, repeats: int) -> float:
    dist.barrier()
    started = time.perf_counter()
    for _ in range(repeats):
        shard.reduce(x)
    return (time.perf_counter() - started) / repeats


def _timed_in_graph(shard: Shard, x: torch.Tensor, repeats: int) -> float:
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        shard.reduce(x)  # a first call on the capture stream, as the engine's warm-up makes
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            shard.reduce(x)
    graph.replay()  # its first replay sets the graph up
    torch.cuda.synchronize()
    dist.barrier()  # the cards start timing together
    seconds = replay_milliseconds(graph, replays=REPLAYS, warm=0) / 1e3 / repeats
    del graph
    torch.cuda.synchronize()
    return seconds
