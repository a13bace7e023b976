"""How much GPU memory a GPTQ-Int4 model needs at a context length, and where it fits.

Used by `download.py --list` (for models not downloaded yet, from the shapes in `catalog.py`) and by the
doctor (for a downloaded checkpoint, from its config.json and real file sizes). The formula, per card:

    weights     the real size of the safetensors files where known; else computed from the shape:
                per quantized linear (in -> out, group g): packed int4 in*out/2 + fp16 scales (in/g)*out*2
                + packed int4 zero points (in/g)*out/2 + int32 g_idx in*4; plus fp16 q/k/v biases,
                RMSNorm weights, the fp16 embedding and (untied) lm_head.
    KV cache    context * 2 (K and V) * layers * kv_heads * head_dim * 2 bytes (fp16). Qwen1.5 has no
                grouped-query attention (kv_heads == heads): 512 KiB per token for 7B, 2.5 MiB for 72B.
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
                VRAM that NOTES.md reports for the 7B shape on an H100 (6.1 / 11.3 / 17.0 GB at 128 / 4k /
                8k-token prompts, raw forward, static cache) within +3..+14 % (tests/test_vram_planner.py);
                against peaks measured through `generate` and the fast engine (tests/test_doctor_gpu.py, H100,
                2k and 8k contexts) the whole plan is within ±0.8 % (BENCHMARKS.md).

The fast engine (``path="fast"``: engine.py, fast_model.py) needs the same weights and the same KV cache, but
allocates the cache once for the whole `context` and runs its own prefill: fused q/k/v and gate/up outputs
(prompt * (2*hidden + 4*intermediate) * 2 bytes at the MLP's peak: residual, normed input, gate|up, silu(gate),
silu*up), SDPA without a mask, logits for the last position only; plus its static buffers (rope tables, fp32
logits and the sampling state's seen-token mask) and the private memory pool of its captured CUDA graphs
(FAST_GRAPH_POOL_BYTES, a named constant to calibrate on a GPU).

This module answers for one card. A model that no single card holds is spread over several by
`placement.py`, from the same per-part terms (`requirement`, `ModelShape.layer_weight_bytes`, ...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gptq_chat.loading.checkpoint import CheckpointInfo
    from gptq_chat.testing.random_checkpoint import QwenShape

GIB = 1024**3
FP16 = 2
CUDA_CONTEXT_BYTES = 512 * 1024**2  # ~0.5 GB per card for the CUDA context
OVERHEAD_BYTES = 512 * 1024**2  # allocator slack and small buffers per card: calibrate on a GPU
ATTENTION_SCORE_BYTES = {"sdpa": 0, "sdpa-masked": FP16, "eager": FP16 + 4}  # per head and query-key pair
PATHS = ("plain", "fast")  # generation paths: transformers `generate`, or the fast engine (CUDA graphs)
FAST_GRAPH_POOL_BYTES = 64 * 1024**2  # the fast engine's CUDA-graph memory pool (one decode step's temporaries)
FAST_MLP_WIDTH = (2, 4)  # the fast prefill's peak per token: 2 x hidden + 4 x intermediate fp16 values


@dataclass(frozen=True)
class ModelShape:
    """The numbers that decide a decoder-only GPTQ model's memory (Qwen2 architecture)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 32768
    group_size: int = 128
    bits: int = 4
    attention_bias: bool = True
    weight_bytes: int | None = None  # the checkpoint's real safetensors size, where known

    @classmethod
    def from_qwen_shape(cls, shape: QwenShape, weight_bytes: int | None = None, name: str = "") -> ModelShape:
        return cls(
            name=name or shape.model_id.split("/")[-1],
            hidden_size=shape.hidden_size,
            intermediate_size=shape.intermediate_size,
            num_layers=shape.num_hidden_layers,
            num_attention_heads=shape.num_attention_heads,
            num_key_value_heads=shape.num_key_value_heads,
            vocab_size=shape.vocab_size,
            tie_word_embeddings=shape.tie_word_embeddings,
            max_position_embeddings=shape.max_position_embeddings,
            attention_bias=shape.attention_bias,
            weight_bytes=weight_bytes,
        )

    @classmethod
    def from_checkpoint(cls, info: CheckpointInfo) -> ModelShape:
        """From a validated checkpoint: its config.json, and its weight files' real size."""
        config: dict[str, Any] = json.loads((info.path / "config.json").read_text(encoding="utf-8"))
        return cls(
            name=info.name,
            hidden_size=info.hidden_size,
            intermediate_size=int(config.get("intermediate_size", 4 * info.hidden_size)),
            num_layers=info.num_layers,
            num_attention_heads=info.num_attention_heads,
            num_key_value_heads=info.num_key_value_heads,
            vocab_size=info.vocab_size,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_position_embeddings=info.max_position_embeddings,
            group_size=info.group_size,
            bits=info.bits,
            weight_bytes=info.weight_bytes,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def kv_bytes_per_token(self) -> int:
        """fp16 K and V of every layer for one token of context."""
        return 2 * self.num_layers * self.kv_dim * FP16

    def linear_shapes(self) -> list[tuple[int, int]]:
        """``(in, out)`` of the seven quantized linears of one decoder layer."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_dim
        return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]

    def quantized_linear_bytes(self, in_features: int, out_features: int) -> int:
        """qweight + qzeros + scales + g_idx of one GPTQ linear, as stored on disk and in VRAM."""
        groups = math.ceil(in_features / self.group_size) if self.group_size > 0 else 1
        qweight = in_features * out_features * self.bits // 8
        qzeros = groups * out_features * self.bits // 8
        scales = groups * out_features * FP16
        g_idx = in_features * 4
        return qweight + qzeros + scales + g_idx

    @property
    def layer_weight_bytes(self) -> int:
        """One decoder layer: its quantized linears, q/k/v biases and two RMSNorm weights."""
        linears = sum(self.quantized_linear_bytes(i, o) for i, o in self.linear_shapes())
        biases = (self.hidden_size + 2 * self.kv_dim) * FP16 if self.attention_bias else 0
        return linears + biases + 2 * self.hidden_size * FP16

    @property
    def embedding_bytes(self) -> int:
        return self.vocab_size * self.hidden_size * FP16

    @property
    def lm_head_bytes(self) -> int:
        """The output projection and final norm (the head shares the embedding when tied)."""
        return (0 if self.tie_word_embeddings else self.embedding_bytes) + self.hidden_size * FP16

    @property
    def estimated_weight_bytes(self) -> int:
        return self.num_layers * self.layer_weight_bytes + self.embedding_bytes + self.lm_head_bytes

    @property
    def weights(self) -> int:
        """The real size where known, else the estimate."""
        return self.weight_bytes if self.weight_bytes is not None else self.estimated_weight_bytes

    def layer_share(self) -> float:
        """Scale from estimated to real bytes, so a split uses the real size too."""
        return self.weights / self.estimated_weight_bytes

    def prefill_activation_bytes(self, prompt_tokens: int, attention: str = "sdpa") -> int:
        """Peak transient memory inside one decoder layer while prefilling `prompt_tokens` tokens."""
        hidden = prompt_tokens * (2 * self.hidden_size + 3 * self.intermediate_size) * FP16
        dequantized = max(i * o for i, o in self.linear_shapes()) * FP16
        scores = self.num_attention_heads * prompt_tokens**2 * ATTENTION_SCORE_BYTES[attention]
        return hidden + dequantized + scores

    def fast_prefill_activation_bytes(self, prompt_tokens: int) -> int:
        """Peak transient memory of the fast engine's prefill: fused gate|up output, unmasked SDPA, no dequantizing."""
        per_token = FAST_MLP_WIDTH[0] * self.hidden_size + FAST_MLP_WIDTH[1] * self.intermediate_size
        return prompt_tokens * per_token * FP16

    def fast_static_bytes(self, context: int) -> int:
        """The fast engine's buffers besides the KV cache: rope cos/sin, fp32 logits and the seen-token mask, the
        last row's logits (fp16, and the fp32 copy sampling makes), and its CUDA-graph pool."""
        rope = 2 * context * self.head_dim * FP16
        sampling = self.vocab_size * (4 + 1) + self.vocab_size * (FP16 + 4)
        return rope + sampling + FAST_GRAPH_POOL_BYTES

    def logits_bytes(self, prompt_tokens: int, full_logits: bool = False) -> int:
        """Prefill logits: the last position only through `generate`, every position through a raw forward."""
        positions = prompt_tokens if full_logits else 1
        return positions * self.vocab_size * FP16 + self.vocab_size * 4


@dataclass(frozen=True)
class CardShare:
    """The card that holds the whole model in a plan."""

    index: int
    capacity: int
    weights: int
    kv_cache: int
    activations: int
    fixed: int  # CUDA context + overhead

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.fixed

    @property
    def spare(self) -> int:
        return self.capacity - self.total


@dataclass(frozen=True)
class Plan:
    """Whether one card holds a model at a context length, with the numbers behind the answer."""

    shape: ModelShape
    context: int
    gpus: tuple[int, ...]
    weights: int
    kv_cache: int
    activations: int
    cuda_context: int
    overhead: int
    card: CardShare | None = None  # None when no single card holds it
    max_context: int = 0  # the longest context one of these cards holds (0: not even the weights)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Bytes on one card (the single-card requirement)."""
        return self.weights + self.kv_cache + self.activations + self.cuda_context + self.overhead

    @property
    def fits(self) -> bool:
        return self.card is not None

    def summary(self) -> str:
        """A few human lines: the requirement, then where it goes or what would fit instead."""
        head = (
            f"{self.shape.name} at {self.context:,} tokens of context needs {gib(self.total)} on one card: "
            f"weights {gib(self.weights)} + KV cache {gib(self.kv_cache)} + activations {gib(self.activations)}"
            f" + CUDA context {gib(self.cuda_context)} + overhead {gib(self.overhead)}."
        )
        if not self.gpus:
            return head
        if self.card is not None:
            return (
                f"{head}\nFits on GPU {self.card.index} ({gib(self.card.capacity)}), {gib(self.card.spare)} to spare."
            )
        cards = ", ".join(f"GPU {i}: {gib(size)}" for i, size in enumerate(self.gpus))
        if self.max_context > 0:
            return f"{head}\nDoes not fit on {cards}. The longest context that fits there: {self.max_context:,} tokens."
        return f"{head}\nDoes not fit on {cards}: not even the weights ({gib(self.weights)}) fit."


def gib(size: float) -> str:
    return f"{size / GIB:.1f} GiB"


def requirement(
    shape: ModelShape,
    context: int,
    prompt_tokens: int | None = None,
    attention: str = "sdpa",
    full_logits: bool = False,
    path: str = "plain",
) -> tuple[int, int, int]:
    """Weights, KV cache and activations (the prefill's peak plus the path's static buffers), in bytes."""
    prompt = context if prompt_tokens is None else min(prompt_tokens, context)
    if path == "fast":
        activations = shape.fast_prefill_activation_bytes(prompt) + shape.fast_static_bytes(context)
    else:
        activations = shape.prefill_activation_bytes(prompt, attention) + shape.logits_bytes(prompt, full_logits)
    return shape.weights, context * shape.kv_bytes_per_token, activations


def _place(
    shape: ModelShape,
    context: int,
    gpus: Sequence[int],
    prompt_tokens: int | None,
    attention: str,
    full_logits: bool,
    path: str = "plain",
) -> CardShare | None:
    """The card that holds the whole model: GPU 0 first (the app's default device), then the largest."""
    weights, kv, activations = requirement(shape, context, prompt_tokens, attention, full_logits, path)
    fixed = CUDA_CONTEXT_BYTES + OVERHEAD_BYTES
    need = weights + kv + activations + fixed
    for i in sorted(range(len(gpus)), key=lambda i: (i != 0, -gpus[i])):
        if need <= gpus[i]:
            return CardShare(i, gpus[i], weights, kv, activations, fixed)
    return None


def max_context(
    shape: ModelShape,
    gpus: Sequence[int],
    *,
    prompt_tokens: int | None = None,
    attention: str = "sdpa",
    full_logits: bool = False,
    path: str = "plain",
) -> int:
    """The longest context (up to the model's own limit) that one of the cards holds; 0 if not even one token."""
    if _place(shape, 1, gpus, prompt_tokens, attention, full_logits, path) is None:
        return 0
    low, high = 1, shape.max_position_embeddings
    while low < high:
        middle = (low + high + 1) // 2
        if _place(shape, middle, gpus, prompt_tokens, attention, full_logits, path) is not None:
            low = middle
        else:
            high = middle - 1
    return low


def plan(
    shape: ModelShape,
    context: int,
    gpus: Sequence[int],
    *,
    prompt_tokens: int | None = None,
    attention: str = "sdpa",
    full_logits: bool = False,
    path: str = "plain",
) -> Plan:
    """Whether `shape` at `context` tokens fits on one of `gpus` (bytes each), else the longest context that does.

    `prompt_tokens` defaults to the whole context (the worst case: a long chat truncated to fit). `path` is the
    generation path: "plain" (transformers `generate`) or "fast" (the fast engine). Several cards together:
    `placement.plan_placement`.
    """
    if attention not in ATTENTION_SCORE_BYTES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_SCORE_BYTES)}, not {attention!r}")
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, not {path!r}")
    weights, kv, activations = requirement(shape, context, prompt_tokens, attention, full_logits, path)
    return Plan(
        shape=shape,
        context=context,
        gpus=tuple(gpus),
        weights=weights,
        kv_cache=kv,
        activations=activations,
        cuda_context=CUDA_CONTEXT_BYTES,
        overhead=OVERHEAD_BYTES,
        card=_place(shape, context, gpus, prompt_tokens, attention, full_logits, path),
        max_context=max_context(
            shape, gpus, prompt_tokens=prompt_tokens, attention=attention, full_logits=full_logits, path=path
        ),
        options={"prompt_tokens": prompt_tokens, "attention": attention, "full_logits": full_logits, "path": path},
    )
