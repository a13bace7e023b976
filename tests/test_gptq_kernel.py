"""gptqmodel's CPU kernels compute what a GPTQ checkpoint says, checked against our own dequantization.

The reference is a plain float32 `Qwen2ForCausalLM` whose weights come from `dequantize_gptq` in
random_checkpoint.py (written from the GPTQ format, independent of gptqmodel). Kernels found with
gptqmodel 7.6.0 / transformers 5.24 / torch 2.13 (CPU), read from gptqmodel's source:

- ``from_pretrained(dir, device_map="cpu")`` (backend "auto") picks ``TorchAtenLinear``, which calls
  ``aten::_weight_int4pack_mm_for_cpu``: the activations, the group scales and the zero offsets
  ``(8 - zero) * scale`` are rounded to bfloat16, sums are fp32 and the result comes back as bfloat16,
  then is cast to the model's fp16. Not fp16-vs-fp32 accumulation: bf16 rounding dominates.
- backend "torch" (what kernels.py asks for on a CPU) gives ``TorchLinear``: fp16 weights
  ``fp16(scale * (code - zero))`` and an fp16 matmul. It wraps its dequantization in ``torch.compile``:
  the tiny model's first two forward calls took ~4 s each on a 2-core CPU (compiling), later ones ~0.9 s,
  so an app's first tokens pay it. The tests here switch dynamo off for it and run the same code eagerly.

Tolerances follow from those roundings; u is the unit roundoff (2**-8 bf16, 2**-11 fp16, 2**-24 fp32):

- One linear, per output element (a deterministic first-order bound, cannot flake):
  ``|y - y_ref| <= (u_act + u_w) * sum|x||W| + u_off * sum|x||(8 - z) s| + n u_fp32 * sums
  + u_out |x W| + u_fp16 |x W + b|``, plus 5 % for second-order terms. It must stay below 20 % of the
  signal, so a packing or layout bug (errors of order 100 %) cannot pass.
- Whole model, logits: each rounding adds a relative error of RMS at most u/sqrt(3) (round to nearest),
  so a kernel's outputs carry RMS relative error eps = sqrt(sum u_i**2 / 3) (4.5e-3 for TorchAtenLinear,
  4.0e-4 for TorchLinear). We inject exactly that noise into the float32 reference's linears and add the
  fp16-vs-fp32 difference of the rest of the network (an fp16 copy of the reference); the quantized
  model must stay within 2x the predicted RMS and 2x the predicted maximum logit error.
- Greedy tokens must agree wherever the reference's top-2 logit margin exceeds twice that maximum.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from gptq_chat.testing import random_checkpoint as rc

U_BF16, U_FP16, U_FP32 = 2.0**-8, 2.0**-11, 2.0**-24


@dataclass(frozen=True)
class Rounding:
    """Unit roundoffs a kernel applies on its way from fp16 activations to its result (0 = exact)."""

    activation: float  # the input activations
    weight: float  # each dequantized weight (via its group scale, or the fp16 product)
    zero_offset: float  # a separately rounded (8 - zero) * scale term
    output: float  # the kernel's result, before the cast back to fp16

    @property
    def relative_rms(self) -> float:
        """RMS relative error of one output: independent roundings of RMS u/sqrt(3) each."""
        return math.sqrt(sum(u * u for u in (self.activation, self.weight, self.zero_offset, self.output)) / 3)


KERNEL_ROUNDING = {
    "TorchAtenLinear": Rounding(activation=U_BF16, weight=U_BF16, zero_offset=U_BF16, output=U_BF16),
    "TorchLinear": Rounding(activation=0.0, weight=U_FP16, zero_offset=0.0, output=U_FP16),
}
EXPECTED_KERNEL = {"auto": "TorchAtenLinear", "torch": "TorchLinear"}


@dataclass(frozen=True)
class Case:
    id: str
    shape: str
    group_size: int
    sym: bool
    desc_act: bool
    backend: str
    max_shard_bytes: int = rc.MAX_SHARD_BYTES

    @property
    def batch(self) -> tuple[int, int]:
        """Token ids per logit check: Qwen's 151,936-token fp16 lm_head costs ~0.6 s per 32 positions on
        2 cores, and every new input shape costs the CPU kernels a one-time setup, so keep it small."""
        return (1, 32) if self.shape == "tiny" else (2, 64)


CASES = (
    Case("tiny-g128-sym-auto", "tiny", 128, sym=True, desc_act=False, backend="auto"),
    Case("tiny-g128-sym-torch", "tiny", 128, sym=True, desc_act=False, backend="torch"),
    # Written in ~0.4 MB shards, so loading also goes through model.safetensors.index.json.
    Case("v1k-g64-asym-sharded-auto", "tiny-v1k", 64, False, False, "auto", max_shard_bytes=400_000),
    Case("v1k-g32-asym-actorder-torch", "tiny-v1k", 32, sym=False, desc_act=True, backend="torch"),
)


@dataclass
class Loaded:
    case: Case
    directory: Path
    model: nn.Module  # the GPTQ model as transformers + gptqmodel load it (fp16)
    reference: nn.Module  # float32 Qwen2ForCausalLM with our dequantized weights
    weights: dict[str, torch.Tensor]  # the reference's state dict
    raw: dict[str, torch.Tensor]  # the checkpoint's tensors as stored


def quantized_linears(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if name.endswith(rc.LINEARS):
            yield name, module


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    from transformers import AutoConfig, AutoModelForCausalLM, GPTQConfig, Qwen2ForCausalLM

    case: Case = request.param
    if case.shape == "tiny":
        directory = request.getfixturevalue("tiny_gptq_weights")
    else:
        directory = rc.write_random_gptq_checkpoint(
            tmp_path_factory.mktemp(case.id),
            case.shape,
            group_size=case.group_size,
            sym=case.sym,
            desc_act=case.desc_act,
            seed=7,
            max_shard_bytes=case.max_shard_bytes,
        )
    config = AutoConfig.from_pretrained(directory)
    del config.quantization_config
    reference = Qwen2ForCausalLM(config).float().eval()
    weights = rc.float_state_dict_from_gptq(directory)
    reference.load_state_dict(weights, strict=True)
    raw = dict(rc.iter_checkpoint_tensors(directory))

    extra = {} if case.backend == "auto" else {"quantization_config": GPTQConfig(bits=4, backend=case.backend)}
    with torch._dynamo.config.patch(disable=case.backend == "torch"):  # see the module docstring
        model = AutoModelForCausalLM.from_pretrained(directory, device_map="cpu", **extra).eval()
        yield Loaded(case, Path(directory), model, reference, weights, raw)


def test_checkpoint_is_what_the_case_asked_for(loaded: Loaded) -> None:
    case, shards = loaded.case, sorted(p.name for p in loaded.directory.glob("*.safetensors"))
    qcfg = loaded.model.config.quantization_config.to_dict()
    assert (qcfg["bits"], qcfg["group_size"], qcfg["sym"], qcfg["desc_act"]) == (
        4,
        case.group_size,
        case.sym,
        case.desc_act,
    )
    if case.max_shard_bytes < rc.MAX_SHARD_BYTES:
        assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
        assert (loaded.directory / "model.safetensors.index.json").is_file()
    else:
        assert shards == ["model.safetensors"]


def test_linears_are_gptqmodel_quantized_modules(loaded: Loaded) -> None:
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    linears = dict(quantized_linears(loaded.model))
    assert len(linears) == 7 * loaded.model.config.num_hidden_layers
    kinds = {type(m).__name__ for m in linears.values()}
    assert all(isinstance(m, BaseQuantLinear) for m in linears.values()), kinds
    assert kinds == {EXPECTED_KERNEL[loaded.case.backend]}
    for module in linears.values():  # (their `sym` and `desc_act` attributes don't follow the checkpoint)
        assert (module.bits, module.group_size) == (4, loaded.case.group_size)
    assert type(loaded.model.lm_head) is nn.Linear  # lm_head and embeddings stay fp16
    assert loaded.model.lm_head.weight.dtype == torch.float16


def zero_offsets(raw: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """``(8 - zero) * scale`` of every weight, ``[out, in]``: the term the aten int4 format rounds apart."""
    zeros = rc.unpack_cols(rc.v1_to_v2_qzeros(raw[name + ".qzeros"])).float()
    scales = raw[name + ".scales"].float()
    g = raw[name + ".g_idx"].long()
    return ((8 - zeros[:, : scales.shape[1]]) * scales)[g].t()


def test_each_linear_is_within_its_rounding_bound(loaded: Loaded) -> None:
    rounding = KERNEL_ROUNDING[EXPECTED_KERNEL[loaded.case.backend]]
    generator = torch.Generator().manual_seed(5)
    for name, module in quantized_linears(loaded.model):
        w = loaded.weights[name + ".weight"]
        b = loaded.weights.get(name + ".bias", torch.zeros(w.shape[0]))
        x = torch.randn(32, w.shape[1], generator=generator).half()
        with torch.no_grad():
            y = module(x).float()
        xf = x.float()
        y0 = xf @ w.t()
        sum_w = xf.abs() @ w.abs().t()
        sum_o = xf.abs() @ zero_offsets(loaded.raw, name).abs().t()
        n = w.shape[1]
        bound = 1.05 * (
            (rounding.activation + rounding.weight) * sum_w
            + rounding.zero_offset * sum_o
            + n * U_FP32 * (sum_w + sum_o)
            + rounding.output * y0.abs()
            + U_FP16 * (y0 + b).abs()
        )
        err = (y - (y0 + b)).abs()
        worst = float((err / bound).max())
        assert worst <= 1.0, f"{name}: error reaches {worst:.2f}x its rounding bound"
        relative_bound = float(bound.pow(2).mean().sqrt() / y0.pow(2).mean().sqrt())
        assert relative_bound < 0.2, f"{name}: bound {relative_bound:.2f} of the signal cannot catch a bug"


@dataclass(frozen=True)
class LogitCheck:
    kernel: str
    quantized: torch.Tensor
    reference: torch.Tensor
    predicted_rms: float
    predicted_max: float


@pytest.fixture(scope="module")
def logit_check(loaded: Loaded) -> LogitCheck:
    """Logits of both models on random ids, and the error the kernel's rounding predicts."""
    generator = torch.Generator().manual_seed(11)
    vocab = loaded.model.config.vocab_size
    ids = torch.randint(0, vocab, loaded.case.batch, generator=generator)
    with torch.no_grad():
        quantized = loaded.model(ids).logits.float()
        reference = loaded.reference(ids).logits.float()

        eps = KERNEL_ROUNDING[EXPECTED_KERNEL[loaded.case.backend]].relative_rms  # noise like the kernel's

        def add_kernel_noise(_module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
            rms = out.pow(2).mean(-1, keepdim=True).sqrt()
            return out + eps * rms * torch.randn(out.shape, generator=generator)

        hooks = [m.register_forward_hook(add_kernel_noise) for _, m in quantized_linears(loaded.reference)]
        try:
            simulated = [loaded.reference(ids).logits.float() - reference for _ in range(2)]
        finally:
            for hook in hooks:
                hook.remove()
        fp16_error = copy.deepcopy(loaded.reference).half()(ids).logits.float() - reference

    sim_rms = max(float(e.pow(2).mean().sqrt()) for e in simulated)
    sim_max = max(float(e.abs().max()) for e in simulated)
    fp16_rms, fp16_max = float(fp16_error.pow(2).mean().sqrt()), float(fp16_error.abs().max())
    kernel = EXPECTED_KERNEL[loaded.case.backend]
    return LogitCheck(kernel, quantized, reference, math.hypot(sim_rms, fp16_rms), math.hypot(sim_max, fp16_max))


def test_logits_match_the_float_model(logit_check: LogitCheck) -> None:
    err = logit_check.quantized - logit_check.reference
    rms, worst = float(err.pow(2).mean().sqrt()), float(err.abs().max())
    signal = float(logit_check.reference.pow(2).mean().sqrt())
    assert torch.isfinite(logit_check.quantized).all()
    assert 2 * logit_check.predicted_rms < 0.1 * signal  # the tolerance is far below the logits' size
    assert rms <= 2 * logit_check.predicted_rms, f"RMS error {rms:.2e}, predicted {logit_check.predicted_rms:.2e}"
    assert worst <= 2 * logit_check.predicted_max, f"max error {worst:.2e}, predicted {logit_check.predicted_max:.2e}"


def test_greedy_tokens_agree_where_the_margin_is_clear(logit_check: LogitCheck) -> None:
    top2 = logit_check.reference.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * (2 * logit_check.predicted_max)
    same = logit_check.quantized.argmax(-1) == logit_check.reference.argmax(-1)
    assert same[clear].all(), f"{int((~same[clear]).sum())} of {int(clear.sum())} clear positions differ"
    # A random model's logits are flat (top-2 gap ~ 0.2-0.3 of their spread) and TorchAtenLinear's bf16
    # error reaches ~10 % of that spread, so few positions are provably clear there; with TorchLinear's
    # fp16 most are, and the check must not be empty.
    if logit_check.kernel == "TorchLinear":
        assert float(clear.float().mean()) > 0.3, f"only {int(clear.sum())} positions had a clear margin"


# ----------------------------------------------------------------------------------------------
# Packing, without loading a model
# ----------------------------------------------------------------------------------------------


def random_layer(
    fin: int, fout: int, group_size: int, sym: bool, desc_act: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes ``[in, out]``, zero points ``[groups, out]``, fp16 scales and g_idx of one random layer."""
    g = torch.Generator().manual_seed(seed)
    groups = fin // group_size
    codes = torch.randint(0, 16, (fin, fout), generator=g, dtype=torch.int32)
    if sym:
        zeros = torch.full((groups, fout), 8, dtype=torch.int32)
    else:
        zeros = torch.randint(1, 16, (groups, fout), generator=g, dtype=torch.int32)
    scales = (torch.rand(groups, fout, generator=g) * 0.01 + 0.001).half()
    g_idx = torch.arange(fin, dtype=torch.int32) // group_size
    if desc_act:
        g_idx = g_idx[torch.randperm(fin, generator=g)]
    return codes, zeros, scales, g_idx


def exact_weight(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    g = g_idx.long()
    return (scales.float()[g] * (codes - zeros[g]).float()).t().contiguous()


def test_pack_and_dequantize_round_trip() -> None:
    codes, zeros, scales, g_idx = random_layer(256, 96, 64, sym=False, desc_act=True, seed=1)
    qweight, qzeros = rc.pack_rows(codes), rc.v1_qzeros(zeros)
    assert qweight.shape == (32, 96) and qweight.dtype == torch.int32
    assert qzeros.shape == (4, 12) and qzeros.dtype == torch.int32
    assert torch.equal(rc.unpack_rows(qweight), codes)
    assert torch.equal(rc.unpack_cols(rc.v1_to_v2_qzeros(qzeros)), zeros)
    weight = rc.dequantize_gptq(qweight, qzeros, scales, g_idx)
    assert torch.equal(weight, exact_weight(codes, zeros, scales, g_idx))
    v2 = rc.dequantize_gptq(qweight, rc.pack_cols(zeros), scales, g_idx, checkpoint_format="gptq_v2")
    assert torch.equal(v2, weight)


def test_v1_cannot_store_a_zero_point_of_zero() -> None:
    with pytest.raises(ValueError, match=r"1\.\.15"):
        rc.v1_qzeros(torch.zeros(1, 8, dtype=torch.int32))


@pytest.mark.parametrize(("group_size", "sym", "desc_act"), [(128, True, False), (64, False, False), (32, False, True)])
def test_our_packing_equals_gptqmodels_pack_block(
    monkeypatch: pytest.MonkeyPatch, group_size: int, sym: bool, desc_act: bool
) -> None:
    """gptqmodel's own packer, given the exact float weight, must produce our qweight and (v2) qzeros."""
    from gptqmodel.nn_modules.qlinear.torch_aten_kernel import TorchAtenLinear

    # gptqmodel's Python packer ("original logic"); its C++ twin compiles on first use, too slow here.
    monkeypatch.setenv("GPTQMODEL_DISABLE_PACK_EXT", "1")
    fin, fout = 256, 128
    codes, zeros, scales, g_idx = random_layer(fin, fout, group_size, sym, desc_act, seed=group_size)
    linear = nn.Linear(fin, fout, bias=False)
    linear.weight.data = exact_weight(codes, zeros, scales, g_idx)
    module = TorchAtenLinear(
        bits=4, group_size=group_size, sym=sym, desc_act=desc_act, in_features=fin, out_features=fout, bias=False
    )
    module.pack_block(linear, scales.t().float(), zeros.t().float(), g_idx)
    assert torch.equal(module.qweight, rc.pack_rows(codes))
    assert torch.equal(module.qzeros, rc.pack_cols(zeros))  # gptqmodel keeps v2 (true zero points) inside
    assert torch.equal(rc.v1_to_v2_qzeros(rc.v1_qzeros(zeros)), module.qzeros)  # what its loader does to v1
    assert torch.equal(module.scales, scales) and torch.equal(module.g_idx, g_idx)


# ----------------------------------------------------------------------------------------------
# The shapes table
# ----------------------------------------------------------------------------------------------

NOMINAL_BILLIONS = {"0.5b": 0.5, "1.8b": 1.8, "1.5b": 1.5, "3b": 3, "4b": 4, "7b": 7, "14b": 14, "32b": 32, "72b": 72}


@pytest.mark.parametrize("key", [k for k in rc.QWEN_SHAPES if k.startswith("qwen")])
def test_shape_is_consistent_and_has_its_nominal_size(key: str) -> None:
    shape = rc.QWEN_SHAPES[key]
    assert shape.head_dim * shape.num_heads == shape.hidden_size
    assert shape.num_heads % shape.num_kv_heads == 0
    for fin, fout in shape.linear_shapes().values():
        assert fin % 128 == 0 and fout % 8 == 0
    per_layer = sum(fin * fout for fin, fout in shape.linear_shapes().values())
    embeddings = shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
    billions = (shape.num_layers * per_layer + embeddings) / 1e9
    nominal = NOMINAL_BILLIONS[key.split("-")[1]]
    assert 0.9 * nominal <= billions <= 1.3 * nominal, f"{key}: {billions:.2f}B parameters"


def test_command_line_writes_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc.main(["--shape", "tiny-v1k", "--dir", str(tmp_path / "ckpt"), "--no-eos"])
    assert "GB in" in capsys.readouterr().out
    assert "eos_token_id" not in (tmp_path / "ckpt" / "generation_config.json").read_text()
    assert rc.checkpoint_bytes(tmp_path / "ckpt") > 0


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
def test_random_weights_are_centred(tmp_path: Path, sym: bool) -> None:
    """(code - zero) must average 0, or every layer adds the same rank-one push to the residual stream."""
    directory = rc.write_random_gptq_checkpoint(tmp_path, "tiny-v1k", sym=sym, group_size=64, seed=3)
    raw = dict(rc.iter_checkpoint_tensors(directory))
    diffs = []
    for name in (k.removesuffix(".qweight") for k in raw if k.endswith(".qweight")):
        codes = rc.unpack_rows(raw[name + ".qweight"])
        zeros = rc.unpack_cols(rc.v1_to_v2_qzeros(raw[name + ".qzeros"]))
        assert int(zeros.min()) >= 1 and int(zeros.max()) <= 15
        if sym:
            assert int(codes.min()) >= 1 and bool((zeros == 8).all())
        diffs.append((codes - zeros[raw[name + ".g_idx"].long()]).float().flatten())
    mean = float(torch.cat(diffs).mean())
    assert abs(mean) < 0.02, f"mean (code - zero) = {mean:.3f}"
