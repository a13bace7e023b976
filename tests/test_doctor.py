"""The doctor against this CPU machine and against broken environments the tests build for real.

Broken means: a PATH without nvcc (or with the wrong one), a site folder whose package metadata claims a wrong
version, a truncated model folder, a disk or a GPU that is too small. GPU machines are described by stating their
facts (`Machine`: name, compute capability, VRAM, torch's CUDA), since this machine has none; everything else the
checks read is real: files, PATH, installed packages, the planner.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gptq_chat.doctor import checks as doctor
from gptq_chat.doctor.checks import FAIL, OK, WARN, Gpu, Machine, exit_code, run_checks
from gptq_chat.loading.gpus import GpuSpec
from gptq_chat.loading.memory_plan import FAST_GRAPH_POOL_BYTES, GIB, cached_as, plan  # the pool: a guess (GPU)
from gptq_chat.loading.placement import largest_context, standard_gpus
from gptq_chat.models import store
from gptq_chat.models.home import DEMO_MODEL_NAME, REPO_ROOT
from tests.support.engine_bytes import SamplingPeaks, footprint

ON_CPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without a GPU")


def run_doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python env/doctor.py ARGS`, the user's command, in a fresh process."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "env" / "doctor.py"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        check=False,
    )


def copy_checkpoint(source: Path, target: Path, truncate_weights_to: int | None = None) -> Path:
    """A copy of a checkpoint folder (weights hard-linked unless truncated, so the session's fixture stays intact)."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.suffix == ".safetensors" and truncate_weights_to is not None:
            with file.open("rb") as handle:
                (target / file.name).write_bytes(handle.read(truncate_weights_to))
        elif file.suffix == ".safetensors":
            os.link(file, target / file.name)
        else:
            shutil.copy2(file, target / file.name)
    return target


def fake_tool(folder: Path, name: str, output: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(f"#!/bin/sh\necho '{output}'\n")
    script.chmod(0o755)
    return script


def rtx_4090(tmp_path: Path, path: Path, **changes: object) -> Machine:
    """The facts of a Linux box with one RTX 4090, driver 570 (CUDA 12.8) and torch 2.13.0+cu128."""
    machine = Machine(
        python=tuple(sys.version_info[:3]),  # type: ignore[arg-type]
        torch_version="2.13.0+cu128",
        torch_cuda="12.8",
        cuda_available=True,
        gpus=(Gpu(0, "NVIDIA GeForce RTX 4090", (8, 9), 24 * GIB, 23 * GIB),),
        driver_version="570.86.10",
        driver_cuda="12.8",
        smi_gpus=("NVIDIA GeForce RTX 4090",),
        path=str(path),
        cuda_home=None,
        default_cuda_home=str(tmp_path / "no-cuda-here"),
    )
    return replace(machine, **changes)


def by_name(checks: list[doctor.Check], name: str) -> doctor.Check:
    found = [check for check in checks if check.name == name]
    assert len(found) == 1, [check.line() for check in checks]
    return found[0]


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty models home, used by both the in-process checks and `env/doctor.py`."""
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("GPTQ_CHAT_HOME", str(root))
    monkeypatch.delenv("GPTQ_CHAT_MODEL", raising=False)
    monkeypatch.delenv("GPTQ_CHAT_FREE_DISK_BYTES", raising=False)
    return root


@pytest.fixture
def no_marlin_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """gptqmodel's JIT cache pointed at an empty folder: nothing compiled yet."""
    cache = tmp_path / "torch_extensions"
    cache.mkdir()
    monkeypatch.setenv("GPTQMODEL_TORCH_EXTENSIONS_DIR", str(cache))
    monkeypatch.delenv("GPTQMODEL_MARLIN_FP16_BUILD_ROOT", raising=False)
    return cache


# ------------------------------------------------------------------------------------------------
# This machine
# ------------------------------------------------------------------------------------------------


@ON_CPU
def test_cpu_machine_reports_cpu_only_mode_and_the_demo_model_fine(models: Path, tiny_gptq_dir: Path) -> None:
    copy_checkpoint(tiny_gptq_dir, models / "demo" / DEMO_MODEL_NAME)  # a working model in the demo's place
    result = run_doctor()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"{WARN} torch") and "CPU-only mode" in line for line in lines), result.stdout
    assert any(
        line.startswith(f"{OK} model") and "demo:" in line and "the app opens this one" in line for line in lines
    )
    assert any(line.startswith(f"{OK} kernels") and "torch_aten will be used" in line for line in lines)
    assert any(line.startswith(f"{OK} compiler") and "CPU mode" in line for line in lines)
    assert any(line.startswith(f"{OK} packages") and "a tested set" in line for line in lines), result.stdout
    assert not any(line.startswith(FAIL) for line in lines)
    assert result.stdout.rstrip().endswith("Nothing blocks chatting.")


