"""Kernel choice: the fastest kernel that works offline on the device, or a clear refusal."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gptq_chat.doctor.checks import typical_checkpoint
from gptq_chat.loading.checkpoint import CheckpointInfo
from gptq_chat.loading.kernels import KERNELS, KernelError, choose_kernel

HOPPER, AMPERE, TURING, PASCAL = (9, 0), (8, 0), (7, 5), (6, 1)


def qwen7b(**gptq: object) -> CheckpointInfo:
    """Qwen1.5-7B-Chat-GPTQ-Int4 as the kernel choice sees it: the doctor's typical checkpoint, with its size, and
    other GPTQ settings where given (bits, group_size, sym, desc_act)."""
    info = typical_checkpoint()
    return dataclasses.replace(
        info,
        path=Path("/models/Qwen1.5-7B-Chat-GPTQ-Int4"),
        weight_bytes=5_900_000_000,
        gptq=dataclasses.replace(info.gptq, **gptq),
    )


@pytest.mark.parametrize("capability", [HOPPER, AMPERE, (8, 9)])
def test_marlin_on_ampere_and_newer_never_machete(capability) -> None:
    assert choose_kernel(qwen7b(), capability).backend == "marlin"
    assert "machete" not in KERNELS


@pytest.mark.parametrize("capability", [TURING, PASCAL])
def test_exllama_v2_on_older_cards(capability) -> None:
    choice = choose_kernel(qwen7b(), capability)
    assert choice.backend == "exllama_v2"
    assert "compute capability 8.0+" in choice.reason


def test_asymmetric_checkpoint_falls_back_from_marlin_and_says_why() -> None:
    choice = choose_kernel(qwen7b(sym=False), HOPPER)
    assert choice.backend == "exllama_v2"
    assert "sym=false" in choice.reason


def test_act_order_checkpoint_keeps_marlin() -> None:
    assert choose_kernel(qwen7b(desc_act=True), HOPPER).backend == "marlin"


def test_eight_bit_uses_marlin_on_gpu_and_triton_on_old_cards() -> None:
    assert choose_kernel(qwen7b(bits=8), HOPPER).backend == "marlin"
    assert choose_kernel(qwen7b(bits=8), TURING).backend == "triton"


def test_cpu_gets_the_aten_int4_kernel_and_the_torch_kernel_as_fallback() -> None:
    choice = choose_kernel(qwen7b(), None)
    assert (choice.backend, choice.gptqmodel_backend) == ("torch_aten", "gptq_torch_aten")
    assert choose_kernel(qwen7b(group_size=-1), None).backend == "torch"
    assert choose_kernel(qwen7b(bits=8), None).backend == "torch"


def test_explicit_backend_wins_when_it_can_run() -> None:
    choice = choose_kernel(qwen7b(), HOPPER, "triton")
    assert (choice.backend, choice.reason) == ("triton", "asked for explicitly")


def test_explicit_backend_that_cannot_run_is_refused_with_the_reason() -> None:
    with pytest.raises(KernelError, match="symmetric"):
        choose_kernel(qwen7b(sym=False), HOPPER, "marlin")
    with pytest.raises(KernelError, match="needs a CUDA GPU"):
        choose_kernel(qwen7b(), None, "marlin")
    with pytest.raises(KernelError, match="Unknown GPTQ kernel 'machete'"):
        choose_kernel(qwen7b(), HOPPER, "machete")


def test_cpu_only_kernel_is_refused_on_a_gpu() -> None:
    with pytest.raises(KernelError, match="CPU only"):
        choose_kernel(qwen7b(), HOPPER, "torch_aten")


GROUP_96 = "does not run group size 96"


@pytest.mark.parametrize(
    ("capability", "reasons"),
    [
        (HOPPER, [f"marlin {GROUP_96}", f"exllama_v2 {GROUP_96}", f"triton {GROUP_96}", f"torch {GROUP_96}"]),
        (
            TURING,
            [
                "marlin needs compute capability 8.0+, this GPU has 7.5",
                f"exllama_v2 {GROUP_96}",
                f"triton {GROUP_96}",
                f"torch {GROUP_96}",
            ],
        ),
        (None, [f"torch_aten {GROUP_96}", f"torch {GROUP_96}"]),
    ],
)
def test_group_size_no_kernel_runs_is_refused_naming_each_reason(capability, reasons: list[str]) -> None:
    """Every kernel tried on this device, each with its own reason, in the order they were tried."""
    info = qwen7b(group_size=96)
    with pytest.raises(KernelError) as refused:
        choose_kernel(info, capability)
    assert str(refused.value) == f"No GPTQ kernel can run {info.name} here: {'; '.join(reasons)}"
