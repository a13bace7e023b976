"""A model's shape and its GPTQ settings, read from config.json by one rule, used by everything that sizes a model.

The network (`network.py`), the memory plan, the catalog and the random checkpoints of the tests all read this one
`ModelShape`. It imports no torch: `download.py --list` plans memory with it in milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

FP16 = 2  # bytes of a half-precision value: the KV cache, scales, embeddings
SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM")
TILE = 128  # a card's share of an input dimension under tensor parallelism: whole GPTQ groups and Marlin tiles
OUTPUT_TILE = 64  # of an output dimension: whole Marlin tiles
# The KV cache's formats: fp16, or 8 bits a value with one fp16 scale per token and head (engine/quantized_attention.py)
KV_CACHES = ("fp16", "int8", "fp8")
KV_VALUE_BYTES = {"fp16": FP16, "int8": 1, "fp8": 1}


@dataclass(frozen=True)
class ModelShape:
    """The config.json fields that fix a Llama-family decoder's tensor shapes and numerics (Qwen1.5/2/2.5 included).

    ``intermediate_size`` is the one the checkpoint carries (Qwen padded the MLP of some GPTQ releases);
    ``attention_bias`` means bias on q/k/v only, as in every Qwen2-architecture model.
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    attention_bias: bool
    kv_cache: str = "fp16"  # how the engine stores K/V (KV_CACHES): not the checkpoint's, the run's

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """From a config.json. head_dim is the config's own where it gives one, else hidden_size / heads."""
        heads = int(config.get("num_attention_heads") or 1)
        hidden = int(config.get("hidden_size") or 0)
        rope = config.get("rope_parameters") or {}  # transformers 5 moved rope_theta in here
        return cls(
            hidden_size=hidden,
            intermediate_size=int(config.get("intermediate_size") or 4 * hidden),
            num_layers=int(config.get("num_hidden_layers") or 0),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab_size=int(config.get("vocab_size") or 0),
            max_position_embeddings=int(config.get("max_position_embeddings") or 2048),
            rope_theta=float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0),
            rms_norm_eps=float(config.get("rms_norm_eps") or 1e-6),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
        )

    def with_kv_cache(self, kv_cache: str) -> ModelShape:
        """The same model with its KV cache stored as `kv_cache` (one of KV_CACHES)."""
        if kv_cache not in KV_CACHES:
            raise ValueError(f"the KV cache is one of {', '.join(KV_CACHES)}, not {kv_cache!r}")
        return replace(self, kv_cache=kv_cache)

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer for one token of context, in the cache's format: what a token of context costs."""
        scale = 0 if self.kv_cache == "fp16" else FP16  # per token and head, for K and for V
        return 2 * self.num_layers * self.num_kv_heads * (self.head_dim * KV_VALUE_BYTES[self.kv_cache] + scale)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of each quantized linear in one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "self_attn.q_proj": (h, self.q_dim),
            "self_attn.k_proj": (h, self.kv_dim),
            "self_attn.v_proj": (h, self.kv_dim),
            "self_attn.o_proj": (self.q_dim, h),
            "mlp.gate_proj": (h, i),
            "mlp.up_proj": (h, i),
            "mlp.down_proj": (i, h),
        }

    def split(self, world: int) -> ModelShape:
        """One card's part under tensor parallelism: 1/world of the attention heads and of the MLP's rows."""
        return replace(
            self,
            num_heads=self.num_heads // world,
            num_kv_heads=self.num_kv_heads // world,
            intermediate_size=self.intermediate_size // world,
        )


@dataclass(frozen=True)
class GPTQSettings:
    """How the checkpoint's linears were quantized (its `quantization_config`)."""

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    desc_act: bool = False

    @classmethod
    def from_config(cls, quantization: Mapping[str, Any]) -> GPTQSettings:
        return cls(
            bits=int(quantization["bits"]),
            group_size=int(quantization.get("group_size", -1)),
            sym=bool(quantization.get("sym", True)),
            desc_act=bool(quantization.get("desc_act", False)),
        )


def engine_problem(config: Mapping[str, Any]) -> str | None:
    """Why the fast engine's network cannot run a model with this config.json, or None (the plain path still can)."""
    architecture = (config.get("architectures") or ["?"])[0]
    rope = config.get("rope_parameters") or {}
    if architecture not in SUPPORTED_ARCHITECTURES:
        return f"{architecture} is not one of {', '.join(SUPPORTED_ARCHITECTURES)}"
    if config.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        return f"rope scaling {config.get('rope_scaling') or rope} is not supported"
    if config.get("hidden_act", "silu") != "silu":
        return f"activation {config['hidden_act']} is not supported"
    if config.get("use_sliding_window") or (architecture == "MistralForCausalLM" and config.get("sliding_window")):
        return "sliding-window attention is not supported"
    return None


def tensor_parallel_problem(shape: ModelShape, gptq: GPTQSettings, world: int) -> str | None:
    """Why this model cannot be split `world` ways by tensor parallelism, or None when it can."""
    local = shape.split(world)
    widths = {  # what is split, into shares of what width, in tiles of what size
        "attention heads": (shape.num_heads, local.q_dim, TILE),  # o_proj's input: whole groups
        "key/value heads": (shape.num_kv_heads, local.kv_dim, OUTPUT_TILE),
        "MLP rows": (shape.intermediate_size, local.intermediate_size, TILE),  # down_proj's input: whole groups
    }
    for what, (count, width, tile) in widths.items():
        if count % world or width % tile:
            return f"its {count} {what} do not split into {world} parts of whole {tile}-wide tiles"
    if shape.vocab_size % world:
        return f"its vocabulary of {shape.vocab_size} does not split into {world} equal parts"
    if gptq.desc_act:
        return "act-order (desc_act) checkpoints are not split by tensor parallelism"
    return None