@ON_CPU
def test_no_model_yet_is_a_warning_that_names_the_command(models: Path) -> None:
    checks = run_checks(root=models)
    models_line = by_name(checks, "models")
    assert models_line.status == WARN and "demo model" in models_line.message
    assert "download.py --demo" in models_line.fix
    assert by_name(checks, "memory").status == OK  # nothing to plan for yet
    assert exit_code(checks) == 0


@ON_CPU
def test_json_output_carries_status_fix_and_blocking(models: Path) -> None:
    result = run_doctor("--json")
    assert result.returncode == 0, result.stderr
    checks = json.loads(result.stdout)
    assert {check["name"] for check in checks} >= {"Python", "torch", "packages", "disk"}
    assert all({"status", "message", "fix", "blocking"} <= check.keys() for check in checks)


# ------------------------------------------------------------------------------------------------
# nvcc and ninja (a GPU machine whose kernel is not compiled yet)
# ------------------------------------------------------------------------------------------------


def test_no_nvcc_on_path_blocks_a_gpu_whose_kernel_is_not_compiled(
    tmp_path: Path, models: Path, no_marlin_cache: Path
) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "ninja", "1.13.0")  # ninja yes, nvcc nowhere (not on PATH, no CUDA_HOME, no /usr/local/cuda)
    checks = run_checks(rtx_4090(tmp_path, bin_dir), root=models)
    compiler = by_name(checks, "compiler")
    assert compiler.status == FAIL and "nvcc not found" in compiler.message
    assert "CUDA 12.8 toolkit" in compiler.fix and "cuda-12.8/bin" in compiler.fix
    compiled = by_name(checks, "compiled")
    assert compiled.status == WARN and "Marlin (fp16) is not compiled yet" in compiled.message
    assert "--build-kernels" in compiled.fix
    assert by_name(checks, "kernels").message.startswith("marlin will be used")
    assert exit_code(checks) == 1


def test_nvcc_of_another_cuda_major_is_refused_like_torch_refuses_it(
    tmp_path: Path, models: Path, no_marlin_cache: Path
) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "ninja", "1.13.0")
    fake_tool(bin_dir, "nvcc", "Cuda compilation tools, release 11.8, V11.8.89")
    compiler = by_name(run_checks(rtx_4090(tmp_path, bin_dir), root=models), "compiler")
    assert compiler.status == FAIL and "nvcc 11.8" in compiler.message and "CUDA 12.8" in compiler.message
    assert "CUDA_HOME=/usr/local/cuda-12.8" in compiler.fix


def test_ninja_only_inside_the_venv_is_explained(tmp_path: Path, models: Path, no_marlin_cache: Path) -> None:
    if not (Path(sys.executable).parent / "ninja").is_file():
        pytest.skip("this venv has no ninja of its own")
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "nvcc", "Cuda compilation tools, release 12.8, V12.8.93")
    compiler = by_name(run_checks(rtx_4090(tmp_path, bin_dir), root=models), "compiler")
    assert compiler.status == FAIL and "torch looks only on PATH" in compiler.message
    assert compiler.fix.startswith("export PATH=")


