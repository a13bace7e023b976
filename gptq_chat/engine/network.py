"""The decoder network for Llama-family GPTQ checkpoints (Qwen1.5/2/2.5, Llama, Mistral, SmolLM2), built for decoding.

Unlike the transformers model it has static shapes everywhere a decode step touches: a KV cache
allocated once, positions and tokens as tensors, and attention over a fixed-length window of the
cache. That is what lets `fast_engine.py` capture a decode step as one CUDA graph. Projections that
share an input are fused (`quant_linear.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from gptq_chat.engine.one_shot_reduce import OneShotReduce
from gptq_chat.engine.quant_linear import GPTQ_PARTS, build_quant_linear, columns_of, fuse_gptq_tensors, rows_of
from gptq_chat.engine.quantized_attention import attend_quantized, store_quantized
from gptq_chat.engine.shape import GPTQSettings, ModelShape, engine_problem, tensor_parallel_problem


class UnsupportedModel(ValueError):
    """The checkpoint needs something this network does not do; the plain path still runs it."""


class RMSNorm(nn.Module):
    """Holds a norm's weight; the arithmetic is in `rms_norm`, so it can be fused with what comes before."""

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As in transformers: normalise in float32, scale in the model's dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """The residual add and the next norm: one kernel once compiled."""
    x = x + delta
    return x, rms_norm(x, weight, eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def split_rotate(qkv: torch.Tensor, table: torch.Tensor, positions: torch.Tensor, heads: int, kv_heads: int, dim: int):
    """Fused q/k/v output → q, k (rotary applied) and v, each [B, heads, T, dim]."""
    batch, steps, _ = qkv.shape
    q, k, v = qkv.split((heads * dim, kv_heads * dim, kv_heads * dim), dim=-1)
    q = q.view(batch, steps, heads, dim).transpose(1, 2)
    k = k.view(batch, steps, kv_heads, dim).transpose(1, 2)
    v = v.view(batch, steps, kv_heads, dim).transpose(1, 2)
    cos, sin = table[0][positions].unsqueeze(1), table[1][positions].unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v


def silu_mul(gate_up: torch.Tensor, intermediate: int) -> torch.Tensor:
    gate, up = gate_up.split(intermediate, dim=-1)
    return F.silu(gate) * up


def whole(x: torch.Tensor) -> torch.Tensor:
    """A projection's output on one card is already the whole sum."""
    return x


@dataclass(frozen=True)
class Shard:
    """This process's part of a tensor-parallel model: card `rank` of `world`, one process each.

    Every card holds 1/world of each layer's heads and MLP rows (q/k/v and gate/up split by output
    features, o and down by input features) and of the vocabulary, so a decode step reads 1/world of
    the weights on each card at once. The partial sums of o and down are added over the cards (an
    all-reduce through `torch.distributed`, NCCL on GPUs, captured in the CUDA graphs with the rest; small ones
    through `one_shot`, where the group has one: engine/one_shot_reduce.py).
    """

    rank: int
    world: int
    one_shot: OneShotReduce | None = None

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_shot is not None and self.one_shot.takes(x):
            return self.one_shot.reduce(x)
        dist.all_reduce(x)
        return x

    def rows(self, count: int) -> tuple[int, int]:
        """This card's share of `count` rows (heads' features, MLP rows, vocabulary entries)."""
        size = count // self.world
        return self.rank * size, (self.rank + 1) * size

    def embed(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Look up the ids this card's part of the vocabulary holds (zeros for the others), then sum."""
        local = ids - self.rank * table.shape[0]
        outside = (local < 0) | (local >= table.shape[0])
        x = F.embedding(local.masked_fill(outside, 0), table).masked_fill(outside.unsqueeze(-1), 0)
        return self.reduce(x)

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every card's logits for its part of the vocabulary, side by side: the whole vocabulary on every card."""
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts, dim=-1)

    def agree(self, chosen: torch.Tensor) -> torch.Tensor:
        """The first card's choice of tokens, on every card (sampling draws random numbers on each)."""
        chosen = chosen.contiguous()
        dist.broadcast(chosen, src=0)
        return chosen


@dataclass(frozen=True)
class SmallOps:
    """The elementwise work between GEMMs. Eager by default (the plain path's exact numerics);
    `compiled()` lets torch.compile fuse each into one kernel, which a GPU decode step needs:
    eager, they are ~30 of the ~40 kernel launches per layer.
    """

    norm: Callable = rms_norm
    add_norm: Callable = add_rms_norm
    rotate: Callable = split_rotate
    silu_mul: Callable = silu_mul
    reduce: Callable = whole  # sums a projection's partial outputs over the cards (tensor parallelism)

    @classmethod
    def compiled(cls) -> SmallOps:
        return cls(*(torch.compile(fn, fullgraph=True) for fn in (rms_norm, add_rms_norm, split_rotate, silu_mul)))


def rope_tables(shape: ModelShape, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """cos and sin for every position, stacked: [2, length, head_dim]."""
    exponent = torch.arange(0, shape.head_dim, 2, dtype=torch.int64).float() / shape.head_dim
    inv_freq = 1.0 / (shape.rope_theta**exponent)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return torch.stack((angles.cos(), angles.sin())).to(device=device, dtype=dtype)


@dataclass(frozen=True)
class CacheRows:
    """Where a forward writes K/V: cache rows `first`.. (one per sequence), at `positions`, or from `start` on."""

    first: int = 0
    start: int | None = None


KV_STORAGE = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}  # 8-bit formats, each value with a per-token scale


class KVCache(nn.Module):
    """K and V for `slots` sequences of up to `length` tokens, allocated once, in the shape's `kv_cache` format.

    8-bit formats keep, beside K and V, one scale per token and head for each ([slots, kv_heads, length, 1]):
    half the bytes per token of context, so twice the context in the same memory.
    """

    def __init__(self, shape: ModelShape, slots: int, length: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        size = (slots, shape.num_kv_heads, length, shape.head_dim)
        self.quantized = shape.kv_cache != "fp16"
        stored = KV_STORAGE[shape.kv_cache] if self.quantized else dtype
        self.register_buffer("k", torch.zeros(size, device=device, dtype=stored), persistent=False)
        self.register_buffer("v", torch.zeros(size, device=device, dtype=stored), persistent=False)
        if self.quantized:
            scales = (*size[:3], 1)
            self.register_buffer("k_scale", torch.zeros(scales, device=device, dtype=dtype), persistent=False)
            self.register_buffer("v_scale", torch.zeros(scales, device=device, dtype=dtype), persistent=False)

    def parts(self) -> list[torch.Tensor]:
        """Every tensor that holds a token's entry, each [slots, kv_heads, length, width]."""
        return [self.k, self.v, self.k_scale, self.v_scale] if self.quantized else [self.k, self.v]

    def store(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, rows: CacheRows) -> None:
        """Write new K/V [B, kv_heads, T, dim] of rows `rows.first`.. at `positions` [B, T]."""
        batch, _, steps, _ = k.shape
        if self.quantized:
            parts = [part[rows.first : rows.first + batch] for part in self.parts()]
            store_quantized(k, positions, parts[0], parts[2][..., 0])
            store_quantized(v, positions, parts[1], parts[3][..., 0])
            return
        for part, value in ((self.k, k), (self.v, v)):
            target = part[rows.first : rows.first + batch]
            if rows.start is not None:  # a run of positions: a plain copy, ~3x faster than the scatter below
                target[:, :, rows.start : rows.start + steps] = value
            else:
                index = torch.arange(batch, device=k.device).unsqueeze(-1)
                target[index, :, positions] = value.transpose(1, 2)

    def window(self, rows: CacheRows, batch: int, window: int) -> list[torch.Tensor]:
        """The first `window` entries of `batch` rows from `rows.first`: views of `parts()`, nothing copied."""
        return [part[rows.first : rows.first + batch, :, :window] for part in self.parts()]


# cuDNN's attention builds a plan for every new prompt length (~60-100 ms on an H100/H200, measured):
# prompts seldom repeat their length, so they use flash attention. Decode steps have fixed shapes per graph.
PROMPT_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attend_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """PyTorch's fused attention called as transformers calls it, so eager runs match the plain path.

    `mask` None means the keys are exactly the tokens up to the last query: causal for a prompt,
    nothing to mask for a single new token.
    """
    steps, grouped = q.shape[2], q.shape[1] != k.shape[1]
    if steps == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=grouped)
    with sdpa_kernel(PROMPT_BACKENDS):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=grouped)


