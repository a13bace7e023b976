"""env/setup.sh on GPU images and without internet access: whether it reuses the torch the image's Python has, and
installing from a wheel folder alone.

The "image" is a Python installation of its own (tests/support/setup_script.py) with a stand-in torch of a stated
version and CUDA build; the GPU is a fake nvidia-smi. Which torch fits is setup.sh's own function, run by bash for
each case; whole runs of setup.sh point --wheels at an empty folder, so that they stop at the first install with the
missing-wheel message, after the decision (seconds, no network). One slow test sets up for real from a wheel folder
with the index unreachable.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gptq_chat.models.home import REPO_ROOT
from tests.support.setup_script import (
    SETUP,
    fake_nvidia_smi,
    fake_torch,
    no_gpu,
    offline_env,
    python_version,
    run_setup,
    setup_copy,
    step_times,
    system_python,
)

TORCH_RANGE = next(
    line for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if line.startswith("torch")
)


def shares_system_site(project: Path) -> bool:
    config = (project / ".venv" / "pyvenv.cfg").read_text()
    return "include-system-site-packages = true" in config


def own_torch(project: Path) -> list[Path]:
    """torch installed inside .venv itself."""
    return list((project / ".venv").glob("lib/python*/site-packages/torch"))


def download_command(wheels: Path, flavour: str, *extra: str) -> str:
    return " ".join(
        ["bash env/setup.sh --download-wheels", str(wheels), "--for", flavour, "--python", python_version(), *extra]
    )


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, Path]:
    """The image's Python (no torch yet) and its site-packages."""
    return system_python(tmp_path / "image")


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    return folder


def decide(python: Path, gpu: str = "", driver_cuda: str = "") -> str:
    """setup.sh's own `preinstalled_torch` (with its reading of requirements.txt's range), run by bash for this
    interpreter as the one that makes .venv: "reuse|...", "own|..." or nothing."""
    parts = [
        subprocess.run(["sed", "-n", pattern, str(SETUP)], capture_output=True, text=True, check=True).stdout
        for pattern in ("/^torch_range=/p", "/^preinstalled_torch()/,/^}/p")
    ]
    assert parts[0].startswith("torch_range=") and parts[1].startswith("preinstalled_torch()")
    script = f'{parts[0]}\ngpu="$2" driver_cuda="$3"\n{parts[1]}\npreinstalled_torch "$1" new'
    return subprocess.run(
        ["bash", "-c", script, "bash", str(python), gpu, driver_cuda],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
    ).stdout.strip()


GPU = "NVIDIA GeForce RTX 4090, 570.86.10"
ON_CPU = "no GPU here: runs on the CPU"


def build(cuda: str | None) -> str:
    return f"CUDA {cuda}" if cuda else "CPU build"


@pytest.mark.parametrize(
    ("version", "cuda", "gpu", "driver_cuda", "runs"),
    [
        ("2.13.0+cpu", None, "", "", ON_CPU),
        ("2.11.0+cu128", "12.8", "", "", ON_CPU),
        ("2.11.0+cu128", "12.8", GPU, "12.8", "runs on this driver's CUDA 12.8"),
        ("2.11.0+cu126", "12.6", GPU, "13.0", "runs on this driver's CUDA 13.0"),
        # An NGC-style pre-release inside the range: pip counts an installed one as satisfying the range too.
        ("2.10.0a0+git1a2b3c", "12.8", GPU, "12.9", "runs on this driver's CUDA 12.9"),
    ],
)
def test_a_preinstalled_torch_that_fits_is_reused(
    image: tuple[Path, Path], version: str, cuda: str | None, gpu: str, driver_cuda: str, runs: str
) -> None:
    python, site = image
    fake_torch(site, version, cuda=cuda)
    assert decide(python, gpu, driver_cuda) == f"reuse|torch {version} ({build(cuda)}, {runs}) from {site}"


