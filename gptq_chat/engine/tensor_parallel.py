"""Tensor parallelism: one model over several GPUs, every card reading its share of every layer at once.

With the layers split (`loading/placement.py`) the cards take turns, so one sequence decodes no faster than on one
card. Here each card holds 1/N of every layer (`network.Shard`) and they work on each step together, summing their
partial results over NCCL twice a layer, inside the captured CUDA graphs, as vLLM and gpt-fast do.

One process per card, as NCCL wants. This process drives the first card and the scheduler talks to it
(`TensorParallelEngine`, a `SlotEngine`); each other card has a follower process (`follow`) that
loads its shard, captures the same graphs, and then repeats every call that touches the GPU, in the same order:
the collectives inside those calls keep the cards in step. The first card alone samples; the others take its
tokens (`Shard.agree`). So grammar masks and log-probabilities concern the first card only: followers get no
grammar (it would not cross a process boundary, and their choices are discarded anyway).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gptq_chat.engine.devices import CUDA_CONTEXT_BYTES, cap_card
from gptq_chat.engine.fast_engine import FastEngine, Progress
from gptq_chat.engine.network import Shard, load_transformer
from gptq_chat.engine.one_shot_reduce import DEFAULT_ALL_REDUCE, OneShotReduce, resolve_all_reduce
from gptq_chat.engine.protocols import SamplingSettings, SlotEngine

log = logging.getLogger(__name__)

START_TIMEOUT = timedelta(minutes=10)  # a 72B shard loads in about a minute; a hung start must end
CLOSE = "close"
CARD_QUERIES: dict[str, Callable[[FastEngine], Any]] = {  # asked of every card, answered by each process
    "peak_memory": lambda engine: torch.cuda.max_memory_allocated(engine.device) if engine.device.type == "cuda" else 0,
    "reset_peak_memory": lambda engine: (
        torch.cuda.reset_peak_memory_stats(engine.device) if engine.device.type == "cuda" else None
    ),
    "kv_cache": lambda engine: engine.model.shape.kv_cache,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world: int, port: int, device: torch.device, limit: int | None = None) -> None:
    """Enter this process's place in the group: NCCL between GPUs, gloo on the CPU (the tests). `limit` caps what
    this process may allocate on its card (bytes), as if the card were that size."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if limit:
            cap_card(device.index, limit)
        dist.init_process_group(
            "nccl",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=START_TIMEOUT,
            device_id=device,
        )
    else:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=START_TIMEOUT
        )
    check = torch.ones(1, device=device)
    dist.all_reduce(check)  # the communicator is made now, before any graph capture
    if int(check.item()) != world:
        raise RuntimeError(f"tensor-parallel group check: {check.item()} != {world}")


def build_engine(
    folder: Path,
    backend: str,
    device: torch.device,
    context_length: int,
    dtype: torch.dtype,
    shard: Shard,
    slots: int,
    decode_attention: str,
    prefix_cache: int = 0,
    progress: Progress | None = None,
    kv_cache: str = "fp16",
) -> FastEngine:
    """This card's shard and its engine, graphs captured (every card captures the same graphs in the same order)."""
    model = load_transformer(folder, backend, device, dtype, progress, decode_attention, shard=shard, kv_cache=kv_cache)
    engine = FastEngine(model, context_length, slots=slots, prefix_cache=prefix_cache)
    engine.capture(progress)
    return engine


def card_shard(rank: int, world: int, device: torch.device, all_reduce: str, dtype: torch.dtype) -> Shard:
    """This card's `Shard`, summing small messages through the one-shot all-reduce where the group uses it (every
    card makes its buffer at the same point: the rendezvous is collective)."""
    return Shard(rank, world, OneShotReduce(device, dtype) if all_reduce == "one-shot" else None)


