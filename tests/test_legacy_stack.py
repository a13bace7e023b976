"""The tutorial's stack (env/legacy-cu118/): what can be checked without CUDA 11.8, a GPU or download.pytorch.org.

- its pins resolve together against PyPI (PyPI's torch 2.1.1 standing in for 2.1.1+cu118, which lives only on
  download.pytorch.org);
- the loader's transformers-4 + auto-gptq arguments are ones transformers 4.37.2's `GPTQConfig` takes;
- the doctor recognises that stack and its pins;
- its set-up script refuses, with the fix, a machine that lacks what it needs.
Building auto-gptq against torch 2.1.1+cu118 and loading a checkpoint on it were not run (docs/environment.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from packaging.utils import canonicalize_name

from gptq_chat.doctor import checks as doctor
from gptq_chat.loading import gptq_stack
from gptq_chat.loading.kernels import KERNELS, KernelChoice
from gptq_chat.models.home import REPO_ROOT
from tests.test_doctor import fake_site

LEGACY = REPO_ROOT / "env" / "legacy-cu118"

# transformers v4.37.2, src/transformers/utils/quantization_config.py, GPTQConfig.__init__ (checked against the wheel
# from PyPI): its named arguments. Anything else lands in **kwargs and is ignored (disable_exllama aside).
GPTQCONFIG_437_ARGUMENTS = {
    "bits", "tokenizer", "dataset", "group_size", "damp_percent", "desc_act", "sym", "true_sequential",
    "use_cuda_fp16", "model_seqlen", "block_name_to_quantize", "module_name_preceding_first_block", "batch_size",
    "pad_token_id", "use_exllama", "max_input_length", "exllama_config", "cache_block_outputs",
    "modules_in_block_to_quantize",
}  # fmt: skip
EXLLAMA_VERSIONS_437 = (1, 2)  # ExllamaVersion.ONE / TWO, the only versions its post_init accepts


def pypi_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/auto-gptq/", timeout=10)
    except OSError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not pypi_reachable(), reason="needs PyPI")
def test_the_pins_resolve_together_against_pypi(tmp_path: Path) -> None:
    """pip's resolver, for Linux x86_64 and Python 3.11, with wheels only: about a minute, metadata only."""
    pins = doctor.read_pins(LEGACY / "requirements.txt")
    assert pins["torch"] == "2.1.1+cu118" and pins["auto-gptq"] == "0.7.1"
    assert pins["transformers"].startswith("4.37.") and pins["optimum"] == "1.17.1" and pins["peft"] == "0.8.2"
    stand_in = [f"{name}=={version.split('+')[0]}" for name, version in pins.items()]  # +cu118: pytorch.org only
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
         "--python-version", "3.11", "--platform", "manylinux2014_x86_64", "--only-binary=:all:",
         "--target", str(tmp_path / "target"), *stand_in],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    chosen = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    for name, version in pins.items():
        assert chosen[name] == version.split("+")[0], f"{name}: pinned {version}, resolved {chosen.get(name)}"
    assert chosen["numpy"].startswith("1.")  # torch 2.1 was built against numpy 1.x


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_legacy_loader_arguments_are_ones_transformers_4_37_takes(kernel: str) -> None:
    arguments = gptq_stack.gptq_config_kwargs(4, KernelChoice(kernel, "test"), gptq_stack.LEGACY)
    assert set(arguments) <= GPTQCONFIG_437_ARGUMENTS
    assert arguments["bits"] == 4 and "backend" not in arguments
    if arguments["use_exllama"]:
        assert arguments["exllama_config"]["version"] in EXLLAMA_VERSIONS_437
    assert gptq_stack.DTYPE_ARGUMENT[gptq_stack.LEGACY] == "torch_dtype"  # transformers 4 has no `dtype=`


def test_marlin_becomes_exllama_v2_on_the_legacy_stack_and_says_so() -> None:
    marlin = gptq_stack.gptq_config_kwargs(4, KernelChoice("marlin", "test"), gptq_stack.LEGACY)
    assert marlin == {"bits": 4, "use_exllama": True, "exllama_config": {"version": 2}}
    torch_kernel = gptq_stack.gptq_config_kwargs(4, KernelChoice("torch", "test"), gptq_stack.LEGACY)
    assert torch_kernel == {"bits": 4, "use_exllama": False}  # auto-gptq's CUDA kernel
    assert "exllama_v2" in gptq_stack.kernel_label("marlin", gptq_stack.LEGACY)
    assert gptq_stack.kernel_label("marlin", gptq_stack.MODERN) == "marlin"


