"""How much GPU memory a GPTQ-Int4 model needs at a context length, part by part.

A model is a downloaded checkpoint (its config.json and real file sizes) or a catalog entry (its shape and the
size Qwen published). The formula, per card:

    weights     the real size of the safetensors files where known; else computed from the shape:
                per quantized linear (in -> out, group g): packed int4 in*out/2 + fp16 scales (in/g)*out*2
                + packed int4 zero points (in/g)*out/2 + int32 g_idx in*4; plus fp16 q/k/v biases,
                RMSNorm weights, the fp16 embedding and (untied) lm_head.
    KV cache    context * 2 (K and V) * layers * kv_heads * head_dim * 2 bytes (fp16). Qwen1.5 has no
                grouped-query attention (kv_heads == heads): 512 KiB per token for 7B, 2.5 MiB for 72B.
                An 8-bit cache (the fast engine's `kv_cache` "int8" or "fp8") stores 1 byte a value plus an
                fp16 scale per token and head: 260 KiB per token for 7B (`ModelShape.kv_bytes_per_token`).
    activations the prefill of a prompt that fills the context, through `model.generate` (the app's plain
                transformers path):
                  prompt * (2*hidden + 3*intermediate) * 2 bytes  (residual, normed input, gate, up, act*up)
                + the largest linear dequantized to fp16 (the torch/triton GPTQ kernels do that per layer)
                + logits: transformers 5 `generate` passes `logits_to_keep=1`, so prefill computes the last
                  position only (vocab * 2 bytes fp16, plus the fp32 copy `_sample` makes: vocab * 4).
                  A raw `model(input_ids)` forward (a hand-written decode loop, CUDA-graph benchmarks)
                  computes every position: prompt * vocab * 2 bytes (Qwen2ForCausalLM.forward in
                  transformers 5 does not upcast to fp32); pass ``full_logits=True`` for that path.
                  At 8k tokens with Qwen's 152k vocabulary that is 2.5 GB.
                + attention scores: 0 for ``attention="sdpa"`` (an unpadded prompt through `generate` runs a
                  fused kernel); heads * prompt^2 * 2 bytes for ``"sdpa-masked"`` (a 4-D mask, as a static
                  cache passes, makes sdpa pick a kernel that materializes fp16 scores); * (2 + 4) bytes
                  for ``"eager"`` (fp16 scores and the fp32 softmax).
    CUDA context CUDA_CONTEXT_BYTES per card (driver, cuBLAS handles, kernels images).
    overhead    OVERHEAD_BYTES per card: caching-allocator fragmentation and small buffers. A guess until a
                GPU run calibrates it; one named constant to change. The other terms reproduce the peak
                VRAM measured for the 7B shape on an H100 (6.1 / 11.3 / 17.0 GB at 128 / 4k / 8k-token
                prompts, raw forward, static cache) within +3..+14 % (tests/test_vram_planner.py); against
                peaks measured through `generate` and the fast engine (tests/test_doctor_gpu.py, H100, 2k and
                8k contexts) the whole plan is within ±0.8 % (docs/benchmarks.md).

The fast engine (``path="fast"``: fast_engine.py, network.py) needs the same weights and the same KV cache, but
allocates the cache once for the whole `context` and runs its own prefill: fused q/k/v and gate/up outputs
(prompt * (2*hidden + 4*intermediate) * 2 bytes at the MLP's peak: residual, normed input, gate|up, silu(gate),
silu*up), SDPA without a mask, logits for the last position only; plus the buffers it holds (rope tables; per
slot, an fp32 logits row, the sampling state's seen-token mask and its grammar's bit mask), what sampling a step's
rows holds at once,
and the private memory pool of its captured CUDA graphs (FAST_GRAPH_POOL_BYTES, a named constant to calibrate on
a GPU). tests/test_planner_truth.py counts the bytes the engine really allocates on the CPU against these terms.

This module answers for one card. A model that no single card holds is spread over several by
`placement.py`, from the same per-part terms (`requirement`, `layer_weight_bytes`, ...); whether and where a
model goes is decided by `fit.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from gptq_chat.engine.devices import CUDA_CONTEXT_BYTES
from gptq_chat.engine.sampling import mask_words
from gptq_chat.engine.shape import FP16, GPTQSettings, ModelShape

GIB = 1024**3
OVERHEAD_BYTES = 512 * 1024**2  # allocator slack and small buffers per card: calibrate on a GPU
ATTENTION_SCORE_BYTES = {"sdpa": 0, "sdpa-masked": FP16, "eager": FP16 + 4}  # per head and query-key pair
PATHS = ("plain", "fast")  # generation paths: transformers `generate`, or the fast engine (CUDA graphs)
FAST_GRAPH_POOL_BYTES = 64 * 1024**2  # the CUDA-graph pool: one decode step's temporaries (one row sampled); a guess
FAST_MLP_WIDTH = (2, 4)  # the fast prefill's peak per token: 2 x hidden + 4 x intermediate fp16 values
# What sampling holds at once per vocabulary entry (engine/sampling.py, the top-k/top-p path every sampled step takes),
# as tests/test_planner_truth.py measures it. Per row, 62 bytes: the fp16 logits it is given (2), the penalised and the
# scaled fp32 logits (4 + 4), the sort's int64 order (8), then fp32 the top-k-masked values, the mass ranked above and
# the kept probabilities (4 x 3), which are kept (bool, 1), and the exponential race: int64 hashes of every token id
# with the hash's temporaries, its fp32 noise and the ratios (31). Once for all rows: the int64 ranks 0..vocab-1 (8).
# The grammar mask's expansion (int32 bits, 4 + 1) comes and goes before the sort, when less is held.
SAMPLING_BYTES = (2 + 4 + 4 + 8 + 4 * 3 + 1 + 31, 8)  # (per row, once)


class PlannedModel(Protocol):
    """What a plan needs of a model: a checkpoint on disk (`CheckpointInfo`) or one in the catalog (`CatalogEntry`)."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> ModelShape: ...

    @property
    def gptq(self) -> GPTQSettings: ...

    @property
    def weight_bytes(self) -> int | None:
        """The checkpoint's real safetensors size, where known."""
        ...