def follow(
    rank: int,
    world: int,
    port: int,
    device: str,
    limit: int | None,
    all_reduce: str,
    build: dict[str, Any],
    inbox: Any,
    outbox: Any,
) -> None:
    """A follower process: load this card's shard, then repeat the first card's calls until told to close."""
    logging.basicConfig(level=logging.INFO, format=f"[tensor-parallel {rank}] %(message)s")
    leader = os.getppid()
    try:
        join_group(rank, world, port, torch.device(device), limit)
        shard = card_shard(rank, world, torch.device(device), all_reduce, build["dtype"])
        engine = build_engine(device=torch.device(device), shard=shard, **build)
    except BaseException as error:
        outbox.put(f"GPU {device}: {type(error).__name__}: {error}")
        raise
    outbox.put("ready")
    while (call := next_call(inbox, leader)) is not None and call[0] != CLOSE:
        name, args, kwargs = call
        if name in CARD_QUERIES:
            outbox.put((rank, CARD_QUERIES[name](engine)))
            continue
        try:
            getattr(engine, name)(*args, **kwargs)
        except Exception:  # the first card raised the same (same inputs, same checks) and went on
            log.exception("%s failed", name)
    if call is not None:  # leaving is collective: only with the first card (an orphan just exits)
        engine.release_graphs()
        dist.destroy_process_group()
        log.info("Left the group")


def next_call(inbox: Any, leader: int) -> tuple[str, tuple, dict] | None:
    """The first card's next call, or None once its process (`leader`) is gone: killed, it could not say so, and
    no follower may keep a GPU's memory for ever."""
    while True:
        try:
            return inbox.get(timeout=5)
        except queue.Empty:
            if os.getppid() != leader:
                return None