def test_modern_loader_arguments_build_a_real_gptq_config() -> None:
    arguments = gptq_stack.from_pretrained_kwargs(4, KernelChoice("torch_aten", "test"), torch.bfloat16)
    assert arguments["dtype"] is torch.bfloat16
    config = arguments["quantization_config"]
    assert config.bits == 4 and "torch_aten" in str(config.backend)


def test_the_stack_is_told_by_transformers_major_and_auto_gptq() -> None:
    assert gptq_stack.stack_for("4.37.2", "0.7.1") == gptq_stack.LEGACY
    assert gptq_stack.stack_for("4.37.2", None) == gptq_stack.MODERN  # no auto-gptq: it can only be a broken modern
    assert gptq_stack.stack_for("5.24.0", None) == gptq_stack.MODERN
    assert gptq_stack.installed_stack() == gptq_stack.MODERN


def test_quantized_layers_of_either_stack_are_recognised() -> None:
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear

    auto_gptq_layer = type(
        "QuantLinear", (torch.nn.Module,), {"__module__": "auto_gptq.nn_modules.qlinear.qlinear_exllamav2"}
    )
    assert gptq_stack.is_quantized_module(auto_gptq_layer())
    assert gptq_stack.is_quantized_module(TorchLinear.__new__(TorchLinear))
    assert not gptq_stack.is_quantized_module(torch.nn.Linear(2, 2))


def test_the_doctor_knows_the_legacy_pins(tmp_path: Path) -> None:
    versions = {"torch": "2.1.1+cu118", "transformers": "4.37.2", "optimum": "1.17.1", "auto-gptq": "0.7.1"}
    site = fake_site(tmp_path / "site", **versions)
    check = doctor.check_packages([str(site)])
    assert check.status == doctor.OK and "env/legacy-cu118/requirements.txt" in check.message

    (site / "auto_gptq-0.7.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: auto-gptq\nVersion: 0.6.0\n"
    )
    check = doctor.check_packages([str(site)])
    assert check.status == doctor.FAIL and "auto-gptq 0.6.0" in check.message and "'auto-gptq==0.7.1'" in check.fix


def run_legacy_setup(tmp_path: Path, tools: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """env/legacy-cu118/setup.sh with only these fake tools (and the basics) on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)
    basics = ":".join(p for p in ("/usr/bin", "/bin") if Path(p).is_dir())
    return subprocess.run(
        ["bash", str(LEGACY / "setup.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{bin_dir}:{basics}", "HOME": str(tmp_path)},
        check=False,
    )


def test_legacy_setup_refuses_a_machine_without_a_gpu(tmp_path: Path) -> None:
    result = run_legacy_setup(tmp_path, {"nvidia-smi": "exit 9"})
    assert result.returncode == 1 and "no NVIDIA GPU" in result.stderr and "env/setup.sh" in result.stderr


def test_legacy_setup_refuses_an_nvcc_that_is_not_11_8(tmp_path: Path) -> None:
    smi = (
        'case "$1" in -L) echo "GPU 0: NVIDIA GeForce RTX 3090";; --query-gpu=compute_cap*) echo 8.6;;'
        ' --query-gpu=name*) echo "NVIDIA GeForce RTX 3090";; *) echo "| NVIDIA-SMI 520.61.05  CUDA Version: 11.8 |";;'
        " esac"
    )
    nvcc = 'echo "Cuda compilation tools, release 12.4, V12.4.131"'
    result = run_legacy_setup(tmp_path, {"nvidia-smi": smi, "nvcc": nvcc})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "compute capability 8.6" in result.stdout and "nvcc 11.8 not found" in result.stderr
    assert "CUDA_HOME=/usr/local/cuda-11.8" in result.stderr
    assert not (tmp_path / ".venv").exists() and not (REPO_ROOT / ".venv-legacy").exists()


def test_legacy_setup_refuses_a_driver_older_than_cuda_11_8(tmp_path: Path) -> None:
    smi = 'case "$1" in -L) echo "GPU 0: Tesla T4";; *) echo "| NVIDIA-SMI 470.82  CUDA Version: 11.4 |";; esac'
    result = run_legacy_setup(tmp_path, {"nvidia-smi": smi})
    assert result.returncode == 1 and "CUDA 11.4, older than 11.8" in result.stderr
