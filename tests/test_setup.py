"""env/setup.sh: the torch build it picks for a driver, what it refuses, and that a re-run changes nothing.

The whole install runs in CI itself (`env/test.sh` calls it before the tests); here are the decisions it makes and
the re-run, checked against the real script.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptq_chat.doctor import checks as doctor
from gptq_chat.models.home import REPO_ROOT
from tests.support.setup_script import SETUP, fake_nvidia_smi, setup_copy


def cuda_flavour(driver_cuda: str) -> str:
    """setup.sh's own `cuda_flavour` function, run by bash."""
    function = subprocess.run(
        ["sed", "-n", "/^cuda_flavour()/,/^}/p", str(SETUP)], capture_output=True, text=True, check=True
    ).stdout
    assert function.startswith("cuda_flavour()")
    return subprocess.run(
        ["bash", "-c", f'{function}\ncuda_flavour "$1"', "bash", driver_cuda],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.mark.parametrize(
    ("driver_cuda", "build"),
    [("13.0", "cu130"), ("13.1", "cu130"), ("12.8", "cu128"), ("12.9", "cu128"), ("12.6", "cu126"), ("12.2", "cu126")],
)
def test_torch_build_is_the_newest_the_driver_runs(driver_cuda: str, build: str) -> None:
    assert cuda_flavour(driver_cuda) == build


def test_no_torch_build_for_a_cuda_11_driver() -> None:
    assert cuda_flavour("11.8") == ""


@pytest.mark.slow
def test_a_driver_too_old_for_any_torch_build_is_refused_with_the_fix(tmp_path: Path) -> None:
    project = setup_copy(tmp_path)
    tools = fake_nvidia_smi(tmp_path / "bin", "470.82.01", "11.4")
    result = subprocess.run(
        ["bash", str(project / "env" / "setup.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "PYTHON": sys.executable},
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NVIDIA GPU found: NVIDIA GeForce GTX 1080 Ti, 470.82.01 (the driver runs CUDA up to 11.4)" in result.stdout
    assert "torch needs CUDA 12 or newer" in result.stderr
    assert "525.60" in result.stderr and "env/legacy-cu118/setup.sh" in result.stderr
    assert not list((project / ".venv").glob("lib/python*/site-packages/torch"))  # refused before installing


@pytest.mark.parametrize("arguments", [["--gpu"], ["--mirror", "eu"]])
def test_unknown_options_are_refused_before_anything_happens(tmp_path: Path, arguments: list[str]) -> None:
    project = setup_copy(tmp_path)
    result = subprocess.run(
        ["bash", str(project / "env" / "setup.sh"), *arguments], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0 and not (project / ".venv").exists()
    assert "Unknown option" in result.stderr or "unknown mirror" in result.stderr


def test_help_prints_the_whole_header_comment() -> None:
    lines = SETUP.read_text().splitlines()
    header = list(itertools.takewhile(lambda line: line.startswith("#"), lines[1:]))
    result = subprocess.run(["bash", str(SETUP), "--help"], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == header


def test_build_kernels_on_a_cpu_machine_has_nothing_to_compile() -> None:
    if doctor.real_cuda():
        pytest.skip("a GPU machine compiles for real (tests/test_doctor_gpu.py)")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "env" / "doctor.py"), "--build-kernels"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and "nothing to compile" in result.stdout


def test_tested_sets_lie_inside_the_requirement_ranges() -> None:
    """CI installs env/tested-cpu.txt through requirements.txt, GPU machines env/tested-gpu.txt: both must fit."""
    ranges = doctor.read_ranges(REPO_ROOT / "requirements.txt")
    for tested in ("env/tested-cpu.txt", "env/tested-gpu.txt"):
        for name, version in doctor.read_pins(REPO_ROOT / tested).items():
            if name in ranges:
                assert ranges[name].specifier.contains(version), f"{tested}: {name}=={version} vs {ranges[name]}"
    assert doctor.read_pins(REPO_ROOT / "env" / "tested-cpu.txt")["modelscope-hub"] == "0.5.1"


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("GPTQ_CHAT_SETUP_RAN"), reason="env/test.sh sets GPTQ_CHAT_SETUP_RAN after running set-up"
)
def test_rerunning_setup_is_fast_and_changes_nothing() -> None:
    """What CI just ran (env/test.sh), once more: no install, the same packages, well under a minute or two."""
    freeze = [sys.executable, "-m", "pip", "freeze", "--all"]
    before = subprocess.run(freeze, capture_output=True, text=True, check=True).stdout
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(SETUP), "--dev"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CONSTRAINTS": "env/tested-cpu.txt", "SKIP_DEMO": "1"},
        check=False,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Requirements already installed (nothing changed since the last run)" in result.stdout
    assert "Installing" not in result.stdout
    assert subprocess.run(freeze, capture_output=True, text=True, check=True).stdout == before
    print(f"re-run of env/setup.sh: {seconds:.0f} s")
    assert seconds < 120
