"""env/setup.sh under test: a project copy to run it in, fake GPUs, and a Python installation of its own standing in
for a GPU image's system Python (with a torch preinstalled, or none)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from gptq_chat.models.home import REPO_ROOT
from tests.support.browser_app import free_port

SETUP = REPO_ROOT / "env" / "setup.sh"
SETUP_TOOK = re.compile(r"^Set-up took ([0-9.]+) s: (.+)$", re.MULTILINE)
# What setup.sh reads, runs or installs from (the rest of the project is not needed to set up).
SETUP_FILES = (
    "env/setup.sh",
    "env/wheels.py",
    "env/tested-cpu.txt",
    "env/tested-gpu.txt",
    "requirements.txt",
    "requirements-dev.txt",
)


def setup_copy(tmp_path: Path) -> Path:
    """A project folder with only what setup.sh reads."""
    project = tmp_path / "project"
    (project / "env").mkdir(parents=True)
    for name in SETUP_FILES:
        shutil.copy2(REPO_ROOT / name, project / name)
    return project


def fake_nvidia_smi(folder: Path, driver: str, cuda: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  -L) echo "GPU 0: NVIDIA GeForce GTX 1080 Ti (UUID: GPU-0)";;\n'
        f'  --query-gpu=*) echo "NVIDIA GeForce GTX 1080 Ti, {driver}";;\n'
        f'  *) echo "| NVIDIA-SMI {driver}   Driver Version: {driver}   CUDA Version: {cuda} |";;\n'
        "esac\n"
    )
    script.chmod(0o755)
    return folder


def no_gpu(folder: Path) -> Path:
    """An nvidia-smi that fails, as on a machine without a GPU (whether or not this one has one)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\nexit 9\n")
    script.chmod(0o755)
    return folder


def system_python(root: Path, with_pip: bool = True, ensurepip: bool = True) -> tuple[Path, Path]:
    """A Python installation of its own, like an image's system Python: this interpreter's binary (copied: Python
    finds its installation from where the binary lies) and standard library (linked; without ensurepip, as Debian's
    and Ubuntu's Python is without python3-venv), with a site-packages that holds only pip (linked from here), as an
    image whose torch came through pip does. Unlike a venv, what goes into that site-packages is seen by a venv made
    from it with --system-site-packages. Returns the interpreter and its site-packages."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert stdlib == base / "lib" / f"python{version}", f"an unusual layout: {stdlib}"
    (root / "bin").mkdir(parents=True)
    python = root / "bin" / f"python{version}"
    shutil.copy2(base / "bin" / f"python{version}", python)
    (root / "lib").mkdir()
    for library in (base / "lib").glob("libpython*"):  # for a binary that finds its library next to itself
        (root / "lib" / library.name).symlink_to(library)
    if (base / "include").is_dir():  # the headers, for packages built from source there
        (root / "include").symlink_to(base / "include")
    own_stdlib = root / "lib" / f"python{version}"
    own_stdlib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name != "site-packages" and (ensurepip or entry.name != "ensurepip"):
            (own_stdlib / entry.name).symlink_to(entry)
    where = subprocess.run(
        [str(python), "-c", "import site, sys; print(sys.prefix); print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where[0] == str(root), f"{python} takes itself for {where[0]}, not an installation in {root}"
    site = Path(where[1])
    site.mkdir(parents=True, exist_ok=True)
    if with_pip:  # found on sys.path, not imported: importing pip turns off setuptools' distutils in this process
        pip = next(Path(entry) / "pip" for entry in sys.path if (Path(entry) / "pip" / "__init__.py").is_file())
        (site / "pip").symlink_to(pip)
    return python, site


def fake_torch(site: Path, version: str, cuda: str | None, distribution: str | None = None) -> Path:
    """A stand-in for an installed torch: what setup.sh asks of it (its version, its CUDA build, no GPU in reach)
    and the metadata by which pip knows it is installed, under `distribution` where that differs from
    `torch.__version__` (PyPI's CUDA wheels: 2.11.0 there, 2.11.0+cu130 in torch)."""
    package = site / "torch"
    package.mkdir()
    (package / "__init__.py").write_text(f'from . import cuda, version\n\n__version__ = "{version}"\n')
    (package / "version.py").write_text(f"cuda = {cuda!r}\n")
    (package / "cuda.py").write_text("def is_available():\n    return False\n")
    metadata = site / f"torch-{distribution or version}.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {distribution or version}\n")
    (metadata / "INSTALLER").write_text("pip\n")
    return package


def offline_env(tools: Path | None, python: Path | str, **extra: str) -> dict[str, str]:
    """The environment for setup.sh with no package index in reach: pip's own settings from this machine left out
    (a configured index or wheel folder would hide what the folder under test lacks), the index a closed port;
    `tools` (fake commands) first on PATH."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env.pop("CONSTRAINTS", None)
    return {
        **env,
        "PATH": f"{tools}:{env['PATH']}" if tools else env["PATH"],
        "PYTHON": str(python),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "SKIP_DEMO": "1",
        "SKIP_KERNELS": "1",
        "SKIP_DOCTOR": "1",
        **extra,
    }


def run_setup(
    project: Path, *args: str, env: dict[str, str], timeout: float = 120, log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """setup.sh in `project`. With `log`, its output goes there as it comes (kept if the run is cut short) and comes
    back as stdout, stderr with it."""
    command = ["bash", str(project / "env" / "setup.sh"), *args]
    if log is None:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    with log.open("w") as output:
        done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, timeout=timeout, env=env, check=False)
    return subprocess.CompletedProcess(command, done.returncode, log.read_text(), "")


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def step_times(output: str) -> dict[str, float]:
    """Seconds per step of a finished set-up, from the line it ends with ("Set-up took 12.3 s: venv 2.1 s, ..."), the
    whole under "total"; each step's own "(NAME took N s)" line must say the same."""
    found = SETUP_TOOK.findall(output)
    assert len(found) == 1, f"no single summary line in:\n{output[-3000:]}"
    total, steps = found[0]
    times = {name: float(seconds) for name, seconds in re.findall(r"(\w+) ([0-9.]+) s", steps)}
    for name, seconds in times.items():
        assert f"    ({name} took {seconds:.1f} s)" in output, name
    return {**times, "total": float(total)}