@dataclass(frozen=True)
class CachedAs:
    """A model planned with its KV cache in another format (`ModelShape.kv_cache`): every term that counts the
    cache reads the shape, so the whole plan follows."""

    model: PlannedModel
    kv_cache: str

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def shape(self) -> ModelShape:
        return self.model.shape.with_kv_cache(self.kv_cache)

    @property
    def gptq(self) -> GPTQSettings:
        return self.model.gptq

    @property
    def weight_bytes(self) -> int | None:
        return self.model.weight_bytes


def cached_as(model: PlannedModel, kv_cache: str) -> PlannedModel:
    """`model` planned with its KV cache in `kv_cache`'s format (shape.KV_CACHES)."""
    return model if kv_cache == "fp16" else CachedAs(model, kv_cache)


def quantized_linear_bytes(gptq: GPTQSettings, in_features: int, out_features: int) -> int:
    """qweight + qzeros + scales + g_idx of one GPTQ linear, as stored on disk and in VRAM."""
    groups = math.ceil(in_features / gptq.group_size) if gptq.group_size > 0 else 1
    qweight = in_features * out_features * gptq.bits // 8
    qzeros = groups * out_features * gptq.bits // 8
    scales = groups * out_features * FP16
    g_idx = in_features * 4
    return qweight + qzeros + scales + g_idx


def layer_weight_bytes(model: PlannedModel) -> int:
    """One decoder layer (as the layout computes it): its quantized linears, q/k/v biases, two RMSNorm weights."""
    shape = model.shape
    linears = sum(quantized_linear_bytes(model.gptq, i, o) for i, o in shape.linear_shapes().values())
    biases = (shape.q_dim + 2 * shape.kv_dim) * FP16 if shape.attention_bias else 0
    return linears + biases + 2 * shape.hidden_size * FP16


def embedding_bytes(shape: ModelShape) -> int:
    return shape.vocab_size * shape.hidden_size * FP16


def lm_head_bytes(shape: ModelShape) -> int:
    """The output projection and final norm (the head shares the embedding when tied)."""
    return (0 if shape.tie_word_embeddings else embedding_bytes(shape)) + shape.hidden_size * FP16


def estimated_weight_bytes(model: PlannedModel) -> int:
    """The weights' size as the GPTQ layout computes it from the shape."""
    shape = model.shape
    return shape.num_layers * layer_weight_bytes(model) + embedding_bytes(shape) + lm_head_bytes(shape)


def total_weight_bytes(model: PlannedModel) -> int:
    """The real size where known, else the estimate."""
    return model.weight_bytes if model.weight_bytes is not None else estimated_weight_bytes(model)


def real_share(model: PlannedModel) -> float:
    """Scale from estimated to real bytes, so that a split of the parts uses the real size too."""
    return total_weight_bytes(model) / estimated_weight_bytes(model)


def prefill_activation_bytes(shape: ModelShape, prompt_tokens: int, attention: str = "sdpa") -> int:
    """Peak transient memory inside one decoder layer while `generate` prefills `prompt_tokens` tokens."""
    hidden = prompt_tokens * (2 * shape.hidden_size + 3 * shape.intermediate_size) * FP16
    dequantized = max(i * o for i, o in shape.linear_shapes().values()) * FP16
    scores = shape.num_heads * prompt_tokens**2 * ATTENTION_SCORE_BYTES[attention]
    return hidden + dequantized + scores


def fast_prefill_activation_bytes(shape: ModelShape, prompt_tokens: int) -> int:
    """Peak transient memory of the fast engine's prefill: fused gate|up output, unmasked SDPA, no dequantizing."""
    per_token = FAST_MLP_WIDTH[0] * shape.hidden_size + FAST_MLP_WIDTH[1] * shape.intermediate_size
    return prompt_tokens * per_token * FP16


