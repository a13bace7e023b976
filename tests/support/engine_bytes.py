"""The bytes the fast engine allocates, counted tensor by tensor as the dispatcher hands them out: what the memory
planner is checked against (test_planner_truth.py, and the figures of test_placement.py and test_doctor.py).

`Allocations` sees every storage an op creates (not views, not results written in place) and follows the tensors on
it by weak references: the bytes still alive afterwards are what the engine keeps, wherever it keeps them; the most
alive at once is a step's peak. It counts the same on the CPU and on the meta device, where tensors have shapes and
dtypes but no memory. So a real Qwen shape's engine is built on the meta device around weights that take no
memory, while the "tiny" checkpoint (Qwen's real 151,936-token vocabulary) is loaded and run on the CPU:
test_planner_truth.py checks that both counts agree.
"""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from gptq_chat.engine.fast_engine import FastEngine
from gptq_chat.engine.network import Attention, Block, FeedForward, RMSNorm, Transformer, load_transformer
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.quant_linear import build_quant_linear
from gptq_chat.engine.shape import GPTQSettings, ModelShape

KIB = 1024
META = torch.device("meta")
CONTEXTS = (1024, 2048)  # both hold the longest prompt chunk (512 tokens): only context-sized buffers differ
# Ids, positions, sampling settings and each slot's hidden state: a few KiB per slot, ~25 KiB for Qwen1.5-72B. The
# planner leaves them to OVERHEAD_BYTES; anything the size of a vocabulary row (150 KB) or more it must count.
SMALL_BUFFERS = 64 * KIB
PROMPT = [9707, 11, 1879, 0, 1246, 525]  # six token ids
SAMPLED = SamplingSettings(max_new_tokens=8, temperature=0.7, top_p=0.9, top_k=20, repetition_penalty=1.1)