def test_matching_toolchain_and_a_compiled_kernel(tmp_path: Path, models: Path, no_marlin_cache: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "ninja", "1.13.0")
    fake_tool(bin_dir, "nvcc", "Cuda compilation tools, release 12.8, V12.8.93")
    checks = run_checks(rtx_4090(tmp_path, bin_dir), root=models)
    assert by_name(checks, "compiler").status == OK and "can compile Marlin" in by_name(checks, "compiler").message
    assert by_name(checks, "compiled").status == WARN  # compilable, just not compiled yet: not blocking

    library = no_marlin_cache / "marlin_fp16" / "9ab463bde7d447f2" / "gptqmodel_marlin_fp16_ops.so"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"\x7fELF")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    checks = run_checks(rtx_4090(tmp_path, empty), root=models)  # no toolchain at all, but nothing to compile
    assert by_name(checks, "compiled").status == OK and str(library) in by_name(checks, "compiled").message
    compiler = by_name(checks, "compiler")
    assert compiler.status == OK and "already compiled" in compiler.message
    assert not any(check.blocking for check in checks), [check.line() for check in checks]


@ON_CPU
def test_no_nvcc_on_path_does_not_matter_in_cpu_mode(tmp_path: Path, models: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    result = run_doctor(env={"PATH": str(bare), "CUDA_HOME": str(tmp_path / "none")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{OK} compiler   not needed: CPU mode" in result.stdout


# ------------------------------------------------------------------------------------------------
# Driver and torch builds
# ------------------------------------------------------------------------------------------------


def test_driver_older_than_torchs_cuda_is_blocking_with_the_driver_to_get(tmp_path: Path, models: Path) -> None:
    machine = rtx_4090(tmp_path, tmp_path, torch_cuda="13.0", driver_cuda="12.4", cuda_available=False, gpus=())
    checks = run_checks(machine, root=models)
    driver = by_name(checks, "driver")
    assert driver.status == FAIL and "older than torch's CUDA 13.0" in driver.message
    assert "580.65.06" in driver.fix
    assert by_name(checks, "torch").status == FAIL  # nvidia-smi sees the GPU, torch does not
    assert exit_code(checks) == 1


def test_cpu_build_of_torch_on_a_gpu_machine(tmp_path: Path, models: Path) -> None:
    machine = rtx_4090(tmp_path, tmp_path, torch_version="2.13.0+cpu", torch_cuda=None, cuda_available=False, gpus=())
    torch_line = by_name(run_checks(machine, root=models), "torch")
    assert torch_line.status == FAIL and "CPU build" in torch_line.message and "RTX 4090" in torch_line.message
    assert "pip uninstall -y torch" in torch_line.fix and "env/setup.sh" in torch_line.fix


def test_torch_that_does_not_import_is_blocking_with_setup_and_its_offline_route() -> None:
    machine = Machine(python=(3, 11, 7), torch_version=None, torch_error="ModuleNotFoundError: No module named 'torch'")
    line = doctor.check_torch(machine)
    assert line.status == FAIL and line.message == "does not import: ModuleNotFoundError: No module named 'torch'"
    assert line.fix.startswith("bash env/setup.sh; without internet access: bash env/setup.sh --wheels DIR")


def test_torch_line_names_the_folder_torch_is_imported_from() -> None:
    line = doctor.check_torch(doctor.probe())
    assert f"; from {Path(torch.__file__).parent}" in line.message


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="tells a venv's own torch from a shared one")
def test_torch_line_tells_the_venvs_own_torch_from_a_shared_one(tmp_path: Path, models: Path) -> None:
    own = str(Path(sys.prefix) / "lib" / "python3.12" / "site-packages" / "torch")
    shared = "/usr/lib/python3/dist-packages/torch"
    line = by_name(run_checks(rtx_4090(tmp_path, tmp_path, torch_path=own), root=models), "torch")
    assert line.status == OK and line.message.endswith(f"sees 1 CUDA GPU; from {own} (this venv's own)")
    line = by_name(run_checks(rtx_4090(tmp_path, tmp_path, torch_path=shared), root=models), "torch")
    assert line.message.endswith(f"; from {shared} (a preinstalled one this venv shares)")
    # A shared CPU build on a GPU machine is not this venv's to uninstall: a .venv with a torch of its own instead.
    cpu = {"torch_version": "2.13.0+cpu", "torch_cuda": None, "cuda_available": False, "gpus": ()}
    line = by_name(run_checks(rtx_4090(tmp_path, tmp_path, torch_path=shared, **cpu), root=models), "torch")
    assert line.status == FAIL and line.fix.startswith("rm -rf .venv && bash env/setup.sh --own-torch")


def test_gpu_line_names_the_card_its_capability_and_vram(tmp_path: Path, models: Path) -> None:
    gpu = by_name(run_checks(rtx_4090(tmp_path, tmp_path), root=models), "GPU 0")
    assert gpu.status == OK
    assert gpu.message == "NVIDIA GeForce RTX 4090, compute capability 8.9, 1.0 GiB used of 24.0 GiB, 23.0 GiB free"


# ------------------------------------------------------------------------------------------------
# Package versions
# ------------------------------------------------------------------------------------------------


def fake_site(folder: Path, **versions: str) -> Path:
    """A site folder whose metadata claims these versions (what `pip install` leaves behind, minus the code)."""
    for name, version in versions.items():
        dist = folder / f"{name.replace('-', '_')}-{version}.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


def test_a_package_outside_the_supported_range_is_blocking_with_the_pip_command(tmp_path: Path, models: Path) -> None:
    site = fake_site(tmp_path / "site", transformers="4.30.0")
    result = run_doctor(env={"PYTHONPATH": str(site)})
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith(f"{FAIL} packages"))
    assert "transformers 4.30.0" in line and "transformers<6,>=5.17" in line
    assert "-m pip install 'transformers<6,>=5.17'" in result.stdout


def test_inside_the_ranges_but_untested_is_a_warning(tmp_path: Path) -> None:
    site = fake_site(tmp_path / "site", transformers="5.20.0")
    check = doctor.check_packages([str(site), *sys.path])
    assert check.status == WARN and "transformers 5.20.0" in check.message and "not a combination" in check.message
    assert "bash env/setup.sh" in check.fix and "env/tested-gpu.txt" in check.fix


def test_the_gpu_machines_set_is_a_tested_set(tmp_path: Path) -> None:
    site = fake_site(tmp_path / "site", torch="2.11.0+cu130", transformers="5.17.0", optimum="2.3.0", gptqmodel="7.6.0")
    check = doctor.check_packages([str(site)])
    assert check.status == OK and "env/tested-gpu.txt" in check.message


def test_a_missing_gptq_library_is_blocking(tmp_path: Path) -> None:
    site = fake_site(tmp_path / "site", torch="2.13.0", transformers="5.24.0", optimum="2.3.0")
    check = doctor.check_packages([str(site)])
    assert check.status == FAIL and "gptqmodel not installed" in check.message
    assert check.fix.startswith("bash env/setup.sh; without internet access: bash env/setup.sh --wheels DIR")


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------


def test_an_incomplete_download_the_app_would_open_is_blocking_and_resumed(models: Path, tiny_gptq_dir: Path) -> None:
    folder = copy_checkpoint(tiny_gptq_dir, models / "Qwen" / "Tiny-GPTQ-Int4", truncate_weights_to=1_000_000)
    weights = {p.name: {"size": p.stat().st_size} for p in tiny_gptq_dir.glob("*.safetensors")}
    store.write_manifest(folder, {"model_id": "Qwen/Tiny-GPTQ-Int4"}, weights)  # as download.py left it, whole
    result = run_doctor()
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith(f"{FAIL} model"))
    assert "Qwen/Tiny-GPTQ-Int4" in line and "1,000,000 of" in line and "the app opens this one" in line
    assert "fix: resume the download: .venv/bin/python download.py Qwen/Tiny-GPTQ-Int4" in result.stdout