@pytest.mark.parametrize(
    ("version", "cuda", "gpu", "driver_cuda", "why"),
    [
        ("2.6.0+cu124", "12.4", GPU, "12.8", f"is outside the tested range {TORCH_RANGE}"),
        ("2.15.0+cpu", None, "", "", f"is outside the tested range {TORCH_RANGE}"),
        ("2.11.0+cu130", "13.0", GPU, "12.8", "is built for CUDA 13.0, newer than this driver's CUDA 12.8"),
        ("2.11.0+cu129", "12.9", GPU, "12.8", "is built for CUDA 12.9, newer than this driver's CUDA 12.8"),
        ("2.13.0+cpu", None, GPU, "13.0", "is a CPU build, and this machine has an NVIDIA GPU"),
    ],
)
def test_a_preinstalled_torch_that_does_not_fit_is_named_with_the_reason(
    image: tuple[Path, Path], version: str, cuda: str | None, gpu: str, driver_cuda: str, why: str
) -> None:
    python, site = image
    fake_torch(site, version, cuda=cuda)
    assert decide(python, gpu, driver_cuda) == f"own|torch {version} ({build(cuda)}) in {site} {why}"


def test_no_preinstalled_torch_leaves_nothing_to_decide(image: tuple[Path, Path]) -> None:
    assert decide(image[0]) == ""


def test_a_torch_that_cannot_be_checked_against_the_range_is_not_reused(tmp_path: Path) -> None:
    python, site = system_python(tmp_path / "image", with_pip=False)  # no pip, so no packaging to compare with
    fake_torch(site, "2.13.0+cpu", cuda=None)
    assert decide(python) == (
        f"own|torch 2.13.0+cpu (CPU build) in {site} cannot be checked against the tested range (no packaging module)"
    )