def attend_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention as two batched GEMMs; grouped-query heads share K/V without copying them.

    q [B, H, T, D], k/v [B, KV, L, D], mask [B, 1, T, L] (additive: 0 or -inf) → [B, H, T, D].
    Plain GEMMs spread a decode step's single query over the whole cache length, where fused
    attention kernels parallelise over heads only.
    """
    batch, heads, steps, dim = q.shape
    groups = heads // k.shape[1]
    q = q.reshape(batch, k.shape[1], groups * steps, dim)
    scores = torch.matmul(q.float(), k.transpose(-1, -2).float()) * dim**-0.5
    scores = scores.view(batch, k.shape[1], groups, steps, -1)
    if mask is not None:
        scores = scores + mask.unsqueeze(1)
    elif steps > 1:
        scores = scores + torch.full((steps, steps), float("-inf"), device=q.device).triu(1)
    probs = scores.softmax(dim=-1).to(v.dtype).view(batch, k.shape[1], groups * steps, -1)
    return torch.matmul(probs, v).view(batch, heads, steps, dim)


ATTENTION = {"sdpa": attend_sdpa, "matmul": attend_matmul}


class Attention(nn.Module):
    def __init__(self, shape: ModelShape, qkv: nn.Module, o: nn.Module, decode_attention: str = "sdpa") -> None:
        super().__init__()
        self.decode_attend = ATTENTION[decode_attention]  # prompts always use SDPA (flash attention)
        self.shape = shape
        self.qkv = qkv
        self.o = o

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        cache: KVCache,
        positions: torch.Tensor,
        mask: torch.Tensor,
        window: int,
        rows: CacheRows,
        ops: SmallOps,
    ) -> torch.Tensor:
        batch, steps, _ = x.shape
        s = self.shape
        q, k, v = ops.rotate(self.qkv(x), rope, positions, s.num_heads, s.num_kv_heads, s.head_dim)
        cache.store(k, v, positions, rows)
        if cache.quantized and rows.start == 0 and window == steps:  # a whole prompt: its own K/V, as computed
            out = attend_sdpa(q, k, v, None)
        elif cache.quantized:  # the 8-bit entries read as they are, scales applied inside the attention
            keys, values, key_scales, value_scales = cache.window(rows, batch, window)
            out = attend_quantized(q, keys, key_scales[..., 0], values, value_scales[..., 0], positions)
        else:
            attend = self.decode_attend if steps == 1 else attend_sdpa
            out = attend(q, *cache.window(rows, batch, window), mask)
        return self.o(out.transpose(1, 2).reshape(batch, steps, -1))


class FeedForward(nn.Module):
    def __init__(self, gate_up: nn.Module, down: nn.Module, intermediate: int) -> None:
        super().__init__()
        self.gate_up = gate_up
        self.down = down
        self.intermediate = intermediate

    def forward(self, x: torch.Tensor, ops: SmallOps) -> torch.Tensor:
        return self.down(ops.silu_mul(self.gate_up(x), self.intermediate))


class Block(nn.Module):
    def __init__(self, attention: Attention, mlp: FeedForward, norm1: RMSNorm, norm2: RMSNorm) -> None:
        super().__init__()
        self.attention, self.mlp, self.norm1, self.norm2 = attention, mlp, norm1, norm2

    def forward(self, x, normed, next_norm, ops, rope, cache, positions, mask, window, rows):
        """`normed` is this block's input already normalised; returns the output and it normalised by `next_norm`
        (None for the last layer on a card: the next card's first layer normalises, its weight is there)."""
        attended = ops.reduce(self.attention(normed, rope, cache, positions, mask, window, rows, ops))
        x, normed = ops.add_norm(x, attended, self.norm2.weight, self.norm2.eps)
        out = ops.reduce(self.mlp(normed, ops))
        if next_norm is None:
            return x + out, None
        return ops.add_norm(x, out, next_norm.weight, next_norm.eps)


@dataclass(frozen=True)
class Segment:
    """Consecutive layers on one device: what a model split over GPUs runs (and captures) per card."""

    device: torch.device
    first: int
    end: int  # one past the last layer


def segments_of(layer_devices: list[torch.device]) -> list[Segment]:
    """Runs of consecutive layers on the same device, in order."""
    segments: list[Segment] = []
    for i, device in enumerate(layer_devices):
        if segments and segments[-1].device == device:
            segments[-1] = Segment(device, segments[-1].first, i + 1)
        else:
            segments.append(Segment(device, i, i + 1))
    return segments


def additive_mask(positions: torch.Tensor, window: int, dtype: torch.dtype) -> torch.Tensor:
    """0 where a key (of the first `window` cache entries) is at or before the query's position, else -inf.

    Made once per step and device: a boolean mask would be converted again in every layer.
    """
    keys = torch.arange(window, device=positions.device)
    visible = keys.view(1, 1, 1, window) <= positions.unsqueeze(-1).unsqueeze(1)
    mask = torch.zeros(visible.shape, dtype=dtype, device=positions.device)
    return mask.masked_fill(~visible, float("-inf"))


class Transformer(nn.Module):
    """The decoder; its layers may lie on several devices (`segments`), the embedding with the first and the
    final norm and head with the last. With a `shard`, this process's part of a tensor-parallel model."""

    def __init__(
        self,
        shape: ModelShape,
        embed: torch.Tensor,
        blocks: list[Block],
        norm: RMSNorm,
        head: torch.Tensor | None,
        segments: list[Segment] | None = None,
        shard: Shard | None = None,
    ):
        super().__init__()
        self.shape = shape
        self.embed = nn.Parameter(embed, requires_grad=False)
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm
        self.segments = segments or [Segment(embed.device, 0, len(blocks))]
        if head is None:  # tied: the head is the embedding, on the last device
            head = embed if self.output_device == embed.device else embed.to(self.output_device)
        self.head = nn.Parameter(head, requires_grad=False)
        self.caches: list[KVCache] = []
        self.ropes: list[torch.Tensor] = []  # per segment
        self.shard = shard
        self.ops = SmallOps(reduce=shard.reduce) if shard else SmallOps()

    def compile_small_ops(self) -> None:
        """Fuse the elementwise work with torch.compile (GPU); compiled on first use."""
        self.ops = replace(SmallOps.compiled(), reduce=self.ops.reduce)

    def agree(self, chosen: torch.Tensor) -> torch.Tensor:
        """Sampled tokens, the same on every card of a tensor-parallel model."""
        return self.shard.agree(chosen) if self.shard else chosen

    @property
    def device(self) -> torch.device:
        """Where tokens go in."""
        return self.embed.device

    @property
    def output_device(self) -> torch.device:
        """Where logits come out."""
        return self.segments[-1].device

    def setup_caches(self, slots: int, length: int) -> None:
        """Allocate the KV cache once, each layer's on its device: `slots` sequences of up to `length` tokens."""
        dtype = self.embed.dtype
        self.caches = [
            KVCache(self.shape, slots, length, segment.device, dtype)
            for segment in self.segments
            for _ in range(segment.first, segment.end)
        ]
        self.ropes = [rope_tables(self.shape, length, segment.device, dtype) for segment in self.segments]

    @property
    def cache_length(self) -> int:
        return self.caches[0].k.shape[2] if self.caches else 0

    def run_segment(
        self, index: int, x: torch.Tensor, positions: torch.Tensor, window: int, rows: CacheRows, exact: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layers of one segment, all tensors on its device; the first segment takes token ids as `x`.

        Returns the hidden state, and after the last segment also it normalised by the final norm.
        """
        segment = self.segments[index]
        if index == 0:
            x = self.shard.embed(x, self.embed) if self.shard else F.embedding(x, self.embed)
        first = self.blocks[segment.first].norm1
        normed = self.ops.norm(x, first.weight, first.eps)
        # an 8-bit cache's attention masks by the positions themselves: no additive mask to build
        quantized = self.caches[segment.first].quantized
        mask = None if exact or quantized else additive_mask(positions, window, self.embed.dtype)
        for i in range(segment.first, segment.end):
            if i + 1 == len(self.blocks):
                next_norm = self.norm
            else:
                next_norm = self.blocks[i + 1].norm1 if i + 1 < segment.end else None
            x, normed = self.blocks[i](
                x, normed, next_norm, self.ops, self.ropes[index], self.caches[i], positions, mask, window, rows
            )
        return x, normed

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        window: int,
        first_row: int = 0,
        last_only: bool = True,
        exact: bool = False,
        pick: torch.Tensor | None = None,
        start: int | None = None,
    ) -> torch.Tensor:
        """Logits for `tokens` [B, T] at `positions` [B, T] of cache rows `first_row`..`first_row+B-1`.

        Attention reads the first `window` cache entries of each row, masked to those at or before
        each token's position; a smaller window makes short chats cheaper. `exact` says the window
        ends at the last token and the tokens are all new or just one, so no mask is needed. `pick`
        (a device tensor of one index) chooses the position to return logits for instead of the last.
        `start` says the positions are start, start+1, ... in every row (a prompt), known on the host.
        The hidden state crosses from card to card between segments.
        """
        rows = CacheRows(first_row, start)
        x, normed = tokens, None
        for index, segment in enumerate(self.segments):
            x, positions = x.to(segment.device), positions.to(segment.device)
            x, normed = self.run_segment(index, x, positions, window, rows, exact)
        assert normed is not None  # the last segment ends with the final norm
        return self.logits(normed, last_only, pick)

    def logits(self, normed: torch.Tensor, last_only: bool = True, pick: torch.Tensor | None = None) -> torch.Tensor:
        if pick is not None:
            normed = normed.index_select(1, pick)
        elif last_only:
            normed = normed[:, -1:]
        logits = F.linear(normed, self.head)
        return self.shard.gather(logits) if self.shard else logits


class CheckpointTensors:
    """Lazy access to a checkpoint's tensors by name, across shards."""

    def __init__(self, folder: Path) -> None:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            with safe_open(folder / "model.safetensors", "pt") as handle:
                weight_map = dict.fromkeys(handle.keys(), "model.safetensors")
        self.folder = folder
        self.weight_map: dict[str, str] = weight_map
        self.handles: dict[str, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        file = self.weight_map[name]
        if file not in self.handles:
            self.handles[file] = safe_open(self.folder / file, "pt")
        return self.handles[file].get_tensor(name)  # type: ignore[attr-defined]

    def linear(self, prefix: str) -> dict[str, torch.Tensor]:
        parts = {name: self.get(f"{prefix}.{name}") for name in GPTQ_PARTS}
        if f"{prefix}.bias" in self:
            parts["bias"] = self.get(f"{prefix}.bias")
        return parts


def load_transformer(
    folder: Path,
    backend: str,
    device: torch.device,
    dtype: torch.dtype,
    progress: Callable[[str, float], None] | None = None,
    decode_attention: str = "sdpa",
    layer_devices: list[torch.device] | None = None,
    shard: Shard | None = None,
    kv_cache: str = "fp16",
) -> Transformer:
    """Build the network from a GPTQ checkpoint folder, fusing q/k/v and gate/up as it goes, its KV cache to be
    stored as `kv_cache` (shape.KV_CACHES).

    `layer_devices` (one per layer, in runs) splits the model over GPUs: the embedding goes with the
    first layer, the final norm and the head with the last. Without it everything is on `device`.
    With `shard`, only this card's part of every layer and of the vocabulary is loaded (`Shard`).
    """
    config = json.loads((folder / "config.json").read_text())
    if problem := engine_problem(config):
        raise UnsupportedModel(problem)
    shape = ModelShape.from_config(config).with_kv_cache(kv_cache)
    settings = GPTQSettings.from_config(config["quantization_config"])
    tensors = CheckpointTensors(folder)
    devices = layer_devices or [device] * shape.num_layers
    if len(devices) != shape.num_layers:
        raise ValueError(f"{len(devices)} layer devices given for {shape.num_layers} layers")
    world = shard.world if shard else 1
    if shard and (problem := tensor_parallel_problem(shape, settings, world)):
        raise UnsupportedModel(problem)
    local = shape.split(world)

    def outputs(prefix: str, features: int) -> dict[str, torch.Tensor]:
        """A projection whose `features` output features are split over the cards (q/k/v, gate/up)."""
        parts = tensors.linear(prefix)
        return columns_of(parts, *shard.rows(features), settings.bits) if shard else parts

    def inputs(prefix: str, features: int) -> dict[str, torch.Tensor]:
        """A projection whose `features` input features are split over the cards (o, down)."""
        parts = tensors.linear(prefix)
        return rows_of(parts, *shard.rows(features), settings, keep_bias=shard.rank == 0) if shard else parts

    def quant(on: torch.device, parts: list[dict[str, torch.Tensor]]) -> nn.Module:
        return build_quant_linear(fuse_gptq_tensors(parts), settings, backend, on, dtype)

    def norm(name: str, on: torch.device) -> RMSNorm:
        return RMSNorm(tensors.get(name).to(device=on, dtype=dtype), shape.rms_norm_eps)

    def vocabulary(name: str, on: torch.device) -> torch.Tensor:
        """The embedding or the head: this card's rows of the vocabulary under tensor parallelism."""
        table = tensors.get(name)
        if shard:
            first, end = shard.rows(shape.vocab_size)
            table = table[first:end]
        return table.to(device=on, dtype=dtype)

    q_features, kv_features = shape.q_dim, shape.kv_dim
    mlp_features = shape.intermediate_size
    blocks = []
    for i, on in enumerate(devices):
        if progress:
            progress(f"Preparing layer {i + 1} of {shape.num_layers} on {on}", (i + 1) / shape.num_layers)
        p = f"model.layers.{i}"
        qkv = [
            outputs(f"{p}.self_attn.q_proj", q_features),
            outputs(f"{p}.self_attn.k_proj", kv_features),
            outputs(f"{p}.self_attn.v_proj", kv_features),
        ]
        attention = Attention(
            local, quant(on, qkv), quant(on, [inputs(f"{p}.self_attn.o_proj", q_features)]), decode_attention
        )
        gate_up = [outputs(f"{p}.mlp.gate_proj", mlp_features), outputs(f"{p}.mlp.up_proj", mlp_features)]
        mlp = FeedForward(
            quant(on, gate_up), quant(on, [inputs(f"{p}.mlp.down_proj", mlp_features)]), local.intermediate_size
        )
        blocks.append(
            Block(
                attention,
                mlp,
                norm(f"{p}.input_layernorm.weight", on),
                norm(f"{p}.post_attention_layernorm.weight", on),
            )
        )
    embed = vocabulary("model.embed_tokens.weight", devices[0])
    head = None
    if not shape.tie_word_embeddings and "lm_head.weight" in tensors:
        head = vocabulary("lm_head.weight", devices[-1])
    final_norm = norm("model.norm.weight", devices[-1])
    return Transformer(local, embed, blocks, final_norm, head, segments_of(devices), shard).eval()
