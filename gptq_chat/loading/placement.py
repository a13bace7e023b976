"""Where each part of a model goes on several GPUs: decoder layers, embedding and head, each card with its KV cache.

A model that no single card holds (Qwen1.5-72B-Chat-GPTQ-Int4: 41 GB of weights, 2.5 MiB of KV cache per token)
is spread over the cards the loader is given. Each card's load comes from memory_plan's per-part terms:

    load = CUDA context + overhead + workspace
         + its layers * (one layer's weights + that layer's KV cache at the context, for every slot)
         + the fp16 embedding, if it holds it + the final norm and lm_head, if it holds them

`workspace` is the single-card plan's activations on that path (one layer's prefill peak, the logits, the path's
static buffers): every card runs the prefill of its own layers. With tensor parallelism each card prefills its share
of every layer's MLP rows, and counts that share. The logits and sampling buffers (a few MB with
Qwen's vocabulary) are charged to every card, not only to the head's: a small overestimate, on the safe side.

The layers go to the cards in order (the first card runs the first layers), in the counts that make the largest
load / free-memory ratio smallest. Every card is tried for the embedding and every card for the head (a tied
model keeps both on one card), so the two 2.5 GB fp16 matrices of a 72B model land where they balance best;
the first card for the embedding and the last for the head win a tie. A model that one card holds stays on one
card unless `split=True`.

Nothing goes to the CPU unless asked (`allow_cpu_offload=True`, plain path only). Then the last layers stay in
RAM and accelerate copies each one to the first GPU for every token (their KV cache lives there too), so PCIe
bandwidth over the offloaded bytes bounds the speed; the placement says so loudly. A placement that cannot fit
raises `PlacementRefused` with the numbers, the longest context that would fit, and what to do.

Whether and how the loader uses these placements (one card, layers split, or tensor parallel) is decided in
`fit.py`; `python download.py --list --cards 24,24 [MODEL]` shows the decision for your cards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from gptq_chat.engine.devices import CUDA_CONTEXT_BYTES
from gptq_chat.loading.checkpoint import CheckpointError
from gptq_chat.loading.gpus import GpuSpec
from gptq_chat.loading.memory_plan import (
    GIB,
    OVERHEAD_BYTES,
    PATHS,
    PlannedModel,
    embedding_bytes,
    gib,
    layer_weight_bytes,
    lm_head_bytes,
    real_share,
    requirement,
    total_weight_bytes,
)

log = logging.getLogger(__name__)

CARD_COUNTS = (1, 2, 4)  # the setups the table shows
CARD_SIZES_GIB = (24, 48, 80)
# PCIe 4.0 x16 moves 32 GB/s per direction on paper and about 25 GB/s in pinned host-to-device copies;
# accelerate copies from pageable memory, which is slower, so the speed it gives is an upper bound.
PCIE_BYTES_PER_S = 25e9
CPU = "cpu"


@dataclass(frozen=True)
class CardLoad:
    """What one GPU holds in a placement, and what that costs it."""

    gpu: GpuSpec
    first_layer: int
    layers: int
    embedding: bool
    head: bool  # the final norm and lm_head
    weights: int
    kv_cache: int
    workspace: int  # activations + CUDA context + overhead (+ one offloaded layer in transit, on the main GPU)
    share: int = 1  # tensor parallelism: the card holds 1/share of every layer, of the embedding and of the head
    contexts: int = 1  # CUDA contexts on the card (in `workspace`): 2 where a tensor-parallel follower runs

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.workspace

    @property
    def spare(self) -> int:
        return self.gpu.free_bytes - self.total

    def describe(self) -> str:
        if self.share > 1:
            parts = [f"1/{self.share} of every layer, of the embedding and of lm_head"]
        else:
            parts = ["embedding"] if self.embedding else []
            if self.layers:
                parts.append(f"layers {self.first_layer}-{self.first_layer + self.layers - 1}")
            if self.head:
                parts.append("norm + lm_head")
        return (
            f"GPU {self.gpu.index}: {', '.join(parts)}; {gib(self.total)} of {gib(self.gpu.free_bytes)} free "
            f"(weights {gib(self.weights)}, KV cache {gib(self.kv_cache)}, workspace {gib(self.workspace)}"
            + (", with the first card's process's CUDA context)" if self.contexts > 1 else ")")
        )


@dataclass(frozen=True)
class Placement:
    """Which card (or the CPU) holds each part of the model, with every card's bytes."""

    model: PlannedModel
    context: int
    slots: int
    path: str
    cards: tuple[CardLoad, ...]
    cpu_layers: int = 0  # the last layers, kept in RAM (only with allow_cpu_offload)
    cpu_bytes: int = 0
    warning: str = ""  # set when layers are offloaded: the expected speed

    @property
    def single_card(self) -> bool:
        return len(self.cards) == 1 and not self.cpu_layers

    @property
    def tensor_parallel(self) -> bool:
        return self.cards[0].share > 1

    def layer_devices(self) -> list[int | str]:
        """Each decoder layer's CUDA index (or "cpu"), in order: where the fast engine puts a layer and its cache."""
        if self.tensor_parallel:
            raise ValueError("With tensor parallelism every card holds a share of every layer, not whole layers")
        devices: list[int | str] = []
        for card in self.cards:
            devices += [card.gpu.index] * card.layers
        return devices + [CPU] * self.cpu_layers

    def device_map(self) -> dict[str, int | str]:
        """The `device_map` for `from_pretrained`, naming every module of a Qwen2ForCausalLM: transformers 5 puts
        a module the map leaves out (rotary_emb's inv_freq buffer) on the CPU, so it sits with the embedding."""
        embedding = next(card.gpu.index for card in self.cards if card.embedding)
        head = next(card.gpu.index for card in self.cards if card.head)
        mapping: dict[str, int | str] = {"model.embed_tokens": embedding, "model.rotary_emb": embedding}
        mapping.update({f"model.layers.{i}": device for i, device in enumerate(self.layer_devices())})
        return {**mapping, "model.norm": head, "lm_head": head}

    def summary(self) -> str:
        where = (
            "one GPU" if self.single_card else f"{len(self.cards)} GPUs" + ", tensor parallel" * self.tensor_parallel
        )
        lines = [f"{self.model.name} at {self.context:,} tokens of context ({self.path} path) on {where}:"]
        lines += [f"  {card.describe()}" for card in self.cards]
        if self.cpu_layers:
            layers = self.model.shape.num_layers
            lines.append(f"  CPU: layers {layers - self.cpu_layers}-{layers - 1}")
            lines.append(self.warning)
        return "\n".join(lines)