class TensorParallelEngine(SlotEngine):
    """The first card's engine, whose GPU calls every follower repeats, in the same order; reads go to the first
    card's engine (`local`), which holds the same state as every follower's."""

    def __init__(self, local: FastEngine, followers: list[Any], inboxes: list[Any], outbox: Any) -> None:
        self.local = local
        self.followers = followers
        self.inboxes = inboxes
        self.outbox = outbox
        self.world = len(followers) + 1
        self.name = f"{local.name}, tensor parallel over {self.world} GPUs"
        self.slots = local.slots
        self.context_length = local.context_length
        self.device = local.device
        self.next_tokens = local.next_tokens
        self.scores = local.scores
        self.vocab_width = local.vocab_width
        self.closed = False
        # At exit too (Ctrl-C in the page or the API server): a process that ends with its graphs and group
        # still alive can hang in NCCL's teardown (pytorch/pytorch#115388).
        atexit.register(self.close)

    @property
    def cached(self) -> list[list[int]]:  # type: ignore[override]  # the first card's, as every card's
        return self.local.cached

    @property
    def model(self) -> Any:
        """The first card's shard of the network."""
        return self.local.model

    @property
    def logits(self) -> torch.Tensor:
        """The whole vocabulary's logits, as the first card gathered them."""
        return self.local.logits

    @property
    def stats(self) -> Any:
        return self.local.stats

    def prefill(
        self, prompt_ids: list[int], settings: SamplingSettings, slot: int = 0, allowed: Any | None = None
    ) -> None:
        self.every_card("prefill", prompt_ids, replace(settings, constraint=None), slot)
        self.local.prefill(prompt_ids, settings, slot, allowed)

    def constrain(self, slot: int, allowed: Any | None) -> None:
        self.local.constrain(slot, allowed)

    def score(self, first: int, rows: int) -> None:
        self.local.score(first, rows)

    def decode(self, rows: int, length: int, greedy: bool) -> None:
        self.every_card("decode", rows, length, greedy)
        self.local.decode(rows, length, greedy)

    def park(self, slot: int, fed: list[int]) -> None:
        self.every_card("park", slot, fed)
        self.local.park(slot, fed)

    def reset(self) -> None:
        self.every_card("reset")
        self.local.reset()

    def set_position(self, slot: int, position: int) -> None:
        self.every_card("set_position", slot, position)
        self.local.set_position(slot, position)

    def feed(self, slot: int, token: int, position: int) -> None:
        self.every_card("feed", slot, token, position)
        self.local.feed(slot, token, position)

    def every_card(self, name: str, *args: Any) -> None:
        """Have every follower make the call the first card is about to make (a dead follower: refuse instead)."""
        self.check_followers()
        self.tell(name, *args)

    def ask_every_card(self, query: str) -> list[Any]:
        """One of `CARD_QUERIES`, answered by every card's process, first card first."""
        self.check_followers()
        self.tell(query)
        answers = dict(self.outbox.get(timeout=60) for _ in self.inboxes)
        return [CARD_QUERIES[query](self.local), *(answers[rank] for rank in range(1, self.world))]

    def tell(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Send a call (or a query, or the close) to every follower, in the order they must run it."""
        for inbox in self.inboxes:
            inbox.put((name, args, kwargs))

    def check_followers(self) -> None:
        """A follower that died would leave the first card waiting in a collective for ever: refuse instead."""
        dead = [p for p in self.followers if not p.is_alive()]
        if dead:
            codes = ", ".join(f"{p.name} exited with code {p.exitcode}" for p in dead)
            raise RuntimeError(f"A tensor-parallel worker stopped ({codes}); reload the model.")

    def close(self) -> None:
        """Stop the followers and leave the group (model switch, shutdown).

        Leaving an NCCL group is collective: every process must do it at the same time, so the first card leaves
        while the followers do (each first frees its graphs, which hold the group's communicator), and only then
        waits for them to exit.
        """
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        started = time.perf_counter()
        self.tell(CLOSE)
        self.local.release_graphs()
        leave_group()
        log.info("Left the tensor-parallel group in %.1f s", time.perf_counter() - started)
        for process in self.followers:
            process.join(timeout=60)
            if process.is_alive():
                log.warning("%s did not exit; killing it", process.name)
                process.kill()
                process.join(timeout=10)


def leave_group() -> None:
    """Destroy this process's group, giving up after a minute (a dead follower can keep NCCL waiting for ever)."""
    if not dist.is_initialized():
        return
    leaving = threading.Thread(target=dist.destroy_process_group, name="leave-tensor-parallel-group", daemon=True)
    leaving.start()
    leaving.join(timeout=60)
    if leaving.is_alive():
        log.warning("The tensor-parallel group did not close; restart the app before loading another such model")


def load_tensor_parallel(
    folder: Path,
    backend: str,
    devices: list[torch.device],
    context_length: int,
    dtype: torch.dtype,
    progress: Progress | None = None,
    decode_attention: str = "sdpa",
    slots: int = 1,
    gpu_memory_limit: int | None = None,
    prefix_cache: int = 0,
    kv_cache: str = "fp16",
    all_reduce: str = DEFAULT_ALL_REDUCE,
) -> TensorParallelEngine:
    """Start a follower process for every card after the first, load every shard, capture the graphs.
    `all_reduce`: how the cards sum their partial results (one_shot_reduce.ALL_REDUCES)."""
    if dist.is_initialized():
        raise RuntimeError("A tensor-parallel model is already loaded in this process; unload it first.")
    method = resolve_all_reduce(all_reduce, devices)  # before any process starts: every card uses the same
    log.info("Tensor parallel over %d devices, summing through %s", len(devices), method)
    world, port = len(devices), free_port()
    build = {
        "folder": folder,
        "backend": backend,
        "context_length": context_length,
        "dtype": dtype,
        "slots": slots,
        "decode_attention": decode_attention,
        "prefix_cache": prefix_cache,  # tokens per card: each keeps its share of every kept token's K/V
        "kv_cache": kv_cache,
    }
    spawn = multiprocessing.get_context("spawn")
    outbox = spawn.Queue()
    inboxes = [spawn.Queue() for _ in devices[1:]]
    followers = []
    # On a follower's card this process has a CUDA context too (`placement._tensor_parallel_loads`): a cap
    # standing for a smaller card leaves the follower the rest.
    follower_limit = gpu_memory_limit - CUDA_CONTEXT_BYTES if gpu_memory_limit else None
    for rank, (device, inbox) in enumerate(zip(devices[1:], inboxes, strict=True), start=1):
        process = spawn.Process(
            target=follow,
            args=(rank, world, port, str(device), follower_limit, method, build, inbox, outbox),
            name=f"tensor-parallel-{rank}",
            daemon=True,
        )
        process.start()
        followers.append(process)
    started = time.perf_counter()
    try:
        join_group(0, world, port, devices[0], gpu_memory_limit)
        shard = card_shard(0, world, devices[0], method, dtype)
        local = build_engine(device=devices[0], shard=shard, progress=progress, **build)
        for _ in followers:
            answer = outbox.get(timeout=START_TIMEOUT.total_seconds())
            if answer != "ready":
                raise RuntimeError(f"A tensor-parallel worker failed to load: {answer}")
    except BaseException:
        for process in followers:
            process.kill()
        leave_group()
        raise
    log.info(
        "Tensor parallel over %d devices ready in %.1f s (pid %d leads)",
        world,
        time.perf_counter() - started,
        os.getpid(),
    )
    return TensorParallelEngine(local, followers, inboxes, outbox)