def test_a_torch_in_a_virtual_environment_is_shared_through_a_path_file(
    tmp_path: Path, image: tuple[Path, Path], empty: Path
) -> None:
    """PYTHON may be a venv's (an image whose torch lives in /opt/venv, say): a venv made from it is based on the
    installation below, so .venv reaches that venv's site-packages through a path file, and keeps it on re-runs."""
    python, base_site = image
    venv = tmp_path / "image-venv"
    subprocess.run([str(python), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "pip").symlink_to((base_site / "pip").resolve())  # for the range check, as the image's pip would be
    fake_torch(site, "2.13.0+cpu", cuda=None)
    reused = f"torch 2.13.0+cpu (CPU build, no GPU here: runs on the CPU) from {site}"
    assert decide(venv / "bin" / "python") == f"reuse|{reused}"

    project = setup_copy(tmp_path)
    env = offline_env(no_gpu(tmp_path / "bin"), venv / "bin" / "python")
    result = run_setup(project, "--wheels", str(empty), env=env)
    path_file = next((project / ".venv").glob("lib/python*/site-packages/preinstalled.pth"))
    assert f"Reusing the preinstalled {reused}" in result.stdout, result.stdout + result.stderr
    assert f"belongs to a virtual environment: .venv reads its packages through {path_file.relative_to(project)}" in (
        result.stdout
    )
    assert shares_system_site(project) and not own_torch(project)
    where = subprocess.run(
        [str(project / ".venv" / "bin" / "python"), "-c", "import torch; print(torch.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where == str(site / "torch" / "__init__.py")
    assert (project / ".venv" / "torch-pin.txt").read_text() == "torch==2.13.0+cpu\n"
    assert f"Error: transformers: no wheel in {empty}" in result.stderr, result.stderr
    again = run_setup(project, "--wheels", str(empty), env=env)
    assert f"Reusing the preinstalled {reused}" in again.stdout
    assert "Creating the virtual environment" not in again.stdout


def test_without_ensurepip_a_venv_that_shares_runs_the_shared_pip(tmp_path: Path, empty: Path) -> None:
    """Debian and Ubuntu keep ensurepip in python3-venv: where it is missing, .venv is made without a pip of its own
    and runs the one among the packages it shares; with nothing to share, the fix is named."""
    python, site = system_python(tmp_path / "image", ensurepip=False)
    fake_torch(site, "2.13.0+cpu", cuda=None)
    project = setup_copy(tmp_path)
    env = offline_env(no_gpu(tmp_path / "bin"), python)
    result = run_setup(project, "--wheels", str(empty), env=env)
    assert f"No pip of .venv's own (no ensurepip for {python}): it runs the pip of the packages it shares." in (
        result.stdout
    ), result.stdout + result.stderr
    assert shares_system_site(project) and not list((project / ".venv").glob("lib/python*/site-packages/pip"))
    assert f"Error: transformers: no wheel in {empty}" in result.stderr, result.stderr  # pip ran, from the image

    refused = run_setup(setup_copy(tmp_path / "own"), "--own-torch", "--wheels", str(empty), env=env)
    assert refused.returncode == 1 and f"Error: {python} could not make .venv (above)" in refused.stderr
    assert "Fix: install python3-venv (Debian, Ubuntu), or set PYTHON=another Python" in refused.stderr


def test_a_fitting_preinstalled_torch_is_shared_pinned_and_kept_on_reruns(
    tmp_path: Path, image: tuple[Path, Path], empty: Path
) -> None:
    python, site = image
    fake_torch(site, "2.13.0+cpu", cuda=None)
    project = setup_copy(tmp_path)
    env = offline_env(no_gpu(tmp_path / "bin"), python)
    result = run_setup(project, "--wheels", str(empty), env=env)
    reusing = (
        f"Reusing the preinstalled torch 2.13.0+cpu (CPU build, no GPU here: runs on the CPU) from {site}; "
        "--own-torch installs a separate one"
    )
    assert reusing in result.stdout, result.stdout + result.stderr
    assert shares_system_site(project) and not own_torch(project)
    assert (project / ".venv" / "torch-pin.txt").read_text() == "torch==2.13.0+cpu\n"
    # The requirements come next, and the empty folder has none of them: the first is named, with the command.
    assert result.returncode == 1
    assert f"Error: transformers: no wheel in {empty} for this machine" in result.stderr
    assert download_command(empty, "cpu", "--no-torch") in result.stderr
    # Again, through pip's own variables for the folder: the same torch, the same .venv.
    again = run_setup(project, env={**env, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(empty)})
    assert "Creating the virtual environment" not in again.stdout and reusing in again.stdout
    assert f"Error: transformers: no wheel in {empty}" in again.stderr
    refused = run_setup(project, "--own-torch", "--wheels", str(empty), env=env)
    assert refused.returncode == 1 and "--own-torch needs a .venv of its own" in refused.stderr
    assert "rm -rf .venv && bash env/setup.sh --own-torch" in refused.stderr
    # The machine changed under it (a GPU now, and the shared torch a CPU build): said, not patched over.
    gpu_now = {**env, "PATH": f"{fake_nvidia_smi(tmp_path / 'gpu', '570.86.10', '12.8')}:{env['PATH']}"}
    changed = run_setup(project, "--wheels", str(empty), env=gpu_now)
    assert changed.returncode == 1 and (
        f"Error: the preinstalled torch 2.13.0+cpu (CPU build) in {site} is a CPU build, and this machine has an "
        "NVIDIA GPU, and .venv shares it" in changed.stderr
    ), changed.stderr
    assert not own_torch(project)


def test_a_fitting_cuda_build_is_kept_over_the_tested_sets_torch(
    tmp_path: Path, image: tuple[Path, Path], empty: Path
) -> None:
    """env/tested-gpu.txt names torch 2.11.0; a preinstalled 2.10.0 that fits stays, and pip is not asked for 2.11.0.
    It came from PyPI, whose wheels carry no build tag in their metadata (torch.__version__ has it): the pin is the
    version pip knows it by, or pip would look for a 2.10.0+cu128 wheel."""
    python, site = image
    fake_torch(site, "2.10.0+cu128", cuda="12.8", distribution="2.10.0")
    project = setup_copy(tmp_path)
    tools = fake_nvidia_smi(tmp_path / "bin", "570.86.10", "12.8")
    result = run_setup(project, "--wheels", str(empty), env=offline_env(tools, python))
    assert (
        f"Reusing the preinstalled torch 2.10.0+cu128 (CUDA 12.8, runs on this driver's CUDA 12.8) from {site}"
        in result.stdout
    ), result.stdout + result.stderr
    assert "Package versions: the tested set env/tested-gpu.txt" in result.stdout
    assert "Replacing torch" not in result.stdout and "Installing torch" not in result.stdout
    assert shares_system_site(project) and not own_torch(project)
    assert (project / ".venv" / "torch-pin.txt").read_text() == "torch==2.10.0\n"
    # pip got past torch (no conflict between the pin and the tested set's 2.11.0) to the first missing wheel.
    assert f"Error: transformers: no wheel in {empty}" in result.stderr, result.stderr
    assert download_command(empty, "cu128", "--no-torch") in result.stderr


def test_a_torch_outside_the_range_is_explained_and_not_shared(
    tmp_path: Path, image: tuple[Path, Path], empty: Path
) -> None:
    python, site = image
    fake_torch(site, "2.6.0+cpu", cuda=None)
    project = setup_copy(tmp_path)
    result = run_setup(project, "--wheels", str(empty), env=offline_env(no_gpu(tmp_path / "bin"), python))
    assert (
        f"The preinstalled torch 2.6.0+cpu (CPU build) in {site} is outside the tested range {TORCH_RANGE}: "
        "installing a separate one into .venv" in result.stdout
    ), result.stdout + result.stderr
    assert "Reusing" not in result.stdout and not shares_system_site(project)
    assert f"Installing torch from {empty}" in result.stdout
    assert result.returncode == 1 and f"Error: torch: no wheel in {empty}" in result.stderr
    assert f"{download_command(empty, 'cpu')}, then copy" in result.stderr  # torch included: no --no-torch


def test_own_torch_leaves_a_fitting_preinstalled_torch_alone(
    tmp_path: Path, image: tuple[Path, Path], empty: Path
) -> None:
    python, site = image
    fake_torch(site, "2.13.0+cpu", cuda=None)
    other = f"cp3{sys.version_info.minor + 1}"
    wheel = f"torch-2.13.0+cpu-{other}-{other}-manylinux_2_28_x86_64.whl"
    (empty / wheel).write_bytes(b"")  # for another Python: pip reads a wheel's name before anything in it
    project = setup_copy(tmp_path)
    result = run_setup(
        project, "--own-torch", "--wheels", str(empty), env=offline_env(no_gpu(tmp_path / "bin"), python)
    )
    assert "preinstalled" not in result.stdout and not shares_system_site(project)
    assert result.returncode == 1
    assert (
        f"Error: torch: no wheel in {empty} for this machine (Python {sys.version.split()[0]}, Linux x86_64); "
        f"it has: {wheel}" in result.stderr
    ), result.stderr


def test_a_wheel_folder_that_does_not_exist_is_refused_before_anything_happens(
    tmp_path: Path, image: tuple[Path, Path]
) -> None:
    python, _ = image
    project = setup_copy(tmp_path)
    result = run_setup(project, "--wheels", "no-such-folder", env=offline_env(no_gpu(tmp_path / "bin"), python))
    missing = Path.cwd() / "no-such-folder"  # relative to where the command was typed
    assert result.returncode == 1 and f"Error: no folder {missing}" in result.stderr
    assert download_command(missing, "cpu") in result.stderr
    assert not (project / ".venv").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--download-wheels"], "--download-wheels needs a value"),
        (["--download-wheels", "--for", "cpu"], "--download-wheels needs a value"),
        (["--download-wheels", "w", "--for", "cu118", "--python", "3.12"], "needs --for cu130, cu128, cu126 or cpu"),
        (["--download-wheels", "w", "--for", "cu128"], "needs --python 3.X"),
        (["--download-wheels", "w", "--for", "cu128", "--python", "312"], "needs --python 3.X"),
        (["--for", "cpu", "--python", "3.12"], "go with --download-wheels DIR"),
        (["--no-torch"], "go with --download-wheels DIR"),
    ],
)
def test_download_wheels_arguments_are_checked_before_anything_happens(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    project = setup_copy(tmp_path)
    result = subprocess.run(
        ["bash", str(project / "env" / "setup.sh"), *arguments],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (project / ".venv").exists() and not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------------------------
# A whole set-up from a wheel folder, with no index in reach
# ------------------------------------------------------------------------------------------------


def closure(*requirements: str) -> list[importlib.metadata.Distribution]:
    """The installed distributions these requirements reach, in this environment."""
    installed = {canonicalize_name(dist.metadata["Name"]): dist for dist in importlib.metadata.distributions()}
    wanted = [Requirement(line) for line in requirements]
    found: dict[str, importlib.metadata.Distribution] = {}
    while wanted:
        requirement = wanted.pop()
        name = canonicalize_name(requirement.name)
        if name in found or name not in installed:
            continue
        found[name] = installed[name]
        for line in installed[name].requires or []:
            dependency = Requirement(line)
            if dependency.marker is None or dependency.marker.evaluate({**default_environment(), "extra": ""}):
                wanted.append(dependency)
    return list(found.values())


def link_into(site: Path, dist: importlib.metadata.Distribution) -> None:
    """An installed distribution put into another site-packages as links: its packages, modules and metadata."""
    for top in {Path(str(file)).parts[0] for file in dist.files or [] if not str(file).startswith("..")}:
        if not (site / top).exists():
            (site / top).symlink_to(Path(str(dist.locate_file(top))))


def pack(dist: importlib.metadata.Distribution, folder: Path) -> Path:
    """An installed distribution packed back into a wheel: its files by its RECORD, scripts aside (pip writes them
    anew from the entry points), stored uncompressed. Quicker than fetching the set again from PyPI, and no network."""
    info = next(Path(str(file)).parts[0] for file in dist.files or [] if str(file).endswith(".dist-info/METADATA"))
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines() if "Tag:" in line]
    parts = [sorted({tag.split("-")[i] for tag in tags}) for i in range(3)]
    wheel = folder / f"{info.removesuffix('.dist-info')}-{'-'.join('.'.join(part) for part in parts)}.whl"
    skipped = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    files = [
        file
        for file in dist.files or []
        if not str(file).startswith("..") and "__pycache__" not in file.parts and file.name not in skipped
    ]
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        for file in files:
            archive.write(file.locate(), str(file))
        archive.writestr(f"{info}/RECORD", "".join(f"{file},,\n" for file in files) + f"{info}/RECORD,,\n")
    return wheel


@pytest.mark.slow
def test_setup_from_a_wheel_folder_alone_reusing_the_images_torch(tmp_path: Path) -> None:
    """The image's Python has this environment's real torch, with its dependencies; the folder holds the wheels of
    everything requirements.txt reaches but torch (no demo model, so not its data package); the index is a closed
    port. Each step's time is printed, and the whole."""
    import torch

    python, site = system_python(tmp_path / "image")
    for dist in closure("torch"):
        link_into(site, dist)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    lines = [line.split("#")[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    for dist in closure(*filter(None, lines)):
        if canonicalize_name(dist.metadata["Name"]) != "torch":
            pack(dist, wheels)
    project = setup_copy(tmp_path)
    env = offline_env(no_gpu(tmp_path / "bin"), python, CONSTRAINTS="env/tested-cpu.txt", PIP_NO_COMPILE="1")

    started = time.monotonic()
    result = run_setup(project, "--wheels", str(wheels), env=env, timeout=600)
    seconds = time.monotonic() - started
    print(f"offline set-up: {seconds:.0f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Reusing the preinstalled torch {torch.__version__}" in result.stdout and f"from {site}" in result.stdout
    times = step_times(result.stdout)
    assert list(times) == ["venv", "torch", "packages", "total"], times
    assert 0 < times["venv"] + times["torch"] + times["packages"] <= times["total"] <= seconds + 0.5, times
    assert shares_system_site(project) and not own_torch(project)
    check = subprocess.run(
        [
            str(project / ".venv" / "bin" / "python"),
            "-c",
            "import streamlit, transformers, torch; print(torch.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0 and check.stdout.strip() == str(site / "torch" / "__init__.py"), check.stderr
    again = run_setup(project, "--wheels", str(wheels), env=env, timeout=300)
    assert again.returncode == 0 and "Requirements already installed" in again.stdout, again.stdout + again.stderr
    assert "Installing" not in again.stdout
    assert list(step_times(again.stdout)) == ["venv", "torch", "packages", "total"]