def fast_buffer_bytes(shape: ModelShape, context: int, slots: int = 1) -> int:
    """What the fast engine holds besides the weights and the KV cache: rope cos/sin for every position and, per slot
    (each samples its own row), an fp32 logits row, a bool seen-token mask and a grammar mask of one bit per entry
    (int32 words) over the vocabulary. Its ids, positions, settings, seeds, log-probability rows and hidden state per
    slot (a few KiB) are left to OVERHEAD_BYTES."""
    rope = 2 * context * shape.head_dim * FP16
    return rope + slots * (shape.vocab_size * (4 + 1) + mask_words(shape.vocab_size) * 4)


def sampling_bytes(vocab_size: int, rows: int) -> int:
    """The most that sampling `rows` rows of logits holds at once (SAMPLING_BYTES)."""
    per_row, once = SAMPLING_BYTES
    return vocab_size * (per_row * rows + once)


def fast_static_bytes(shape: ModelShape, context: int, slots: int = 1) -> int:
    """The fast engine's memory besides the KV cache and the prefill: its buffers, its CUDA-graph pool and sampling.

    Sampling: a prefill samples its last row outside the graphs; a decode step samples every slot's row inside the
    graph pool, whose guess covers one row. One row outside and one more per further slot: `slots` rows in all."""
    return fast_buffer_bytes(shape, context, slots) + sampling_bytes(shape.vocab_size, slots) + FAST_GRAPH_POOL_BYTES


def logits_bytes(shape: ModelShape, prompt_tokens: int, full_logits: bool = False) -> int:
    """Prefill logits: the last position only through `generate`, every position through a raw forward."""
    positions = prompt_tokens if full_logits else 1
    return positions * shape.vocab_size * FP16 + shape.vocab_size * 4


@dataclass(frozen=True)
class Plan:
    """What a model needs on one card at a context length, part by part (whether and where it fits: `fit.py`)."""

    model: PlannedModel
    context: int
    weights: int
    kv_cache: int
    activations: int
    cuda_context: int
    overhead: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Bytes on one card (the single-card requirement)."""
        return self.weights + self.kv_cache + self.activations + self.cuda_context + self.overhead

    def summary(self) -> str:
        return (
            f"{self.model.name} at {self.context:,} tokens of context needs {gib(self.total)} on one card: "
            f"weights {gib(self.weights)} + KV cache {gib(self.kv_cache)} + activations {gib(self.activations)}"
            f" + CUDA context {gib(self.cuda_context)} + overhead {gib(self.overhead)}."
        )


def gib(size: float) -> str:
    return f"{size / GIB:.1f} GiB"


def requirement(
    model: PlannedModel,
    context: int,
    prompt_tokens: int | None = None,
    attention: str = "sdpa",
    full_logits: bool = False,
    path: str = "plain",
    slots: int = 1,
    world: int = 1,
) -> tuple[int, int, int]:
    """Weights, KV cache and activations (the prefill's peak plus the path's static buffers), in bytes.

    The KV cache is one sequence's; `slots` (sequences the fast engine decodes together) sizes its per-slot buffers.
    `world`: the cards of a tensor-parallel split; each card's prefill computes its share of the MLP's rows (the
    residual stream and the gathered vocabulary stay whole on every card).
    """
    shape = model.shape
    prompt = context if prompt_tokens is None else min(prompt_tokens, context)
    if path == "fast":
        prefill = fast_prefill_activation_bytes(shape.split(world), prompt)
        activations = prefill + fast_static_bytes(shape, context, slots)
    else:
        activations = prefill_activation_bytes(shape, prompt, attention) + logits_bytes(shape, prompt, full_logits)
    return total_weight_bytes(model), context * shape.kv_bytes_per_token, activations


def plan(
    model: PlannedModel,
    context: int,
    *,
    prompt_tokens: int | None = None,
    attention: str = "sdpa",
    full_logits: bool = False,
    path: str = "plain",
) -> Plan:
    """What `model` needs at `context` tokens on one card, part by part.

    `prompt_tokens` defaults to the whole context (the worst case: a long chat truncated to fit). `path` is the
    generation path: "plain" (transformers `generate`) or "fast" (the fast engine). Several cards: `placement.py`.
    """
    if attention not in ATTENTION_SCORE_BYTES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_SCORE_BYTES)}, not {attention!r}")
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, not {path!r}")
    weights, kv, activations = requirement(model, context, prompt_tokens, attention, full_logits, path)
    return Plan(
        model=model,
        context=context,
        weights=weights,
        kv_cache=kv,
        activations=activations,
        cuda_context=CUDA_CONTEXT_BYTES,
        overhead=OVERHEAD_BYTES,
        options={"prompt_tokens": prompt_tokens, "attention": attention, "full_logits": full_logits, "path": path},
    )