def test_a_truncated_folder_named_on_the_command_line_is_to_be_copied_again(
    tmp_path: Path, tiny_gptq_dir: Path
) -> None:
    """`env/doctor.py --model FOLDER` on a hand copy: not a kernel problem, and no download to resume."""
    folder = copy_checkpoint(tiny_gptq_dir, tmp_path / "m", truncate_weights_to=1_000_000)
    weights = next(tiny_gptq_dir.glob("*.safetensors"))
    result = run_doctor("--model", str(folder))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(f"{FAIL} model"))
    assert "truncated: 1,000,000 of" in lines[index]
    fix = lines[index + 1]
    assert f"{weights.name} should be {weights.stat().st_size:,} bytes" in fix and "copy it again" in fix, fix
    assert "kernel" not in fix and "download.py m" not in fix


def test_an_incomplete_model_beside_the_chosen_one_is_only_a_warning(
    models: Path, tiny_gptq_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_checkpoint(tiny_gptq_dir, models / "Qwen" / "A-Broken-GPTQ-Int4", truncate_weights_to=1_000_000)
    good = copy_checkpoint(tiny_gptq_dir, models / "Qwen" / "B-Good-GPTQ-Int4")
    (models / "Qwen" / ".C-Half-GPTQ-Int4.download").mkdir()  # a download in progress
    monkeypatch.setenv("GPTQ_CHAT_MODEL", str(good))
    checks = [check for check in run_checks(root=models) if check.name == "model"]
    assert [check.status for check in checks] == [WARN, OK, WARN], [check.line() for check in checks]
    assert "B-Good" in checks[1].message and "the app opens this one" in checks[1].message
    assert "download.py Qwen/C-Half-GPTQ-Int4" in checks[2].fix
    assert exit_code(checks) == 0


def test_a_known_model_not_downloaded_names_the_download_command(models: Path) -> None:
    checks = run_checks(model="qwen2.5-7b", root=models, vram=[24 * GIB])
    model = by_name(checks, "model")
    assert model.status == FAIL and model.fix == ".venv/bin/python download.py qwen2.5-7b"
    assert by_name(checks, "memory").status == OK  # planned from the catalog's shape


# ------------------------------------------------------------------------------------------------
# VRAM (the planner against stated card sizes)
# ------------------------------------------------------------------------------------------------


def test_too_little_vram_for_a_model_is_blocking(models: Path, tiny_gptq_dir: Path) -> None:
    """The tiny checkpoint (78 MB of weights) at 4,096 tokens: its plan's total is just over 1 GiB, stated 1 GiB
    (this machine: no GPU, so the plain path)."""
    tiny = copy_checkpoint(tiny_gptq_dir, models / "Qwen" / "Tiny-GPTQ-Int4")
    checks = run_checks(context=4096, vram=[GIB], root=models)
    memory = by_name(checks, "memory")
    assert exit_code(checks) == 1 and memory.status == FAIL
    assert "Tiny-GPTQ-Int4 at 4,096 tokens (plain path) needs 1.1 GiB" in memory.message
    assert "more than GPU 0: 1.0 GiB stated" in memory.message and memory.fix
    roomy = run_checks(model=str(tiny), context=4096, vram=[2 * GIB], root=models)
    assert by_name(roomy, "memory").status == OK


def test_7b_at_32k_on_24_gib_names_the_context_and_the_models_that_fit(models: Path) -> None:
    check = doctor.check_memory(
        rtx_4090(models, models), doctor.Chosen("qwen1.5-7b", entry=doctor.catalog.find("qwen1.5-7b")), 32768, None,
        "plain",
    )  # fmt: skip
    qwen7b = doctor.catalog.find("qwen1.5-7b")
    expected = plan(qwen7b, 32768)
    longest = largest_context(qwen7b, [GpuSpec(0, 23 * GIB, 23 * GIB)], path="plain")
    assert check.status == FAIL and f"needs {expected.total / GIB:.1f} GiB" in check.message
    assert f"context length to {longest // 256 * 256:,} tokens or less" in check.fix
    assert "qwen2.5-" in check.fix  # grouped-query attention: a 7B Qwen2.5 holds 32k tokens on this card


@pytest.mark.parametrize("path", ["plain", "fast"])
def test_a_model_too_big_for_one_card_is_split_over_the_cards(models: Path, path: str) -> None:
    entry = doctor.catalog.find("qwen1.5-72b")
    chosen = doctor.Chosen("qwen1.5-72b", entry=entry)
    machine = rtx_4090(models, models)
    split = doctor.check_memory(machine, chosen, 8192, [48 * GIB, 48 * GIB], path)
    assert split.status == OK and "split over 2" in split.message
    if path == "fast":  # as the loader would: every layer halved (tensor parallelism), where the engine runs it
        assert "GPU 0: 1/2 of every layer" in split.message and "GPU 1: 1/2 of every layer" in split.message
    else:
        assert "GPU 0: embedding, layers 0-39" in split.message
        assert "GPU 1: layers 40-79, norm + lm_head" in split.message
    short = doctor.check_memory(machine, chosen, 8192, [24 * GIB, 24 * GIB], path)
    # the fast engine plans as the app does (--kv-cache auto): with an 8-bit cache where fp16 holds too little
    planned = cached_as(entry, "int8") if path == "fast" else entry
    longest = largest_context(planned, standard_gpus(2, 24), path=path)
    assert short.status == FAIL and f"context length to {longest // 256 * 256:,} tokens or less" in short.fix
    assert ("int8 KV cache" in short.message) == (path == "fast")


def test_the_fast_engine_figure_has_a_static_cache_graph_pool_and_last_row_logits(
    sampling_peaks: SamplingPeaks,
) -> None:
    """Qwen1.5-7B-Chat's config.json (32 layers, hidden 4096, 32 heads of 128, intermediate 11008, vocabulary
    151936) and the bytes the fast engine allocates, counted on the CPU (tests/support/engine_bytes.py)."""
    qwen7b = doctor.catalog.find("qwen1.5-7b")
    plain, fast = (plan(qwen7b, 8192, path=path) for path in ("plain", "fast"))
    kv_per_token = 32 * 2 * 4096 * 2  # fp16 K and V of every layer
    assert fast.weights == plain.weights and fast.kv_cache == plain.kv_cache == 8192 * kv_per_token == 4 * GIB
    engine = footprint(qwen7b.shape)
    rope = 8192 * (engine.per_token - kv_per_token)  # what a token costs the engine beyond its K and V
    sampled = sampling_peaks.prefill // sampling_peaks.vocab_size  # bytes per vocabulary entry, sampling a row
    # the fast prefill's peak is a GPU figure (test_doctor_gpu.py); the graph pool a guess to calibrate on a GPU
    prefill = 8192 * (2 * 4096 + 4 * 11008) * 2
    assert fast.activations - prefill - FAST_GRAPH_POOL_BYTES == rope + 151936 * (engine.per_entry + sampled)
    assert fast.options["path"] == "fast"
    with pytest.raises(ValueError, match="path"):
        plan(qwen7b, 8192, path="vllm")


# ------------------------------------------------------------------------------------------------
# Disk and Python
# ------------------------------------------------------------------------------------------------


def test_a_full_disk_is_blocking_and_a_small_one_a_warning(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTQ_CHAT_FREE_DISK_BYTES", str(100 * 10**6))
    disk = doctor.check_disk(models)
    assert disk.status == FAIL and "0.1 GB free" in disk.message and "GPTQ_CHAT_HOME" in disk.fix
    monkeypatch.setenv("GPTQ_CHAT_FREE_DISK_BYTES", str(3 * 10**9))
    disk = doctor.check_disk(models)
    assert disk.status == WARN and "Qwen1.5-7B-Chat-GPTQ-Int4" in disk.message


def test_python_versions(tmp_path: Path) -> None:
    machine = rtx_4090(tmp_path, tmp_path)
    assert doctor.check_python(replace(machine, python=(3, 9, 18))).status == FAIL
    assert doctor.check_python(replace(machine, python=(3, 11, 7))).status == OK
    assert doctor.check_python(replace(machine, python=(3, 13, 1))).status == WARN


def test_card_sizes_parse_in_the_units_people_type() -> None:
    from gptq_chat.loading.gpus import parse_card_sizes

    assert parse_card_sizes("24GiB") == parse_card_sizes("24") == [24 * GIB]
    assert parse_card_sizes("80GB,8192MiB") == [80 * 10**9, 8 * GIB]
    with pytest.raises(ValueError, match="not a card size"):
        parse_card_sizes("24,lots")