class PlacementRefused(CheckpointError):
    """No placement holds the model on these cards at this context; the numbers and what to do instead."""

    def __init__(
        self, problem: str, fix: str, *, needed: dict[int, int], available: dict[int, int], largest_context: int
    ) -> None:
        super().__init__(problem, fix)
        self.needed = needed  # CUDA index -> bytes the most balanced split asks of that card
        self.available = available  # CUDA index -> free bytes
        self.largest_context = largest_context  # 0: not even the weights fit
        self.kv_cache = "fp16"  # the KV cache's format these figures were planned with (`fit.fit` sets it)


@dataclass(frozen=True)
class _Costs:
    """The bytes of each part at one context, from memory_plan's terms."""

    layer_weights: int
    layer_kv: int
    embedding: int
    head: int
    workspace: int
    ends_fixed: bool  # the fast engine: embedding with the first layers, head with the last (one graph per card)
    tied_copy: int = 0  # the fast engine gives a tied head its own copy of the embedding on another card

    def ends(self, embedding: bool, head: bool) -> int:
        """The bytes of the embedding and of the head (with a tied head's copy) a card holds."""
        return embedding * self.embedding + head * (self.head + (not embedding) * self.tied_copy)

    def load(self, layers: int, embedding: bool, head: bool, extra: int) -> int:
        """A card's bytes; 0 for a card that holds nothing (it gets no CUDA context either)."""
        if not (layers or embedding or head or extra):
            return 0
        return self.workspace + extra + layers * (self.layer_weights + self.layer_kv) + self.ends(embedding, head)


