"""Random-weight GPTQ-Int4 checkpoints with the exact shapes of Qwen's published chat models.

Decode speed depends on the shapes and the packed layout, not on the weights' values, so a benchmark
can run on a checkpoint written in seconds instead of one downloaded for an hour. The tests use the
same writer with tiny shapes, and `dequantize_gptq` (our own, independent of gptqmodel) gives the float
weights that a plain `Qwen2ForCausalLM` needs to check gptqmodel's kernels.

On-disk layout: GPTQ "v1" (``checkpoint_format: "gptq"``, what AutoGPTQ wrote and what transformers,
optimum and gptqmodel assume when a config names no format), verified against gptqmodel 7.6.0's
`PackableQuantLinear.pack_block` and
`convert_gptq_v1_to_v2_format_module` (gptqmodel/nn_modules/qlinear/__init__.py, utils/model.py):

- ``qweight`` int32 ``[in / 8, out]``: input row ``8*k + j`` sits in bits ``4*j .. 4*j+3`` of word ``k``.
- ``qzeros`` int32 ``[in / group, out / 8]``: output column ``8*c + j`` sits in bits ``4*j ..`` of word
  ``c``; v1 stores ``zero - 1`` (a loader adds ``0x11111111`` to every word), so zero points must lie
  in 1..15 to survive that addition without carries.
- ``scales`` fp16 ``[in / group, out]``, ``g_idx`` int32 ``[in]`` (the group of each input row).
- weight ``W[out, in] = scales[g_idx[in], out] * (code[in, out] - zero[g_idx[in], out])``.

End of sequence: the generation config carries Qwen's chat EOS ids (151645, 151643) by default. Random
weights sample them now and then, which ends a benchmark early; pass ``eos_token_id=None`` to write no
EOS at all (generation then runs to ``max_new_tokens``), or pass ``min_new_tokens`` to ``generate``.
Shapes whose vocabulary is smaller than 151646 can never emit those ids.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gptq_chat.engine.qwen_shapes import QWEN_SHAPES
from gptq_chat.engine.shape import ModelShape

BITS = 4
PACK = 32 // BITS  # int4 codes per int32 word
MAX_SHARD_BYTES = 4 * 1000**3  # like `save_pretrained(max_shard_size="4GB")`, which Qwen's uploads used
QWEN_BOS = 151643  # <|endoftext|>
QWEN_CHAT_EOS = (151645, 151643)  # <|im_end|>, <|endoftext|>
LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


# Test shapes, beside Qwen's own (`gptq_chat.engine.qwen_shapes`): Qwen's real vocabulary (so the real Qwen
# tokenizer's ids, up to 151645, fit) and tied embeddings to halve the size (78 MB). 256 = 2 groups of 128 on
# every input, head_dim 64 and 2 KV heads (GQA) give k/v 128 outputs; intermediate 512 = 4 groups for down_proj.
# "tiny-v1k": the same with a 1024-token vocabulary and an untied lm_head, for kernel tests that need no tokenizer.
_TINY = {
    "model_type": "qwen2",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rope_theta": 1e6,
}
TEST_SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape.from_config({**_TINY, "vocab_size": 151936, "tie_word_embeddings": True}),
    "tiny-v1k": ModelShape.from_config({**_TINY, "vocab_size": 1024, "tie_word_embeddings": False}),
}


def get_shape(name: str) -> ModelShape:
    """A shape by key, case-insensitive: ``qwen1.5-7b``, ``7b``, ``qwen2.5-7b``, ``tiny``."""
    shapes = {**QWEN_SHAPES, **TEST_SHAPES}
    if name.lower() in shapes:
        return shapes[name.lower()]
    raise KeyError(f"unknown shape {name!r}; known: {', '.join(sorted(shapes))}")


# ----------------------------------------------------------------------------------------------
# Packing and unpacking (our own implementation; tests compare it with gptqmodel's)
# ----------------------------------------------------------------------------------------------


def _shifts(device: torch.device | str, bits: int = BITS) -> torch.Tensor:
    return torch.arange(0, 32, bits, dtype=torch.int32, device=device)


def _to_int32_words(words64: torch.Tensor) -> torch.Tensor:
    """Keep the low 32 bits of int64 words as int32 (two's complement), like gptqmodel does."""
    words64 = words64 & 0xFFFFFFFF
    return torch.where(words64 >= 2**31, words64 - 2**32, words64).to(torch.int32)


def pack_rows(codes: torch.Tensor, bits: int = BITS) -> torch.Tensor:
    """Pack codes ``[in, out]`` (0..2**bits-1) into int32 ``[in / per_word, out]`` along the input dim."""
    per_word = 32 // bits
    rows, cols = codes.shape
    if rows % per_word:
        raise ValueError(f"{rows} rows do not divide into words of {per_word}")
    c = codes.to(torch.int64).reshape(rows // per_word, per_word, cols)
    shifts = _shifts(codes.device, bits).to(torch.int64).view(1, per_word, 1)
    return _to_int32_words((c << shifts).sum(dim=1))


def pack_cols(codes: torch.Tensor, bits: int = BITS) -> torch.Tensor:
    """Pack codes ``[groups, out]`` into int32 ``[groups, out / per_word]`` along the output dim."""
    per_word = 32 // bits
    rows, cols = codes.shape
    if cols % per_word:
        raise ValueError(f"{cols} columns do not divide into words of {per_word}")
    c = codes.to(torch.int64).reshape(rows, cols // per_word, per_word)
    shifts = _shifts(codes.device, bits).to(torch.int64).view(1, 1, per_word)
    return _to_int32_words((c << shifts).sum(dim=2))


def unpack_rows(qweight: torch.Tensor, bits: int = BITS) -> torch.Tensor:
    """Inverse of `pack_rows`: int32 ``[in / per_word, out]`` to codes ``[in, out]`` (int32)."""
    per_word = 32 // bits
    words = qweight.to(torch.int32)
    codes = (words.unsqueeze(1) >> _shifts(words.device, bits).view(1, per_word, 1)) & ((1 << bits) - 1)
    return codes.reshape(words.shape[0] * per_word, words.shape[1])


def unpack_cols(qzeros: torch.Tensor, bits: int = BITS) -> torch.Tensor:
    """Inverse of `pack_cols`: int32 ``[groups, out / per_word]`` to codes ``[groups, out]`` (int32)."""
    per_word = 32 // bits
    words = qzeros.to(torch.int32)
    codes = (words.unsqueeze(2) >> _shifts(words.device, bits).view(1, 1, per_word)) & ((1 << bits) - 1)
    return codes.reshape(words.shape[0], words.shape[1] * per_word)


def v1_qzeros(zeros: torch.Tensor, bits: int = BITS) -> torch.Tensor:
    """Zero points ``[groups, out]`` (1..2**bits-1) packed the GPTQ v1 way (each stored minus one)."""
    if int(zeros.min()) < 1 or int(zeros.max()) > (1 << bits) - 1:
        raise ValueError("GPTQ v1 can only store zero points 1..15 (it saves zero - 1)")
    return pack_cols(zeros - 1, bits)


def v1_to_v2_qzeros(qzeros: torch.Tensor, bits: int = BITS) -> torch.Tensor:
    """What gptqmodel does on load: add 1 to every packed field, as a plain int32 word addition."""
    one_per_field = sum(1 << (bits * j) for j in range(32 // bits))
    return _to_int32_words(qzeros.to(torch.int64) + one_per_field)


def dequantize_gptq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int = BITS,
    *,
    checkpoint_format: str = "gptq",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Float weight ``[out, in]`` of one GPTQ linear (``checkpoint_format`` "gptq" = v1, "gptq_v2")."""
    if bits != 4:
        raise NotImplementedError("only 4-bit GPTQ is handled here")
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise ValueError(f"unknown GPTQ checkpoint format {checkpoint_format!r}")
    if checkpoint_format == "gptq":
        qzeros = v1_to_v2_qzeros(qzeros, bits)
    codes = unpack_rows(qweight, bits)  # [in, out]
    zeros = unpack_cols(qzeros, bits)[:, : scales.shape[1]]  # [groups, out]
    g = g_idx.long()
    weight = scales.to(torch.float32)[g] * (codes - zeros[g]).to(torch.float32)  # [in, out]
    return weight.t().contiguous().to(dtype)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str  # what `_make_tensor` generates
    in_features: int = 0  # for the quantized linears' parts

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


def _plan(shape: ModelShape, group_size: int, dtype: torch.dtype) -> list[_TensorSpec]:
    """Every tensor of the checkpoint, in the order a Qwen2 state dict lists them."""
    for name, (fin, fout) in shape.linear_shapes().items():
        if fin % group_size or fin % PACK or fout % PACK:
            raise ValueError(f"{name} {fin}->{fout} does not fit group size {group_size} / 8-code words")
    h, v = shape.hidden_size, shape.vocab_size
    specs = [_TensorSpec("model.embed_tokens.weight", (v, h), dtype, "embed")]
    for layer in range(shape.num_layers):
        p = f"model.layers.{layer}."
        specs.append(_TensorSpec(p + "input_layernorm.weight", (h,), dtype, "norm"))
        for lin, (fin, fout) in shape.linear_shapes().items():
            q = p + lin + "."
            groups = fin // group_size
            specs += [
                _TensorSpec(q + "qweight", (fin // PACK, fout), torch.int32, "qweight", fin),
                _TensorSpec(q + "qzeros", (groups, fout // PACK), torch.int32, "qzeros", fin),
                _TensorSpec(q + "scales", (groups, fout), torch.float16, "scales", fin),
                _TensorSpec(q + "g_idx", (fin,), torch.int32, "g_idx", fin),
            ]
            if shape.attention_bias and lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                specs.append(_TensorSpec(q + "bias", (fout,), dtype, "bias"))
        specs.append(_TensorSpec(p + "post_attention_layernorm.weight", (h,), dtype, "norm"))
    specs.append(_TensorSpec("model.norm.weight", (h,), dtype, "norm"))
    if not shape.tie_word_embeddings:
        specs.append(_TensorSpec("lm_head.weight", (v, h), dtype, "embed"))
    return specs


# Random codes are drawn so that (code - zero) has mean 0. Uniform codes 0..15 against the symmetric
# zero point 8 would average -0.5: every weight matrix would then carry a rank-one part of one sign,
# which the residual stream adds up layer after layer (the hidden state's RMS grew ~55 per layer in a
# 24-layer test, heading for fp16's 65504 at 80 layers). So: sym codes are uniform 0..15 with 0 turned
# into 8 (a real symmetric GPTQ rarely uses code 0 either); asym codes are uniform 0..15 against zero
# points 1..14 (v1 cannot store 0). Spread of (code - zero): sym sqrt(280 / 16); asym
# sqrt((16**2 - 1) / 12 + (14**2 - 1) / 12).
_CODE_STD = {True: (280 / 16) ** 0.5, False: (255 / 12 + 195 / 12) ** 0.5}


def _random_qweight(
    shape: tuple[int, ...], sym: bool, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Packed random codes, made as whole int32 words (eight uniform nibbles each): fast on any device."""
    words = torch.randint(-(2**31), 2**31, shape, dtype=torch.int32, generator=generator, device=device)
    if sym:  # nibble 0 -> 8, on all eight nibbles at once (SWAR)
        ones = 0x11111111  # bit 0 of every nibble
        any_bit = words | (words >> 1)
        any_bit = any_bit | (any_bit >> 2)  # bit 0 of a nibble = OR of its four bits
        zero = ~any_bit & ones
        words = words | (zero << 3)  # set bit 3 of the zero nibbles (bit 31 wraps to the sign bit)
    return words


def _make_tensor(
    spec: _TensorSpec,
    *,
    group_size: int,
    sym: bool,
    desc_act: bool,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """One tensor's random values, made on `device` so a GPU does the work for large checkpoints."""
    kw = {"generator": generator, "device": device}
    if spec.kind == "qweight":
        return _random_qweight(spec.shape, sym, generator, device)
    if spec.kind == "qzeros":
        if sym:
            zeros = torch.full((spec.shape[0], spec.shape[1] * PACK), 8, dtype=torch.int32, device=device)
        else:
            zeros = torch.randint(1, 15, (spec.shape[0], spec.shape[1] * PACK), dtype=torch.int32, **kw)
        return v1_qzeros(zeros)
    if spec.kind == "scales":
        # Dequantized weights of std ~ 1/sqrt(in): each linear keeps its input's scale, so 80 random
        # layers stay finite in fp16. The +-25% spread makes every group and column distinct.
        base = 1.0 / (_CODE_STD[sym] * spec.in_features**0.5)
        jitter = torch.rand(spec.shape, dtype=torch.float32, **kw) * 0.5 + 0.75
        return (base * jitter).to(torch.float16)
    if spec.kind == "g_idx":
        g_idx = torch.arange(spec.shape[0], dtype=torch.int32, device=device) // group_size
        if desc_act:  # act-order: rows of a group are scattered over the input dim
            perm = torch.randperm(spec.shape[0], **kw)
            g_idx = torch.empty_like(g_idx).index_copy_(0, perm, g_idx)
        return g_idx
    if spec.kind == "embed":
        return (torch.randn(spec.shape, dtype=torch.float32, **kw) * 0.02).to(spec.dtype)
    if spec.kind == "norm":
        return (1.0 + 0.1 * torch.randn(spec.shape, dtype=torch.float32, **kw)).to(spec.dtype)
    if spec.kind == "bias":
        return (0.1 * torch.randn(spec.shape, dtype=torch.float32, **kw)).to(spec.dtype)
    raise ValueError(spec.kind)


def _config_json(
    name: str,
    shape: ModelShape,
    quantization_config: dict[str, object],
    dtype: torch.dtype,
    eos: list[int] | None,
) -> dict[str, object]:
    """config.json with the fields and spelling of Qwen's own Qwen2 configs."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": QWEN_BOS if shape.vocab_size > QWEN_BOS else None,
        "eos_token_id": eos[0] if eos else None,
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "max_window_layers": shape.num_layers,
        "model_type": "qwen2",
        "num_attention_heads": shape.num_heads,
        "num_hidden_layers": shape.num_layers,
        "num_key_value_heads": shape.num_kv_heads,
        "quantization_config": quantization_config,
        "rms_norm_eps": shape.rms_norm_eps,
        "rope_theta": shape.rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": shape.vocab_size,
        "random_checkpoint": {"shape_of": name, **asdict(shape)},
    }


def quantization_config(group_size: int, sym: bool, desc_act: bool) -> dict[str, object]:
    """The `quantization_config` block, as in Qwen's official GPTQ quantize_config.json.

    Fields of huggingface.co/Qwen/Qwen-7B-Chat-Int4 quantize_config.json (verified: bits, group_size,
    damp_percent, desc_act, static_groups, sym, true_sequential, model_name_or_path,
    model_file_base_name), plus ``quant_method`` and ``checkpoint_format`` that transformers/optimum and
    gptqmodel read (``checkpoint_format: "gptq"`` = v1 zero points).
    """
    return {
        "bits": BITS,
        "group_size": group_size,
        "damp_percent": 0.01,
        "desc_act": desc_act,
        "static_groups": False,
        "sym": sym,
        "true_sequential": True,
        "model_name_or_path": None,
        "model_file_base_name": "model",
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
    }


def _assign_shards(specs: Sequence[_TensorSpec], max_shard_bytes: int) -> list[list[_TensorSpec]]:
    shards: list[list[_TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def write_random_gptq_checkpoint(
    directory: str | Path,
    shape: ModelShape | str,
    *,
    group_size: int = 128,
    sym: bool = True,
    desc_act: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float16,
    eos_token_id: int | Sequence[int] | None = QWEN_CHAT_EOS,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write a loadable random GPTQ-Int4 Qwen2 checkpoint and return its directory.

    Tensors are made one at a time on `device` and written shard by shard (a background thread writes
    one shard while the next is generated), so at most three ~4 GB shards sit in host memory, never the
    41 GB of the Qwen1.5-72B shape. ``eos_token_id=None`` writes no EOS (see the module docstring).
    """
    name = shape if isinstance(shape, str) else "custom"
    shape = get_shape(shape) if isinstance(shape, str) else shape
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    eos = [i for i in eos if i < shape.vocab_size]  # ids a small test vocabulary lacks can't be emitted anyway

    specs = _plan(shape, group_size, dtype)
    shards = _assign_shards(specs, max_shard_bytes)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for stale in [*directory.glob("model*.safetensors"), directory / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)

    pending: queue.Queue[tuple[Path, dict[str, torch.Tensor]] | None] = queue.Queue(maxsize=1)
    errors: list[BaseException] = []

    def writer() -> None:
        while (item := pending.get()) is not None:
            try:
                save_file(item[1], str(item[0]), metadata={"format": "pt"})
                item[0].chmod(0o644)  # safetensors creates files 0600; other users' loaders need to read them
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

    thread = threading.Thread(target=writer, name="write-shards", daemon=True)
    thread.start()
    try:
        for file_name, shard in zip(names, shards, strict=True):
            tensors = {
                spec.name: _make_tensor(
                    spec, group_size=group_size, sym=sym, desc_act=desc_act, generator=generator, device=device
                )
                .cpu()
                .contiguous()
                for spec in shard
            }
            if errors:
                break
            pending.put((directory / file_name, tensors))
    finally:
        pending.put(None)
        thread.join()
    if errors:
        raise errors[0]

    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(spec.nbytes for spec in specs)},
            "weight_map": {spec.name: name for name, shard in zip(names, shards, strict=True) for spec in shard},
        }
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    qcfg = quantization_config(group_size, sym, desc_act)
    config = _config_json(name, shape, qcfg, dtype, eos)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "quantize_config.json").write_text(json.dumps(qcfg, indent=2) + "\n")
    generation: dict[str, object] = {"do_sample": False}
    if shape.vocab_size > QWEN_BOS:
        generation |= {"bos_token_id": QWEN_BOS, "pad_token_id": QWEN_BOS}
    if eos:
        generation["eos_token_id"] = eos
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return directory


# ----------------------------------------------------------------------------------------------
# Reading back as a float model
# ----------------------------------------------------------------------------------------------


def iter_checkpoint_tensors(directory: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a (possibly sharded) safetensors checkpoint folder, by name."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    for name in files:
        with safe_open(str(directory / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield key, f.get_tensor(key)


def float_state_dict_from_gptq(directory: str | Path, *, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A plain float Qwen2 state dict (``...q_proj.weight`` etc.) from a GPTQ checkpoint folder.

    Meant for checking kernels on small models: everything is held in memory at `dtype`.
    """
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    qcfg = config["quantization_config"]
    fmt = str(qcfg.get("checkpoint_format", qcfg.get("format", "gptq"))).lower()
    bits = int(qcfg["bits"])
    tensors = dict(iter_checkpoint_tensors(directory))
    out: dict[str, torch.Tensor] = {}
    prefixes = {k.removesuffix(".qweight") for k in tensors if k.endswith(".qweight")}
    for prefix in sorted(prefixes):
        out[prefix + ".weight"] = dequantize_gptq(
            tensors.pop(prefix + ".qweight"),
            tensors.pop(prefix + ".qzeros"),
            tensors.pop(prefix + ".scales"),
            tensors.pop(prefix + ".g_idx"),
            bits,
            checkpoint_format=fmt,
            dtype=dtype,
        )
    for key, value in tensors.items():
        out[key] = value.to(dtype) if value.is_floating_point() else value
    if config.get("tie_word_embeddings") and "lm_head.weight" not in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def checkpoint_bytes(directory: str | Path) -> int:
    """Bytes of the weight files in a checkpoint folder."""
    return sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m gptq_chat.testing.random_checkpoint --shape 7b --dir D [--device cuda]``"""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", required=True, help="a shape key (e.g. 7b, qwen2.5-7b, tiny)")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--asym", action="store_true", help="random zero points instead of sym (8)")
    parser.add_argument("--desc-act", action="store_true", help="act-order g_idx (a random permutation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-eos", action="store_true", help="write no EOS id: generation never stops early")
    args = parser.parse_args(argv)
    shape = get_shape(args.shape)
    start = time.perf_counter()
    write_random_gptq_checkpoint(
        args.dir,
        shape,
        group_size=args.group_size,
        sym=not args.asym,
        desc_act=args.desc_act,
        seed=args.seed,
        device=args.device,
        eos_token_id=None if args.no_eos else QWEN_CHAT_EOS,
    )
    seconds = time.perf_counter() - start
    size = checkpoint_bytes(args.dir)
    print(f"{args.shape} shape -> {args.dir}: {size / 1e9:.2f} GB in {seconds:.1f} s ({args.device})")


if __name__ == "__main__":
    main()
