"""The one rule for whether, where and how a model goes on this machine: the loader's, asked by everyone.

The loader applies it before loading anything, the model switch before unloading the current model, the doctor for
its memory check and `download.py --list` for the cards you name. It answers with a `Layout` (the main device, the
placement over several GPUs if one card does not hold the model, the context per sequence) or raises
`PlacementRefused` with the numbers and what to do instead.

- On GPUs: one card when one holds the model (unless the user named several), else the model is split over them.
  "layers" gives each card whole layers: the cards take turns. "tensor" halves every layer, the cards work on each
  token together: Qwen1.5-72B on two H100s capped at 24 GiB decodes 77.6 tokens/s so, 53.6 with the layers split
  (docs/benchmarks.md). "auto" splits the tensors where the engine and the model's shape allow it and the context
  fits, the layers otherwise; and where both hold the model and the cards' interconnect is known, whichever decodes
  a token sooner over it (`interconnect.choose_split`: without NVLink the all-reduces cost more).
- On the CPU: the plain path, against the RAM available.
- The context, where none is asked for: the longest that fits, in steps of 256 tokens, up to 8,192 on a GPU (4,096
  on the CPU); a model that cannot hold `MIN_CONTEXT` tokens is refused: it would be of no use for chatting.
- The prefix cache (the fast engine's store of other chats' prompts, `engine/prefix_store.py`): sized after the
  context, from what the plan leaves spare: at most half of the spare memory of the card with the least, and at
  most `PREFIX_CACHE_CONTEXTS` whole contexts per slot; never at the context's expense. A size asked for is a
  ceiling: the most that fits is used, and the layout says how much that is.
- The KV cache's format (the fast engine's): fp16, or 8 bits a value (int8, fp8), half the bytes per token. "auto"
  keeps fp16 where it holds the context asked for (else the usual cap, 8,192 tokens) and takes `AUTO_KV_CACHE`
  where fp16 would hold less: Qwen1.5-72B on two 24 GB cards, 2,304 tokens in fp16, 4,096 in 8 bits. The
  plain path (transformers' `generate`) keeps fp16: an 8-bit cache asked for there is refused, saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from gptq_chat.engine.prefix_store import BLOCK
from gptq_chat.engine.shape import KV_CACHES, tensor_parallel_problem
from gptq_chat.loading.gpus import GpuSpec
from gptq_chat.loading.interconnect import Interconnect, choose_split
from gptq_chat.loading.memory_plan import OVERHEAD_BYTES, PlannedModel, cached_as, gib, requirement
from gptq_chat.loading.placement import (
    Placement,
    PlacementRefused,
    largest_context,
    largest_tensor_parallel_context,
    plan_placement,
    plan_tensor_parallel,
)

SPLITS = ("auto", "layers", "tensor")
SPLIT_HELP = (
    "a model over several GPUs: tensor (every layer halved, the cards work together), layers (whole layers per "
    "card, the cards take turns), auto (tensor where the model's shape allows it)"
)
MIN_CONTEXT = 1024  # a model that cannot hold this much context is of no use for chatting
DEFAULT_GPU_CONTEXT_CAP = 8192  # never the model's whole window by default: its KV cache would crowd out the rest
CPU_CONTEXT_TOKENS = 4096  # a CPU has no VRAM to size the cache by; prompts short enough to stay responsive there
CONTEXT_STEP = 256  # the page's context slider moves in these steps
PREFIX_CACHE_SHARE = 0.5  # of the memory a plan leaves spare, the most the prefix cache takes (the rest: headroom)
PREFIX_CACHE_CONTEXTS = 2  # per slot, the most whole contexts of other chats' prompts the prefix cache keeps
KV_CACHE_CHOICES = ("auto", *KV_CACHES)
AUTO_KV_CACHE = "int8"  # the 8-bit format "auto" takes: the closer to fp16 of the two (docs/benchmarks.md)
KV_CACHE_HELP = (
    "how the fast engine stores the KV cache: fp16, or 8 bits a value (int8, fp8: twice the context in the same "
    "memory); auto: fp16 where it holds the context asked for (else 8,192 tokens), 8 bits where it would hold less"
)


@dataclass(frozen=True)
class Layout:
    """Where a model goes: its main device, the placement when it spans several GPUs, the context per sequence."""

    device: str  # "cuda:0", or "cpu"
    placement: Placement | None  # None: one card (or the CPU) holds the whole model
    context: int
    prefix_cache: int = 0  # tokens of other chats' prompts the fast engine keeps for reuse
    kv_cache: str = "fp16"  # the KV cache's format (shape.KV_CACHES)
    split_reason: str = ""  # why "auto" took this split over the other, where both held the model

    @property
    def cards(self) -> list[str]:
        """Every device the model uses, the main one first."""
        if self.placement is None:
            return [self.device]
        return [f"cuda:{card.gpu.index}" for card in self.placement.cards]

    def summary(self) -> str:
        where = self.placement.summary() if self.placement is not None else f"on {self.device}"
        if self.placement is None:
            where += f" at {self.context:,} tokens of context"
        where += kv_cache_note(self.kv_cache)
        if self.split_reason:
            where += f"\n  why this split: {self.split_reason}"
        if not self.prefix_cache:
            return where
        return where + ("\n  " if self.placement else "; ") + f"prompts kept for reuse: {self.prefix_cache:,} tokens"


def fit(
    model: PlannedModel,
    gpus: Sequence[GpuSpec],
    *,
    fast: bool,
    context: int | None = None,
    slots: int = 1,
    split: str = "auto",
    named: bool = False,
    ram: int | None = None,
    prefix_cache: int | None = None,
    kv_cache: str = "fp16",
    interconnect: Callable[[], Interconnect] | None = None,
) -> Layout:
    """Where `model` goes on `gpus` (free memory each; none: the CPU, with `ram` bytes available if known).

    `fast`: the fast engine runs it (else transformers' `generate`); `named`: the user named these cards, so they are
    used together; `context`: tokens per sequence asked for (None: the longest that fits, see the module docstring);
    `prefix_cache`: the most tokens of other chats' prompts to keep (None: as many as the spare memory allows);
    `kv_cache`: the KV cache's format, or "auto" (`KV_CACHE_CHOICES`); `interconnect`: how the cards reach each
    other, asked only where "auto" has both splits to choose from (measuring it takes seconds); None: tensor
    parallelism wherever it holds the model.
    Raises `PlacementRefused` (or `ValueError` for a split that cannot run this model here) before anything loads.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if kv_cache not in KV_CACHE_CHOICES:
        raise ValueError(f"the KV cache is one of {', '.join(KV_CACHE_CHOICES)}, not {kv_cache!r}")
    if prefix_cache is not None and prefix_cache < 0:
        raise ValueError(f"prefix_cache is a number of tokens (0: off), not {prefix_cache}")
    refusal = tensor_parallel_refusal(model, fast, len(gpus))
    if split == "tensor" and refusal:
        raise ValueError(refusal)
    if kv_cache not in ("fp16", "auto") and not fast:
        raise ValueError(
            f"An {kv_cache} KV cache is the fast engine's; transformers' generate (the plain path) keeps fp16 here. "
            "Use --engine fast, or --kv-cache fp16"
        )

    def layout_with(cache: str) -> Layout:
        try:
            layout = _fit(
                cached_as(model, cache), gpus, fast, context, slots, split, named, ram, prefix_cache, interconnect
            )
        except PlacementRefused as refused:
            refused.kv_cache = cache
            raise
        return replace(layout, kv_cache=cache)

    if kv_cache != "auto":
        return layout_with(kv_cache)
    if not (fast and gpus):  # a CPU has no card's memory to save; the plain path keeps fp16
        return layout_with("fp16")
    wanted = min(context or DEFAULT_GPU_CONTEXT_CAP, model.shape.max_position_embeddings)
    try:
        layout = layout_with("fp16")
    except PlacementRefused:
        return layout_with(AUTO_KV_CACHE)  # refused in 8 bits too: that refusal, with its numbers
    if layout.context >= wanted:
        return layout
    try:
        return max(layout, layout_with(AUTO_KV_CACHE), key=lambda candidate: candidate.context)
    except PlacementRefused:
        return layout


def kv_cache_note(kv_cache: str) -> str:
    """What a line about a plan says of its KV cache: nothing for fp16, the format otherwise."""
    return "" if kv_cache == "fp16" else f", {kv_cache} KV cache"


def _fit(
    model: PlannedModel,
    gpus: Sequence[GpuSpec],
    fast: bool,
    context: int | None,
    slots: int,
    split: str,
    named: bool,
    ram: int | None,
    prefix_cache: int | None,
    interconnect: Callable[[], Interconnect] | None,
) -> Layout:
    """`fit` for one KV-cache format (the model's shape says which)."""
    refusal = tensor_parallel_refusal(model, fast, len(gpus))
    if not gpus:
        return _on_cpu(model, context, ram, prefix_cache if fast else 0)
    layout = _on_gpus(model, gpus, fast, context, slots, split, named, refusal, interconnect)
    if not fast:
        return layout
    placement = layout.placement or plan_placement(model, gpus, layout.context, path="fast", slots=slots, split=named)
    return replace(layout, prefix_cache=prefix_cache_tokens(placement, prefix_cache))


def _on_gpus(
    model: PlannedModel,
    gpus: Sequence[GpuSpec],
    fast: bool,
    context: int | None,
    slots: int,
    split: str,
    named: bool,
    refusal: str | None,
    interconnect: Callable[[], Interconnect] | None,
) -> Layout:
    if split == "tensor":
        return _tensor_parallel(model, gpus, context, slots)
    path = "fast" if fast else "plain"
    chosen = planned_context(model, context, largest_context(model, gpus, path=path, slots=slots))
    try:
        placement = plan_placement(model, gpus, chosen, path=path, slots=slots, split=named)
    except PlacementRefused as refused:
        if split == "layers" or refusal:
            raise
        try:  # quarters or halves may hold what whole layers do not (the KV cache of the heads is split too)
            return _tensor_parallel(model, gpus, context, slots)
        except PlacementRefused:
            raise refused from None
    main = f"cuda:{placement.cards[0].gpu.index}"
    layers = Layout(main, placement, chosen)
    if placement.single_card:
        return Layout(main, None, chosen)
    if split == "layers" or refusal:
        return layers
    try:
        tensor = _tensor_parallel(model, gpus, context, slots)
    except PlacementRefused:  # the context asked for fits the layer split only
        return layers
    if interconnect is None:
        return tensor
    assert tensor.placement is not None  # a tensor-parallel layout always has its placement
    choice = choose_split(placement, tensor.placement, interconnect())
    return replace(tensor if choice.split == "tensor" else layers, split_reason=choice.reason)


def prefix_cache_tokens(placement: Placement, asked: int | None) -> int:
    """Tokens of other chats' prompts the fast engine may keep beside `placement` (whole blocks): each card keeps
    its part of every kept token's K/V, as it does of the cache, so the card with the least room for them decides."""
    holders = [card for card in placement.cards if card.kv_cache]
    if not holders or placement.cpu_layers:
        return 0
    cached = placement.context * placement.slots  # tokens whose K/V each card's `kv_cache` holds
    room = min(int(PREFIX_CACHE_SHARE * max(card.spare, 0) * cached / card.kv_cache) for card in holders)
    ceiling = PREFIX_CACHE_CONTEXTS * placement.context * placement.slots if asked is None else asked
    return min(room, ceiling) // BLOCK * BLOCK


def with_freed(gpus: Sequence[GpuSpec], freed: int) -> list[GpuSpec]:
    """The cards as they will be once `freed` bytes (a model about to be unloaded) are given back, spread evenly."""
    return [replace(gpu, free_bytes=gpu.free_bytes + freed // len(gpus)) for gpu in gpus]


def tensor_parallel_refusal(model: PlannedModel, fast: bool, cards: int) -> str | None:
    """Why tensor parallelism cannot run this model on `cards` GPUs here, or None."""
    if cards < 2:
        return f"Tensor parallelism needs two GPUs or more; {cards} named or visible"
    if not fast:
        return "Tensor parallelism runs on the fast engine (gptqmodel's Marlin kernel on a GPU)"
    problem = tensor_parallel_problem(model.shape, model.gptq, cards)
    if problem:
        return f"{model.name} cannot be split by tensor parallelism: {problem}. Use --split layers"
    return None


def _tensor_parallel(model: PlannedModel, gpus: Sequence[GpuSpec], asked: int | None, slots: int) -> Layout:
    """Every layer split over all of `gpus`, or `PlacementRefused`."""
    context = planned_context(model, asked, largest_tensor_parallel_context(model, gpus, slots=slots))
    placement = plan_tensor_parallel(model, gpus, context, slots=slots)
    return Layout(f"cuda:{placement.cards[0].gpu.index}", placement, context)


def planned_context(model: PlannedModel, asked: int | None, fits: int) -> int:
    """The context asked for, else the longest that fits in steps of 256 tokens, up to the usual cap (never below
    `MIN_CONTEXT`: the placement at that length then says why it does not fit)."""
    limit = model.shape.max_position_embeddings
    if asked:
        return min(asked, limit)
    return min(DEFAULT_GPU_CONTEXT_CAP, limit, max(fits // CONTEXT_STEP * CONTEXT_STEP, MIN_CONTEXT))


def ram_needed(model: PlannedModel, context: int) -> int:
    """Bytes of RAM the plain path needs on the CPU: weights, KV cache, prefill activations, overhead."""
    return sum(requirement(model, context, path="plain")) + OVERHEAD_BYTES


def _on_cpu(model: PlannedModel, asked: int | None, ram: int | None, prefix_cache: int | None) -> Layout:
    """The plain path in RAM: weights, KV cache and prefill activations, without a CUDA context; a prefix cache only
    where one is asked for (the fast engine runs on the CPU for tests, not for chatting)."""
    context = min(asked or CPU_CONTEXT_TOKENS, model.shape.max_position_embeddings)
    weights, kv, activations = requirement(model, context, path="plain")
    kept = (prefix_cache or 0) // BLOCK * BLOCK
    kv += kept * model.shape.kv_bytes_per_token
    need = ram_needed(model, context) + kept * model.shape.kv_bytes_per_token
    if ram is not None and need > ram:
        raise PlacementRefused(
            f"{model.name} does not fit: at {context:,} tokens of context it needs {gib(need)} of RAM "
            f"(weights {gib(weights)} + KV cache {gib(kv)} + activations {gib(activations)} + overhead "
            f"{gib(OVERHEAD_BYTES)}), but only {gib(ram)} would be free.",
            "close other programs, or pick a smaller model",
            needed={},
            available={},
            largest_context=0,
        )
    return Layout("cpu", None, context, kept)