def _costs(model: PlannedModel, context: int, slots: int, path: str, world: int = 1) -> _Costs:
    """`world`: the cards of a tensor-parallel split (their workspace is a share's prefill; the rest is whole)."""
    _, _, activations = requirement(model, context, path=path, slots=slots, world=world)
    shape, scale = model.shape, real_share(model)  # the checkpoint's real size where known
    embedding = int(embedding_bytes(shape) * scale)
    return _Costs(
        layer_weights=int(layer_weight_bytes(model) * scale),
        layer_kv=context * slots * shape.kv_bytes_per_token // shape.num_layers,
        embedding=embedding,
        head=int(lm_head_bytes(shape) * scale),
        workspace=activations + CUDA_CONTEXT_BYTES + OVERHEAD_BYTES,
        ends_fixed=path == "fast",
        tied_copy=embedding if path == "fast" and shape.tie_word_embeddings else 0,
    )


def _ends(count: int, tied: bool, fixed: bool) -> Iterator[tuple[int, int]]:
    """(embedding card, head card) positions to try, first card / last card first; a tied head shares its card.

    `fixed`: only the first card and the last, as the fast engine runs them (a tied head is copied there)."""
    if fixed:
        yield (0, count - 1)
        return
    pairs = [(e, h) for e in range(count) for h in range(count) if e == h or not tied]
    yield from sorted(pairs, key=lambda pair: pair != (0, count - 1))


def _holds(costs: _Costs, gpus: Sequence[GpuSpec], layers: int, extra: Sequence[int], tied: bool) -> bool:
    """Whether some placement fits: with the ends on some pair of cards, the cards' room for layers adds up."""
    per_layer = costs.layer_weights + costs.layer_kv
    for e, h in _ends(len(gpus), tied, costs.ends_fixed):
        capacity = 0
        for c, gpu in enumerate(gpus):
            held = costs.load(0, c == e, c == h, extra[c])  # what it must hold besides layers (0: nothing)
            room = gpu.free_bytes - (held or costs.workspace)
            if room < 0 and held:
                break
            capacity += max(room, 0) // per_layer
        else:
            if capacity >= layers:
                return True
    return False


def _balanced(
    costs: _Costs, gpus: Sequence[GpuSpec], layers: int, extra: Sequence[int], tied: bool
) -> tuple[float, tuple[int, int], list[int]]:
    """The layer counts and ends with the smallest largest load / free ratio (which may exceed 1: does not fit).

    Handing out layers one at a time to the card whose ratio stays lowest is optimal for loads that only grow."""

    def ratio(c: int, count: int, ends: tuple[int, int]) -> float:
        load = costs.load(count, c == ends[0], c == ends[1], extra[c])
        if gpus[c].free_bytes <= 0:
            return float("inf") if load else 0.0
        return load / gpus[c].free_bytes

    best: tuple[float, tuple[int, int], list[int]] | None = None
    for ends in _ends(len(gpus), tied, costs.ends_fixed):
        counts = [0] * len(gpus)
        for _ in range(layers):
            c = min(range(len(gpus)), key=lambda c: (ratio(c, counts[c] + 1, ends), c))
            counts[c] += 1
        worst = max(ratio(c, counts[c], ends) for c in range(len(gpus)))
        if best is None or worst < best[0]:
            best = (worst, ends, counts)
    assert best is not None  # at least one GPU: checked by plan_placement
    return best


def _loads(
    costs: _Costs, gpus: Sequence[GpuSpec], ends: tuple[int, int], counts: Sequence[int], extra: Sequence[int]
) -> tuple[CardLoad, ...]:
    cards, first = [], 0
    for c, gpu in enumerate(gpus):
        embedding, head = c == ends[0], c == ends[1]
        if costs.load(counts[c], embedding, head, extra[c]):
            weights = counts[c] * costs.layer_weights + costs.ends(embedding, head)
            kv = counts[c] * costs.layer_kv
            cards.append(CardLoad(gpu, first, counts[c], embedding, head, weights, kv, costs.workspace + extra[c]))
        first += counts[c]
    return tuple(cards)


def _single_card_order(gpus: Sequence[GpuSpec]) -> list[GpuSpec]:
    """GPU 0 first (the app's default device), then the one with the most free memory."""
    return sorted(gpus, key=lambda gpu: (gpu.index != 0, -gpu.free_bytes))