class Allocations(TorchDispatchMode):
    """Every storage an op creates while active: the bytes of those still alive (`held`), the most alive at once
    (`peak`). A storage lives while any tensor on it does: the one an op made or any view of it (inference mode keeps
    no link from a view to its base, so each is followed by itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.holders: dict[int, int] = {}  # storage -> tensors on it still alive
        self.sizes: dict[int, int] = {}  # storage -> bytes
        self.now = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        for returned, value in zip(returns, out if len(returns) > 1 else (out,), strict=True):
            # A new storage, unless the op returns a view of an input or an input written in place; but
            # `torch.tensor(data)` builds its tensor outside the dispatcher and hands it in through lift_fresh.
            new = returned.alias_info is None or func is torch.ops.aten.lift_fresh.default
            for tensor in tree_leaves(value):
                if isinstance(tensor, torch.Tensor):
                    self.hold(tensor, new)
        return out

    def hold(self, tensor: torch.Tensor, new: bool) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.holders:
            if not new:
                return  # on a storage made before: the weights, or anything else not counted
            self.holders[key], self.sizes[key] = 0, storage.nbytes()
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
        self.holders[key] += 1
        weakref.finalize(tensor, self.release, key)

    def release(self, key: int) -> None:
        self.holders[key] -= 1
        if not self.holders[key]:
            del self.holders[key]
            self.now -= self.sizes.pop(key)

    def held(self) -> int:
        """Bytes of the storages made so far that are still alive (after collecting the young generations' cycles)."""
        gc.collect(1)
        return self.now


@cache
def network_on_meta(shape: ModelShape) -> Transformer:
    """The decoder of `shape`, its GPTQ linears, norms, embedding and head on the meta device (no memory).

    One block stands for every layer: the engine gives each layer its own KV cache whatever the blocks hold.
    """
    gptq, dtype = GPTQSettings(), torch.float16

    def linear(in_features: int, out_features: int, bias: bool = False) -> torch.nn.Module:
        groups, pack = in_features // gptq.group_size, 32 // gptq.bits
        parts = {
            "qweight": torch.empty(in_features // pack, out_features, dtype=torch.int32, device=META),
            "qzeros": torch.empty(groups, out_features // pack, dtype=torch.int32, device=META),
            "scales": torch.empty(groups, out_features, dtype=dtype, device=META),
            "g_idx": torch.empty(in_features, dtype=torch.int32, device=META),
        }
        if bias:
            parts["bias"] = torch.empty(out_features, dtype=dtype, device=META)
        return build_quant_linear(parts, gptq, "torch_aten", META, dtype)

    def norm() -> RMSNorm:
        return RMSNorm(torch.empty(shape.hidden_size, dtype=dtype, device=META), shape.rms_norm_eps)

    hidden, mlp = shape.hidden_size, shape.intermediate_size
    qkv = linear(hidden, shape.q_dim + 2 * shape.kv_dim, shape.attention_bias)
    attention = Attention(shape, qkv, linear(shape.q_dim, hidden))
    block = Block(attention, FeedForward(linear(hidden, 2 * mlp), linear(mlp, hidden), mlp), norm(), norm())
    embed = torch.empty(shape.vocab_size, hidden, dtype=dtype, device=META)
    head = None if shape.tie_word_embeddings else torch.empty_like(embed)
    return Transformer(shape, embed, [block] * shape.num_layers, norm(), head).eval()


def held_bytes(model: Transformer, context: int, slots: int = 1, prefix_cache: int = 0) -> int:
    """The bytes a fast engine built around `model` keeps (the weights existed before: they are not counted)."""
    with Allocations() as allocations:
        engine = FastEngine(model, context, slots=slots, prefix_cache=prefix_cache)
        held = allocations.held()
    del engine
    return held


@dataclass(frozen=True)
class Footprint:
    """What a fast engine of one shape keeps besides its weights, by what it grows with, in bytes (measured)."""

    per_token: int  # each token of context
    per_entry: Fraction  # each vocabulary entry: whole bytes, and one bit a slot for the grammar mask
    rest: int  # neither (SMALL_BUFFERS)


@cache
def footprint(shape: ModelShape, slots: int = 1) -> Footprint:
    """The engine built on the meta device at two contexts and two vocabularies, its held bytes split by the
    differences: whole bytes per token and whole bits per vocabulary entry, or the engine's buffers do not grow
    linearly with them (the vocabularies are multiples of 32, a grammar mask's word)."""
    first, second = CONTEXTS
    model = network_on_meta(shape)
    base = held_bytes(model, first, slots)
    per_token, left = divmod(held_bytes(model, second, slots) - base, second - first)
    assert left == 0, f"{left} bytes of the engine's buffers do not grow by the token"
    wider = network_on_meta(replace(shape, vocab_size=2 * shape.vocab_size))
    per_entry = Fraction(held_bytes(wider, first, slots) - base, shape.vocab_size)
    assert (per_entry * 8).denominator == 1, f"the engine's buffers grow by {per_entry} bytes a vocabulary entry"
    return Footprint(per_token, per_entry, int(base - first * per_token - shape.vocab_size * per_entry))


@dataclass(frozen=True)
class SamplingPeaks:
    """The most a real engine holds at once, beyond what it keeps, when a prefill ends (its last row sampled) and
    in decode steps of 1 and 2 rows: sampled, not greedy (sorting holds more than argmax)."""

    vocab_size: int
    prefill: int
    decode: dict[int, int]


@pytest.fixture(scope="session")
def tiny_network(tiny_gptq_weights: Path) -> Transformer:
    """The "tiny" checkpoint's network on the CPU, its kernels warmed: torch_aten repacks its weights on first use,
    which is the weights' memory, not the engine's."""
    model = load_transformer(tiny_gptq_weights, "torch_aten", torch.device("cpu"), torch.bfloat16)
    FastEngine(model, CONTEXTS[0]).prefill(PROMPT, SAMPLED)
    return model


@pytest.fixture(scope="session")
def sampling_peaks(tiny_network: Transformer) -> SamplingPeaks:
    """Measured on the CPU at Qwen's real vocabulary: what sampling holds depends on the vocabulary and the rows,
    not on the layers."""
    engine = FastEngine(tiny_network, CONTEXTS[0], slots=2)
    engine.prefill(PROMPT, SAMPLED, slot=0)
    with Allocations() as prefill:
        engine.prefill(PROMPT, SAMPLED, slot=1)
    decode = {}
    for rows in (1, 2):
        with Allocations() as step:
            engine.decode(rows, len(PROMPT) + rows, greedy=False)
        decode[rows] = step.peak
    return SamplingPeaks(tiny_network.shape.vocab_size, prefill.peak, decode)