def largest_context(model: PlannedModel, gpus: Sequence[GpuSpec], *, path: str = "fast", slots: int = 1) -> int:
    """The longest context (up to the model's own limit) that some placement on the GPUs holds; 0 if none."""
    no_extra = [0] * len(gpus)

    def holds(context: int) -> bool:
        costs = _costs(model, context, slots, path)
        return _holds(costs, gpus, model.shape.num_layers, no_extra, model.shape.tie_word_embeddings)

    return _longest(model, holds) if gpus else 0


def _longest(model: PlannedModel, holds: Callable[[int], bool]) -> int:
    """The longest context up to the model's own limit for which `holds` is true (it only gets harder); 0 if none."""
    if not holds(1):
        return 0
    low, high = 1, model.shape.max_position_embeddings
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if holds(middle) else (low, middle - 1)
    return low


def plan_placement(
    model: PlannedModel,
    gpus: Sequence[GpuSpec],
    context: int,
    *,
    path: str = "fast",
    slots: int = 1,
    split: bool = False,
    allow_cpu_offload: bool = False,
) -> Placement:
    """Where each part of the model goes on `gpus` for `slots` sequences of `context` tokens, or PlacementRefused.

    One card when one holds it (unless `split`), else the layers spread over all of `gpus` (the ones the user
    named, or every visible one); with `allow_cpu_offload` (plain path) the layers that do not fit go to RAM."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, not {path!r}")
    if allow_cpu_offload and path != "plain":
        raise ValueError(
            "CPU offload runs on the plain path (accelerate's hooks); the fast engine keeps layers on GPUs"
        )
    costs = _costs(model, context, slots, path)
    layers, tied = model.shape.num_layers, model.shape.tie_word_embeddings
    if not split:
        for gpu in _single_card_order(gpus):
            if _holds(costs, [gpu], layers, [0], tied):
                return Placement(model, context, slots, path, _loads(costs, [gpu], (0, 0), [layers], [0]))
    if gpus and _holds(costs, gpus, layers, [0] * len(gpus), tied):
        _, ends, counts = _balanced(costs, gpus, layers, [0] * len(gpus), tied)
        return Placement(model, context, slots, path, _loads(costs, gpus, ends, counts, [0] * len(gpus)))
    if allow_cpu_offload and gpus:
        offloaded = _offload(model, costs, gpus, context, slots)
        if offloaded is not None:
            return offloaded
    raise _refusal(model, costs, gpus, context, path, slots)


def plan_tensor_parallel(model: PlannedModel, gpus: Sequence[GpuSpec], context: int, *, slots: int = 1) -> Placement:
    """Every layer, the embedding and the head split evenly over all of `gpus` (tensor parallelism, fast engine):
    each card holds 1/N of the weights and of the KV cache, and a whole workspace. Or PlacementRefused."""
    cards = _tensor_parallel_loads(model, gpus, context, slots)
    if cards and all(card.spare >= 0 for card in cards):
        return Placement(model, context, slots, "fast", cards)
    longest = largest_tensor_parallel_context(model, gpus, slots=slots)
    asks = "; ".join(
        f"GPU {card.gpu.index} needs {gib(card.total)}, has {gib(card.gpu.free_bytes)} free" for card in cards
    )
    problem = (
        f"{model.name} does not fit on {len(gpus)} GPUs at {context:,} tokens of context with tensor parallelism: "
        f"{asks}. "
        + (f"The longest context that fits: {longest:,} tokens." if longest else "Not even the weights fit.")
    )
    fix = shorter_context(longest) if longest else "use more or larger GPUs"
    raise PlacementRefused(
        problem,
        fix,
        needed={card.gpu.index: card.total for card in cards},
        available={g.index: g.free_bytes for g in gpus},
        largest_context=longest,
    )


def _tensor_parallel_loads(
    model: PlannedModel, gpus: Sequence[GpuSpec], context: int, slots: int
) -> tuple[CardLoad, ...]:
    n, layers = len(gpus), model.shape.num_layers
    costs = _costs(model, context, slots, "fast", world=max(n, 1))
    weights = (layers * costs.layer_weights + costs.embedding + costs.head) // max(n, 1)
    kv = layers * costs.layer_kv // max(n, 1)
    # The first card's process reads every card's free memory (planning, the page's GPU table), which leaves a
    # CUDA context of its own on each follower's card: seen as 806 MiB on the second of two H200s.
    contexts = [1] + [2] * (n - 1)
    return tuple(
        CardLoad(gpu, 0, layers, True, True, weights, kv, costs.workspace + (k - 1) * CUDA_CONTEXT_BYTES, n, k)
        for gpu, k in zip(gpus, contexts, strict=True)
    )


def largest_tensor_parallel_context(model: PlannedModel, gpus: Sequence[GpuSpec], *, slots: int = 1) -> int:
    """The longest context (up to the model's own limit) that tensor parallelism over all of `gpus` holds; 0 if none."""

    def holds(context: int) -> bool:
        cards = _tensor_parallel_loads(model, gpus, context, slots)
        return bool(cards) and all(card.spare >= 0 for card in cards)

    return _longest(model, holds)


def _offload(model: PlannedModel, costs: _Costs, gpus: Sequence[GpuSpec], context: int, slots: int) -> Placement | None:
    """The fewest last layers left in RAM. accelerate runs them on the lowest-numbered GPU (its main device):
    that card holds their KV cache and, in turn, one of them copied over."""
    main = min(range(len(gpus)), key=lambda c: gpus[c].index)
    shape = model.shape
    for cpu_layers in range(1, shape.num_layers + 1):
        extra = [0] * len(gpus)
        extra[main] = cpu_layers * costs.layer_kv + costs.layer_weights
        on_gpus = shape.num_layers - cpu_layers
        if _holds(costs, gpus, on_gpus, extra, shape.tie_word_embeddings):
            _, ends, counts = _balanced(costs, gpus, on_gpus, extra, shape.tie_word_embeddings)
            cpu_bytes = cpu_layers * costs.layer_weights
            speed = PCIE_BYTES_PER_S / cpu_bytes
            warning = (
                f"WARNING: CPU offload: {cpu_layers} of {shape.num_layers} layers ({gib(cpu_bytes)}) stay in RAM and "
                f"are copied to GPU {gpus[main].index} for every token. Expect at most {speed:.1f} tokens/s: "
                f"{PCIE_BYTES_PER_S / 1e9:.0f} GB/s (PCIe 4.0 x16 at best) / {cpu_bytes / 1e9:.1f} GB per token, "
                "often much less. A shorter context, more GPUs or vLLM with tensor parallelism keep it on the GPUs."
            )
            log.warning(warning)
            kv = cpu_layers * costs.layer_kv  # counted as the main card's KV cache, not as its workspace
            cards = tuple(
                replace(card, kv_cache=card.kv_cache + kv, workspace=card.workspace - kv)
                if card.gpu is gpus[main]
                else card
                for card in _loads(costs, gpus, ends, counts, extra)
            )
            return Placement(model, context, slots, "plain", cards, cpu_layers, cpu_bytes, warning)
    return None


def _refusal(
    model: PlannedModel, costs: _Costs, gpus: Sequence[GpuSpec], context: int, path: str, slots: int
) -> PlacementRefused:
    """The most even split's numbers against each card's free memory, and the ways out."""
    if not gpus:
        return PlacementRefused(
            f"No GPU to place {model.name} on",
            "use a machine with an NVIDIA GPU (the demo model runs on the CPU)",
            needed={},
            available={},
            largest_context=0,
        )
    shape, no_extra = model.shape, [0] * len(gpus)
    _, ends, counts = _balanced(costs, gpus, shape.num_layers, no_extra, shape.tie_word_embeddings)
    cards = _loads(costs, gpus, ends, counts, no_extra)
    longest = largest_context(model, gpus, path=path, slots=slots)
    sequences = f", {slots} sequences" if slots > 1 else ""
    kv = context * slots * shape.kv_bytes_per_token
    asks = "; ".join(
        f"GPU {card.gpu.index} needs {gib(card.total)}, has {gib(card.gpu.free_bytes)} free" for card in cards
    )
    problem = (
        f"{model.name} does not fit on {len(gpus)} GPU{'s' * (len(gpus) > 1)} at {context:,} tokens of context "
        f"({path} path{sequences}): weights {gib(total_weight_bytes(model))} + KV cache {gib(kv)}"
        f" + workspace {gib(costs.workspace)} per card. {'The most even split' if len(gpus) > 1 else 'Here'}: {asks}. "
        + (f"The longest context that fits: {longest:,} tokens." if longest else "Not even the weights fit.")
    )
    fixes = [shorter_context(longest)] if longest else []
    bigger = _smallest_setup(model, context, path, slots)
    if bigger is not None:
        count = f"one {bigger[1]} GiB card holds" if bigger[0] == 1 else f"{bigger[0]} cards of {bigger[1]} GiB hold"
        fixes.append(f"use more or larger GPUs ({count} {context:,} tokens)")
    if longest and shape.kv_cache == "fp16":  # the weights fit: the cache's format decides the context
        engine = " with `--engine fast`" if path == "plain" else ""
        twice = "store the KV cache in 8 bits, about twice the context on the same cards"
        fixes.append(f"{twice}: `--kv-cache int8`{engine}")
    if path == "plain":
        fixes.append("allow CPU offload: the layers that do not fit stay in RAM (very slow)")
    return PlacementRefused(
        problem,
        "; or ".join(fixes),
        needed={card.gpu.index: card.total for card in cards},
        available={gpu.index: gpu.free_bytes for gpu in gpus},
        largest_context=longest,
    )


def shorter_context(longest: int) -> str:
    """The fix that says how long a context does fit, rounded down to the slider's steps of 256 tokens."""
    return f"choose at most {longest // 256 * 256 or longest:,} tokens of context"


def standard_gpus(cards: int, card_gib: int) -> list[GpuSpec]:
    """`cards` empty cards of `card_gib` GiB: the setups of the table."""
    return [GpuSpec(i, card_gib * GIB, card_gib * GIB) for i in range(cards)]


def _smallest_setup(model: PlannedModel, context: int, path: str, slots: int) -> tuple[int, int] | None:
    """The table's setup with the least memory in all (fewest cards on a tie) that holds the context."""
    shape = model.shape
    if context > shape.max_position_embeddings:
        return None
    costs = _costs(model, context, slots, path)
    setups = sorted(((n, size) for n in CARD_COUNTS for size in CARD_SIZES_GIB), key=lambda s: (s[0] * s[1], s[0]))
    for cards, size in setups:
        if _holds(costs, standard_gpus(cards, size), shape.num_layers, [0] * cards, shape.tie_word_embeddings):
            return cards, size
    return None


@dataclass(frozen=True)
class Setup:
    """A model on `cards` empty cards of `card_gib` GiB: whether it holds the context, and the longest it holds."""

    cards: int
    card_gib: int
    fits: bool
    largest_context: int


def _at_most(tokens: int) -> str:
    return f"<={tokens // 1024}k" if tokens >= 1024 else f"<={tokens}"


@dataclass(frozen=True)
class NeedsRow:
    """One model against every setup of the table."""

    model: PlannedModel
    context: int
    setups: tuple[Setup, ...]

    def compact(self, card_gib: int) -> str:
        """`download.py --list`'s cell for one card size: the fewest cards that hold the context ("yes" for one,
        "x2", "x4"), else the longest context the most cards hold ("x4 <=3k"), else "no"."""
        sized = [setup for setup in self.setups if setup.card_gib == card_gib]
        fitting = [setup.cards for setup in sized if setup.fits]
        if fitting:
            return "yes" if min(fitting) == 1 else f"x{min(fitting)}"
        most = max(sized, key=lambda setup: setup.cards)
        return f"x{most.cards} {_at_most(most.largest_context)}" if most.largest_context else "no"


def needs_row(
    model: PlannedModel,
    context: int = 8192,
    *,
    path: str = "fast",
    slots: int = 1,
    cards: Sequence[int] = CARD_COUNTS,
    card_gib: Sequence[int] = CARD_SIZES_GIB,
) -> NeedsRow:
    """`model` on each of `cards` x `card_gib` (empty cards, all of each card's memory free)."""
    shape, costs = model.shape, _costs(model, context, slots, path)
    setups = []
    for size in card_gib:
        for count in cards:
            gpus = standard_gpus(count, size)
            fits = context <= shape.max_position_embeddings and _holds(
                costs, gpus, shape.num_layers, [0] * count, shape.tie_word_embeddings
            )
            setups.append(Setup(count, size, fits, largest_context(model, gpus, path=path, slots=slots)))
    return NeedsRow(model, context, tuple(setups))
