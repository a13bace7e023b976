"""What on this machine stands between the user and a chat, and the exact command that fixes it.

GPTQ stacks fail in ways that say nothing useful (a CPU build of torch on a GPU machine, a driver older than
torch's CUDA, no nvcc for the kernel that compiles on first use, a half-downloaded model). The doctor checks each
of these and prints one line per check: ✓ fine, ⚠ works but worth fixing, ✗ blocks chatting (exit code 1).

    python env/doctor.py [--model M] [--context N] [--json]
    python env/doctor.py --build-kernels      compile this GPU's GPTQ kernel now (env/setup.sh does)

What fits cards other than this machine's: `python download.py --list --cards 24,24`.

`run_checks()` is what the page's health panel shows. Facts about the machine are gathered once (`probe()`),
then each check reads them plus the real files, PATH and installed packages; tests build broken machines by
changing those (a PATH without nvcc, a site folder with a wrong package version, stated VRAM sizes).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from gptq_chat.engine.qwen_shapes import QWEN_SHAPES
from gptq_chat.engine.shape import GPTQSettings
from gptq_chat.loading import gptq_stack
from gptq_chat.loading.checkpoint import CheckpointError, CheckpointInfo, find_checkpoint, resolve_model_dir
from gptq_chat.loading.fit import fit, kv_cache_note, planned_context, ram_needed
from gptq_chat.loading.gpus import GpuSpec, memory_bandwidth, usage
from gptq_chat.loading.interconnect import Interconnect, known_interconnect
from gptq_chat.loading.kernels import KERNELS, KernelChoice, KernelError, choose_kernel, why_not
from gptq_chat.loading.memory_plan import GIB, PlannedModel, cached_as, plan, total_weight_bytes
from gptq_chat.loading.placement import PlacementRefused, largest_context
from gptq_chat.models import catalog, store
from gptq_chat.models.home import REPO_ROOT, demo_model_dir, models_home
from gptq_chat.models.installed import MODEL_ENV, installed_models

OK, WARN, FAIL = "✓", "⚠", "✗"
PYTHON_TESTED = ((3, 10), (3, 12))  # oldest and newest minor version we test on (CPU: 3.11, GPU machines: 3.12)
# The first Linux driver of each CUDA major version (CUDA Toolkit release notes, minor-version compatibility).
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
TESTED_SETS = ("env/tested-cpu.txt", "env/tested-gpu.txt", "env/legacy-cu118/requirements.txt")
STACK_PACKAGES = {
    gptq_stack.MODERN: ("torch", "transformers", "optimum", "gptqmodel"),
    gptq_stack.LEGACY: ("torch", "transformers", "optimum", "auto-gptq"),
}
SETUP = "bash env/setup.sh"
OFFLINE = "without internet access: bash env/setup.sh --wheels DIR, a folder filled elsewhere (docs/environment.md)"
LEGACY_SETUP = "bash env/legacy-cu118/setup.sh"
# A kernel gptqmodel compiles on first use (torch cpp_extension + ninja + nvcc), and where it caches the result
# (gptqmodel/utils/cpp.py: default_torch_ops_build_root; the folder below it is a fingerprint of torch, CUDA,
# the GPU and the sources). Triton compiles its own kernels in seconds without nvcc; torch's need nothing.


@dataclass(frozen=True)
class JitKernel:
    extension: str  # gptqmodel.extension's name for it
    binary: str  # the shared library's name
    root_env: str  # gptqmodel's per-extension cache override
    subdir: str  # below $GPTQMODEL_TORCH_EXTENSIONS_DIR or ~/.cache/gptqmodel/torch_extensions
    label: str
    minutes: str  # first compile, for the message


JIT_KERNELS = {
    "marlin": JitKernel(
        "marlin_fp16", "gptqmodel_marlin_fp16_ops", "GPTQMODEL_MARLIN_FP16_BUILD_ROOT", "marlin_fp16", "Marlin (fp16)",
        "about 4 minutes (231 s on 16 cores, measured on an H100 machine)",
    ),
    "exllama_v2": JitKernel(
        "exllamav2", "gptqmodel_exllamav2_ops", "GPTQMODEL_EXLLAMAV2_BUILD_ROOT", "exllamav2", "ExLlamaV2",
        "about a minute",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: str  # OK, WARN or FAIL
    message: str
    fix: str = ""

    @property
    def blocking(self) -> bool:
        return self.status == FAIL

    def line(self) -> str:
        text = f"{self.status} {self.name:<10} {self.message}"
        return text + (f"\n             fix: {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]
    total_bytes: int
    free_bytes: int  # free now, plus what this process itself holds (a loaded model counts as available to itself)
    bandwidth: float = 0.0  # peak memory bandwidth, bytes/s (0: unknown)


@dataclass(frozen=True)
class Machine:
    """What the checks need to know about this machine, gathered once by `probe()`."""

    python: tuple[int, int, int]
    torch_version: str | None  # None: torch does not import
    torch_error: str = ""
    torch_cuda: str | None = None  # the CUDA version torch was built for (None: the CPU build)
    torch_path: str | None = None  # the folder torch imports from (that of torch/__init__.py)
    cuda_available: bool = False
    gpus: tuple[Gpu, ...] = ()
    driver_version: str | None = None  # from nvidia-smi
    driver_cuda: str | None = None  # the newest CUDA this driver runs, from nvidia-smi
    smi_gpus: tuple[str, ...] = ()  # the GPUs nvidia-smi lists, whether torch sees them or not
    interconnect: Interconnect | None = None  # how the GPUs reach each other (None: fewer than two)
    path: str = field(default_factory=lambda: os.environ.get("PATH", ""))  # where torch looks for ninja and nvcc
    cuda_home: str | None = field(default_factory=lambda: os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"))
    default_cuda_home: str = "/usr/local/cuda"  # torch's last guess when neither $CUDA_HOME nor PATH has nvcc

    @property
    def on_gpu(self) -> bool:
        return self.cuda_available and bool(self.gpus)


# ----------------------------------------------------------------------------------------------
# Facts
# ----------------------------------------------------------------------------------------------


def run_text(command: Sequence[str], timeout: float = 20) -> str | None:
    """A command's stdout, or None if it is missing, fails or hangs."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def nvidia_smi() -> tuple[str | None, str | None, tuple[str, ...]]:
    """Driver version, the CUDA version it supports, and the GPU names, as the driver reports them."""
    if shutil.which("nvidia-smi") is None:
        return None, None, ()
    listing = run_text(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]) or ""
    rows = [[part.strip() for part in line.split(",")] for line in listing.splitlines() if "," in line]
    header = run_text(["nvidia-smi"]) or ""
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return (rows[0][1] if rows else None), (cuda.group(1) if cuda else None), tuple(row[0] for row in rows)


def probe() -> Machine:
    """Look at this machine: Python, torch and what it sees, the NVIDIA driver."""
    driver, driver_cuda, smi_gpus = nvidia_smi()
    facts = Machine(
        python=tuple(sys.version_info[:3]),  # type: ignore[arg-type]
        torch_version=None,
        driver_version=driver,
        driver_cuda=driver_cuda,
        smi_gpus=smi_gpus,
    )
    try:
        import torch
    except Exception as error:  # a broken install raises more than ImportError (OSError for a missing .so)
        return replace(facts, torch_error=f"{type(error).__name__}: {error}")
    gpus = []
    available = torch.cuda.is_available()
    for index in range(torch.cuda.device_count() if available else 0):
        free, total = torch.cuda.mem_get_info(index)
        gpus.append(
            Gpu(
                index=index,
                name=torch.cuda.get_device_name(index),
                capability=tuple(torch.cuda.get_device_capability(index)),  # type: ignore[arg-type]
                total_bytes=int(total),
                free_bytes=int(free + torch.cuda.memory_reserved(index)),
                bandwidth=memory_bandwidth(index),
            )
        )
    return replace(
        facts,
        torch_version=torch.__version__,
        torch_cuda=torch.version.cuda,
        torch_path=str(Path(torch.__file__).parent),
        cuda_available=available,
        gpus=tuple(gpus),
        interconnect=known_interconnect([gpu.index for gpu in gpus]) if len(gpus) > 1 else None,
    )


def public(version: str) -> Version | None:
    """`2.13.0+cpu` -> 2.13.0: the build tag says where a wheel came from, not what it is."""
    try:
        return Version(Version(version).public)
    except InvalidVersion:
        return None


def package_version(name: str, search_path: Sequence[str] | None = None) -> str | None:
    """The installed version of `name` as Python would import it (the first match on the path)."""
    for dist in importlib.metadata.distributions(name=name, path=list(search_path or sys.path)):
        return dist.version
    return None


def read_ranges(path: Path) -> dict[str, Requirement]:
    """The requirements of a requirements or constraints file (options and comments aside), by canonical name."""
    ranges = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            ranges[canonicalize_name(requirement.name)] = requirement
    return ranges


def read_pins(path: Path) -> dict[str, str]:
    """The `name==version` lines of such a file."""
    return {
        name: spec.version
        for name, requirement in read_ranges(path).items()
        for spec in requirement.specifier
        if spec.operator == "=="
    }


def file_title(path: Path) -> str:
    """A tested set's own description: its first comment line."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    return first.lstrip("# ").split(" (")[0].rstrip(".") if first.startswith("#") else path.name


def tool_version(tool: str, path: str) -> tuple[str | None, str | None]:
    """Where `tool` is on `path`, and the version it prints."""
    found = shutil.which(tool, path=path)
    if found is None:
        return None, None
    text = run_text([found, "--version"]) or ""
    match = re.search(r"release (\d+\.\d+)", text) if tool == "nvcc" else re.search(r"(\d+\.\d+(\.\d+)?)", text)
    return found, match.group(1) if match else None


def find_nvcc(machine: Machine) -> tuple[str | None, str | None]:
    """nvcc where torch's cpp_extension looks: $CUDA_HOME/bin, else PATH, else /usr/local/cuda/bin."""
    if machine.cuda_home:
        return tool_version("nvcc", str(Path(machine.cuda_home) / "bin"))
    found = tool_version("nvcc", machine.path)
    return found if found[0] else tool_version("nvcc", str(Path(machine.default_cuda_home) / "bin"))


def kernel_cache_root(kernel: JitKernel) -> Path:
    """gptqmodel's cache folder for one JIT kernel (its own rules: a per-kernel env, a shared env, the default)."""
    if os.environ.get(kernel.root_env):
        return Path(os.environ[kernel.root_env]).expanduser()
    shared = os.environ.get("GPTQMODEL_TORCH_EXTENSIONS_DIR")
    base = Path(shared).expanduser() if shared else Path.home() / ".cache" / "gptqmodel" / "torch_extensions"
    return base / kernel.subdir


def _exact_build_folder(kernel: JitKernel) -> Path | None:
    """The fingerprinted folder gptqmodel would load from here (needs CUDA and gptqmodel's private API)."""
    try:
        from gptqmodel import extension

        return extension._extension_for_name(kernel.extension).build_root()
    except Exception:  # a private API: fall back to "any build" when it moves
        return None


def real_cuda() -> bool:
    """Whether torch in this process really reaches a GPU (tests describe GPU machines that are not there)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


def compiled_kernel(kernel: JitKernel, exact: bool) -> Path | None:
    """The compiled library gptqmodel will load, if there is one. `exact` asks gptqmodel for the folder that matches
    this torch, CUDA and GPU; otherwise (or if that fails) any build under the cache counts."""
    folder = _exact_build_folder(kernel) if exact else None
    folders = [folder] if folder is not None else sorted(kernel_cache_root(kernel).glob("*"))
    for candidate in folders:
        for library in sorted(candidate.glob(f"{kernel.binary}*.so")):
            return library
    return None


# ----------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------


def python_command() -> str:
    """How to name this interpreter in a fix: `.venv/bin/python` inside the project, else its full path."""
    executable = Path(sys.executable)
    try:
        return str(executable.relative_to(REPO_ROOT))
    except ValueError:
        return str(executable)


def pip_install(*requirements: str) -> str:
    return f"{python_command()} -m pip install " + " ".join(f"'{r}'" for r in requirements)


def check_python(machine: Machine) -> Check:
    version = ".".join(map(str, machine.python))
    minor = machine.python[:2]
    if minor < PYTHON_TESTED[0]:
        return Check("Python", FAIL, f"{version} is too old (3.10 or newer)", f"PYTHON=python3.11 {SETUP}")
    if minor > PYTHON_TESTED[1]:
        return Check("Python", WARN, f"{version} is newer than we test (3.10-3.12)", f"PYTHON=python3.12 {SETUP}")
    return Check("Python", OK, f"{version} ({sys.executable})")


def shared_torch(machine: Machine) -> bool:
    """Whether this venv imports torch from outside itself: a preinstalled one it shares (--system-site-packages)."""
    if machine.torch_path is None or sys.prefix == sys.base_prefix:
        return False
    return not Path(machine.torch_path).is_relative_to(sys.prefix)


def torch_origin(machine: Machine) -> str:
    """Where torch lives, and whose it is: the venv's own, or a preinstalled one it shares."""
    if machine.torch_path is None:
        return ""
    if sys.prefix == sys.base_prefix:
        return f"; from {machine.torch_path}"
    whose = "a preinstalled one this venv shares" if shared_torch(machine) else "this venv's own"
    return f"; from {machine.torch_path} ({whose})"


def check_torch(machine: Machine) -> Check:
    if machine.torch_version is None:
        return Check("torch", FAIL, f"does not import: {machine.torch_error}", f"{SETUP}; {OFFLINE}")
    build = f"CUDA {machine.torch_cuda}" if machine.torch_cuda else "CPU build"
    origin = torch_origin(machine)
    if machine.on_gpu:
        count = len(machine.gpus)
        return Check("torch", OK, f"{machine.torch_version} ({build}) sees {count} CUDA GPU{'s' * (count > 1)}{origin}")
    if machine.smi_gpus:
        if machine.torch_cuda is None:
            fix = f"{python_command()} -m pip uninstall -y torch && {SETUP} (installs the CUDA build for your driver)"
            if shared_torch(machine):  # not ours to uninstall: a .venv of its own instead
                fix = f"rm -rf .venv && {SETUP} --own-torch (installs the CUDA build for your driver)"
            return Check(
                "torch",
                FAIL,
                f"{machine.torch_version} is the CPU build, but this machine has {', '.join(machine.smi_gpus)}{origin}",
                fix,
            )
        return Check(
            "torch",
            FAIL,
            f"{machine.torch_version} ({build}) does not see the GPU that nvidia-smi lists ({machine.smi_gpus[0]})"
            f"{origin}",
            "see the driver line below; `CUDA_VISIBLE_DEVICES` may hide the GPU",
        )
    return Check(
        "torch",
        WARN,
        f"{machine.torch_version} ({build}): CPU-only mode, no NVIDIA GPU found. The demo model runs here; "
        f"Qwen 7B and larger need an NVIDIA GPU{origin}",
        "nothing to do for the demo; for real models use a machine with an NVIDIA GPU and driver >= 525",
    )


def check_driver(machine: Machine) -> Check:
    if machine.driver_version is None:
        if machine.on_gpu:  # e.g. inside a container without nvidia-smi
            return Check("driver", OK, "nvidia-smi not found, but torch reaches the GPU")
        return Check("driver", OK, "no NVIDIA driver: not needed in CPU mode")
    have = f"driver {machine.driver_version} (runs CUDA up to {machine.driver_cuda or '?'})"
    if machine.torch_cuda is None or machine.driver_cuda is None:
        return Check("driver", OK, have)
    need = gptq_stack.major(machine.torch_cuda)
    supported = Version(machine.driver_cuda)
    if supported.major < need:
        return Check(
            "driver",
            FAIL,
            f"{have} is older than torch's CUDA {machine.torch_cuda}",
            f"update the NVIDIA driver to {MIN_DRIVER.get(need, 'a newer release')} or newer, or install a torch "
            f"built for CUDA {supported.major}: {python_command()} -m pip uninstall -y torch && {SETUP}",
        )
    if supported < Version(machine.torch_cuda):
        return Check(
            "driver",
            WARN,
            f"{have}; torch is built for CUDA {machine.torch_cuda}: runs through CUDA minor-version compatibility, "
            "but kernels compiled for the newer CUDA may not load",
            f"update the NVIDIA driver to the one that ships with CUDA {machine.torch_cuda}",
        )
    return Check("driver", OK, f"{have}, torch needs CUDA {machine.torch_cuda}")


def check_gpus(machine: Machine) -> list[Check]:
    if not machine.on_gpu:
        return []
    return [
        Check(
            f"GPU {gpu.index}",
            OK if gpu.capability >= (6, 0) else WARN,
            f"{gpu.name}, compute capability {gpu.capability[0]}.{gpu.capability[1]}, "
            f"{usage(gpu.total_bytes, gpu.free_bytes)}",
            "" if gpu.capability >= (6, 0) else "GPTQ kernels need compute capability 6.0+; use --device cpu",
        )
        for gpu in machine.gpus
    ]


def check_interconnect(machine: Machine) -> list[Check]:
    """How the GPUs reach each other, which decides how a model too big for one of them is split."""
    if machine.interconnect is None:
        return []
    cards = ", ".join(str(gpu.index) for gpu in machine.gpus)
    later = "" if machine.interconnect.measured else "; measured when a model is first split over them"
    return [Check("link", OK, f"GPUs {cards}: {machine.interconnect.describe()}{later}")]


def typical_checkpoint() -> CheckpointInfo:
    """What a Qwen GPTQ-Int4 release looks like to the kernel choice (4-bit, group 128, symmetric)."""
    return CheckpointInfo(
        path=Path("a Qwen GPTQ-Int4 checkpoint"),
        model_type="qwen2",
        architecture="Qwen2ForCausalLM",
        shape=QWEN_SHAPES["qwen1.5-7b"],
        gptq=GPTQSettings(),
        checkpoint_format="gptq",
        weight_files=(),
        weight_bytes=0,
        has_chat_template=True,
    )


def capability(machine: Machine) -> tuple[int, int] | None:
    """GPU 0's compute capability (the app's default device), or None for the CPU."""
    return machine.gpus[0].capability if machine.on_gpu else None


def check_kernels(machine: Machine, info: CheckpointInfo, stack: str) -> tuple[Check, KernelChoice | None]:
    where = capability(machine)
    runnable = [name for name in KERNELS if why_not(name, info, where) is None]
    try:
        choice = choose_kernel(info, where)
    except KernelError as error:
        return Check("kernels", FAIL, str(error), "use a 4-bit GPTQ checkpoint, or --device cpu"), None
    label = gptq_stack.kernel_label(choice.backend, stack)
    subject = "" if info.weight_files == () else f" for {info.name}"
    message = f"{label} will be used{subject}: {choice.reason}; can run here: {', '.join(runnable)}"
    return Check("kernels", OK, message), choice


def check_toolchain(machine: Machine, jit: JitKernel | None, compiled: Path | None) -> Check:
    """nvcc and ninja, as torch's cpp_extension finds them: only needed to compile a kernel not compiled yet."""
    if jit is None:
        return Check(
            "compiler", OK, "not needed: " + ("this kernel needs no compiling" if machine.on_gpu else "CPU mode")
        )
    nvcc, nvcc_version = find_nvcc(machine)
    ninja, ninja_version = tool_version("ninja", machine.path)
    problems, fixes = [], []
    cuda = machine.torch_cuda or "?"
    if nvcc is None:
        problems.append("nvcc not found (on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin)")
        fixes.append(
            f"install the CUDA {cuda} toolkit (developer.nvidia.com/cuda-toolkit-archive) and "
            f"`export PATH=/usr/local/cuda-{cuda}/bin:$PATH`"
        )
    elif gptq_stack.major(nvcc_version) != gptq_stack.major(machine.torch_cuda):
        problems.append(f"nvcc {nvcc_version} ({nvcc}) does not match torch's CUDA {cuda}; torch refuses to compile")
        fixes.append(f"put the CUDA {cuda} toolkit first: `export CUDA_HOME=/usr/local/cuda-{cuda}`")
    if ninja is None:
        venv_ninja = Path(sys.executable).parent / "ninja"
        where = f" ({venv_ninja} exists, but torch looks only on PATH)" if venv_ninja.is_file() else ""
        problems.append(f"ninja not on PATH{where}")
        fixes.append(f'export PATH="{venv_ninja.parent}:$PATH"' if where else pip_install("ninja"))
    found = f"nvcc {nvcc_version} ({nvcc}), ninja {ninja_version}"
    if not problems:
        return Check("compiler", OK, f"{found}: can compile {jit.label} for torch's CUDA {cuda}")
    if compiled is not None:
        return Check("compiler", OK, f"not needed, {jit.label} is already compiled ({'; '.join(problems)})")
    return Check("compiler", FAIL, f"{jit.label} must be compiled once, but: {'; '.join(problems)}", "; ".join(fixes))


def check_compiled(machine: Machine, stack: str, jit: JitKernel | None, compiled: Path | None) -> Check:
    if stack == gptq_stack.LEGACY:
        import importlib.util

        if importlib.util.find_spec("exllamav2_kernels") is None and machine.on_gpu:
            return Check("compiled", FAIL, "auto-gptq was installed without its CUDA kernels", LEGACY_SETUP)
        return Check("compiled", OK, "auto-gptq's kernels were compiled when it was installed")
    if jit is None:
        return Check("compiled", OK, "nothing to compile: this kernel ships inside torch or compiles in seconds")
    if compiled is not None:
        return Check("compiled", OK, f"{jit.label} is compiled: {compiled}")
    return Check(
        "compiled",
        WARN,
        f"{jit.label} is not compiled yet: the first model load would compile it, {jit.minutes}",
        f"compile it now: {python_command()} env/doctor.py --build-kernels",
    )


def check_packages(search_path: Sequence[str] | None = None) -> Check:
    """The GPTQ stack's versions against requirements.txt's ranges and the tested sets (env/tested-*.txt)."""
    versions = {name: package_version(name, search_path) for name in ("torch", "transformers", "optimum")}
    stack = gptq_stack.stack_for(versions["transformers"], package_version("auto-gptq", search_path))
    library = STACK_PACKAGES[stack][-1]
    versions[library] = package_version(library, search_path)
    have = ", ".join(f"{name} {version or '(missing)'}" for name, version in versions.items())
    missing = [name for name, version in versions.items() if version is None]
    if missing:
        fix = LEGACY_SETUP if stack == gptq_stack.LEGACY else f"{SETUP}; {OFFLINE}"
        return Check("packages", FAIL, f"{', '.join(missing)} not installed ({have})", fix)
    if stack == gptq_stack.LEGACY:  # the recipe's pins, build tags aside (+cu118)
        pins = read_pins(REPO_ROOT / TESTED_SETS[2])
        ranges = {name: Requirement(f"{name}=={public(version)}") for name, version in pins.items()}
    else:
        ranges = read_ranges(REPO_ROOT / "requirements.txt")
    wanted_here = [
        (ranges.get(canonicalize_name(name)), public(version) or version) for name, version in versions.items()
    ]
    outside = [wanted for wanted, version in wanted_here if wanted and not wanted.specifier.contains(version)]
    if outside:
        wanted = ", ".join(f"{r.name}{r.specifier}" for r in outside)
        return Check(
            "packages", FAIL, f"outside the supported versions ({wanted}): {have}", pip_install(*map(str, outside))
        )
    for tested in TESTED_SETS:
        pins = read_pins(REPO_ROOT / tested)
        if all(public(pins.get(canonicalize_name(n), "")) == public(v) for n, v in versions.items()):
            return Check("packages", OK, f"{have}: a tested set ({tested}: {file_title(REPO_ROOT / tested)})")
    label = gptq_stack.STACK_LABELS[stack]
    return Check(
        "packages",
        WARN,
        f"{have}: within the supported ranges ({label}) but not a combination we have tested",
        f"install the tested set for this machine: {SETUP} (env/tested-gpu.txt with a GPU, else env/tested-cpu.txt)",
    )


@dataclass(frozen=True)
class Chosen:
    """The model the app would open, as far as the doctor could make it out."""

    reference: str | None
    info: CheckpointInfo | None = None
    entry: catalog.CatalogEntry | None = None  # a known model that is not on disk: planned from the catalog

    @property
    def model(self) -> PlannedModel | None:
        """What the memory check plans for: the checkpoint on disk, else the catalog's entry."""
        return self.info or self.entry


def loadable(info: CheckpointInfo, machine: Machine) -> str | None:
    """Why this checkpoint cannot be loaded here, or None."""
    try:
        choose_kernel(info, capability(machine))
    except KernelError as error:
        return str(error)
    return None


def model_problem(item: store.Installed, machine: Machine) -> tuple[str, str] | None:
    """What keeps a model folder from loading here (incomplete, damaged, no kernel for it) and what repairs it."""
    if not item.complete and item.resumable:  # the store knows this download: it can finish or repair it
        return item.status, f"resume the download: {python_command()} download.py {item.ref}"
    try:
        info = find_checkpoint(item.path)
    except CheckpointError as error:  # its fix knows whether the folder came through download.py
        return error.problem.splitlines()[0], error.fix
    problem = loadable(info, machine)
    if problem is None:
        return None
    return problem, "open another model (--model), or pick a kernel that runs it (--backend, --device)"


def check_models(machine: Machine, root: Path, requested: str | None) -> tuple[list[Check], Chosen]:
    """Each model on disk complete and loadable. A broken one blocks chatting only if it is the one the app opens
    (the one asked for, else $GPTQ_CHAT_MODEL, else the first on disk, as `installed.default_model` picks)."""
    items = store.installed(root)
    on_disk = installed_models(root)
    reference = requested or os.environ.get(MODEL_ENV) or (str(on_disk[0]) if on_disk else None)
    chosen, chosen_dir, checks = Chosen(reference), None, []
    if reference is not None:
        try:
            chosen_dir = resolve_model_dir(reference)
            chosen = Chosen(reference, info=find_checkpoint(chosen_dir))
        except CheckpointError as error:
            entry = catalog.find(reference)
            chosen = Chosen(reference, entry=entry)
            if chosen_dir is None:  # not on disk at all (a broken folder is reported with the others below)
                fix = f"{python_command()} download.py {entry.key if entry else reference}"
                checks.append(Check("model", FAIL, f"{reference}: not downloaded", fix if entry else error.fix))
    if not items and reference is None:
        checks.append(
            Check(
                "models",
                WARN,
                f"no model in {root} yet: the app builds and opens the demo model (SmolLM2-135M, ~2 minutes once)",
                f"build it now: {python_command()} download.py --demo; or get Qwen1.5-7B-Chat-GPTQ-Int4: "
                f"{python_command()} download.py",
            )
        )
    listed = list(items)
    if chosen_dir is not None and all(item.path.resolve() != chosen_dir for item in listed):
        listed.append(store.Installed(chosen_dir, str(chosen_dir), 0, True, "complete and loadable"))
    for item in listed:
        is_chosen = item.path.resolve() == chosen_dir
        label = "demo" if item.path == demo_model_dir() else item.ref
        found = model_problem(item, machine)
        opened = " (the app opens this one)" if is_chosen else ""
        if found is None:
            checks.append(Check("model", OK, f"{label}: {item.status}{opened}"))
            continue
        problem, fix = found
        if label == "demo":
            fix = f"{python_command()} download.py --demo --force"
        checks.append(Check("model", FAIL if is_chosen else WARN, f"{label}: {problem}{opened}", fix))
    return checks, chosen


def generation_path(machine: Machine, chosen: Chosen, choice: KernelChoice | None, stack: str) -> str:
    """The path the loader takes with engine="auto": the fast engine on CUDA where it runs the model, else plain."""
    if not machine.on_gpu or choice is None or stack == gptq_stack.LEGACY or not gptq_stack.fast_engine_available():
        return "plain"
    from gptq_chat.loading.loader import FAST_ENGINE_KERNELS, pick_engine

    if chosen.info is None:  # a catalog model: every known one is a Qwen2-architecture checkpoint
        return "fast" if choice.backend in FAST_ENGINE_KERNELS else "plain"
    return "fast" if pick_engine("auto", chosen.info, "cuda", choice.backend)[0] else "plain"


def models_that_fit(context: int, gpus: Sequence[GpuSpec], path: str, exclude: str) -> list[str]:
    """Known models (largest first) that fit these cards at this context: the other way out."""
    fitting = [
        entry
        for entry in catalog.KNOWN_MODELS
        if entry.name != exclude and largest_context(entry, gpus, path=path) >= context
    ]
    fitting.sort(key=total_weight_bytes, reverse=True)
    return [entry.key for entry in fitting[:2]]


def check_memory(machine: Machine, chosen: Chosen, context: int | None, vram: Sequence[int] | None, path: str) -> Check:
    """Free VRAM (or the stated card sizes) against what the model needs at this context on this generation path,
    by the loader's own rule (`fit.fit`); no context: the one the loader would choose."""
    model = chosen.model
    if model is None:
        subject = f"{chosen.reference} is not usable (above)" if chosen.reference else "no model chosen yet"
        return Check("memory", OK, f"nothing to plan for: {subject}; checked once there is a model (or --model)")
    cards = list(vram) if vram else [gpu.free_bytes for gpu in machine.gpus]
    if not cards:
        import psutil

        layout = fit(model, [], fast=False, context=context)
        need = ram_needed(model, layout.context)
        available = psutil.virtual_memory().available
        status = OK if need <= available else WARN
        return Check(
            "memory",
            status,
            f"CPU mode: {model.name} at {layout.context:,} tokens needs about {need / GIB:.1f} GiB of RAM, "
            f"{available / GIB:.1f} GiB available",
            "" if status == OK else "close other programs, or use a shorter context length",
        )
    bandwidths = {gpu.index: gpu.bandwidth for gpu in machine.gpus}
    gpus = [GpuSpec(i, size, size, bandwidth=bandwidths.get(i, 0.0)) for i, size in enumerate(cards)]
    stated = "stated" if vram else "free"
    cards_text = ", ".join(f"GPU {gpu.index}: {gpu.free_bytes / GIB:.1f} GiB {stated}" for gpu in gpus)
    link = machine.interconnect
    try:  # as the app plans
        layout = fit(
            model,
            gpus,
            fast=path == "fast",
            context=context,
            kv_cache="auto",
            interconnect=None if link is None else (lambda: link),
        )
    except PlacementRefused as refused:
        tried = planned_context(model, context, refused.largest_context)
        need = plan(cached_as(model, refused.kv_cache), tried, path=path).total
        on = f"{path} path{kv_cache_note(refused.kv_cache)}"
        head = f"{model.name} at {tried:,} tokens ({on}) needs {need / GIB:.1f} GiB"
        others = models_that_fit(tried, gpus, path, model.name)
        fixes = []
        if refused.largest_context > 0:
            fixes.append(f"set the context length to {refused.largest_context // 256 * 256:,} tokens or less")
        if others:
            fixes.append(f"or a model that fits at {tried:,} tokens: {', '.join(others)}")
        fixes.append(f"or free VRAM (another program may hold it: nvidia-smi); this needs {need / GIB:.1f} GiB")
        return Check("memory", FAIL, f"{head}, more than {cards_text}", "; ".join(fixes))
    need = plan(cached_as(model, layout.kv_cache), layout.context, path=path).total
    on = f"{path} path{kv_cache_note(layout.kv_cache)}"
    head = f"{model.name} at {layout.context:,} tokens ({on}) needs {need / GIB:.1f} GiB"
    if layout.placement is None:
        card = next(gpu for gpu in gpus if f"cuda:{gpu.index}" == layout.device)
        spare = (card.free_bytes - need) / GIB
        return Check("memory", OK, f"{head}; fits on GPU {card.index} ({spare:.1f} GiB to spare)")
    split = "; ".join(card.describe() for card in layout.placement.cards)
    held = f"split over {len(layout.placement.cards)}: {split}"
    why = f"; {layout.split_reason}" if layout.split_reason else ""
    return Check("memory", OK, f"{head}, more than one card holds ({cards_text}); {held}{why}")


def check_disk(root: Path) -> Check:
    free = store.free_disk_bytes(root)
    default = catalog.find(catalog.DEFAULT_MODEL)
    room = default.download_bytes + store.DISK_RESERVE_BYTES if default else 0
    where = f"{free / 1e9:.1f} GB free for models in {root}"
    if free < store.DISK_RESERVE_BYTES:
        return Check(
            "disk", FAIL, where, "free some space there, or keep models elsewhere: GPTQ_CHAT_HOME=/bigger/disk"
        )
    if free < room:
        return Check(
            "disk",
            WARN,
            f"{where}: enough for the demo, not for {default.name} ({default.download_bytes / 1e9:.1f} GB)",
            f"free some space, or download to a bigger disk: {python_command()} download.py --dir /bigger/disk",
        )
    return Check("disk", OK, where)


def run_checks(
    machine: Machine | None = None,
    *,
    model: str | None = None,
    context: int | None = None,
    vram: Sequence[int] | None = None,
    root: Path | None = None,
    search_path: Sequence[str] | None = None,
) -> list[Check]:
    """Every check, in the order a fix depends on the one before; `vram` plans against these card sizes instead
    of this machine's free VRAM, `search_path` reads package versions from there instead of sys.path."""
    machine = machine or probe()
    root = Path(root or models_home()).expanduser()
    checks = [
        check_python(machine),
        check_torch(machine),
        check_driver(machine),
        *check_gpus(machine),
        *check_interconnect(machine),
    ]
    if machine.torch_version is None:
        return [*checks, check_packages(search_path), check_disk(root)]
    stack = gptq_stack.stack_for(
        package_version("transformers", search_path), package_version("auto-gptq", search_path)
    )
    model_checks, chosen = check_models(machine, root, model)
    kernel_check, choice = check_kernels(machine, chosen.info or typical_checkpoint(), stack)
    jit = JIT_KERNELS.get(choice.backend) if choice and machine.on_gpu and stack == gptq_stack.MODERN else None
    compiled = compiled_kernel(jit, exact=real_cuda()) if jit else None
    path = generation_path(machine, chosen, choice, stack)
    return [
        *checks,
        kernel_check,
        check_toolchain(machine, jit, compiled),
        check_compiled(machine, stack, jit, compiled),
        check_packages(search_path),
        *model_checks,
        check_memory(machine, chosen, context, vram, path),
        check_disk(root),
    ]


def exit_code(checks: Sequence[Check]) -> int:
    """1 when something blocks chatting, else 0 (warnings do not)."""
    return 1 if any(check.blocking for check in checks) else 0


# ----------------------------------------------------------------------------------------------
# Compiling the kernel ahead (env/setup.sh), with visible progress
# ----------------------------------------------------------------------------------------------


def build_kernels(machine: Machine | None = None, echo: Callable[[str], None] = print) -> bool:
    """Compile the GPTQ kernel this GPU will use, now, so the first chat does not wait minutes for it."""
    machine = machine or probe()
    if not machine.on_gpu:
        echo("No CUDA GPU: nothing to compile (the CPU kernel is part of torch).")
        return True
    choice = choose_kernel(typical_checkpoint(), capability(machine))
    jit = JIT_KERNELS.get(choice.backend)
    if jit is None:
        echo(f"The {choice.backend} kernel needs no compiling.")
        return True
    found = compiled_kernel(jit, exact=True)
    if found is not None:
        echo(f"{jit.label} is already compiled: {found}")
        return True
    check = check_toolchain(machine, jit, None)
    if check.blocking:
        echo(check.line())
        return False
    venv_bin = str(Path(sys.executable).parent)  # gptqmodel's ninja lives there; torch looks on PATH only
    os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    from gptqmodel import extension

    target = extension._extension_for_name(jit.extension)
    sources = len(target._resolve_sequence(target.sources))
    folder = target.build_root()
    echo(f"Compiling {jit.label} for {machine.gpus[0].name} into {folder}: {sources} source files, {jit.minutes}.")
    done = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not done.wait(10):
            objects = len(list(folder.glob("*.o")))
            echo(f"  ... {objects} of {sources} files compiled, {time.monotonic() - started:.0f} s")

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        extension.load(jit.extension)
    except RuntimeError as error:
        echo(f"{jit.label} failed to compile: {error}")
        return False
    finally:
        done.set()
    echo(f"{jit.label} compiled in {time.monotonic() - started:.0f} s.")
    return True


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder or id to check (default: the one the app opens)")
    parser.add_argument("--context", type=int, help="context length to plan memory for (default: the app's)")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument(
        "--build-kernels", action="store_true", help="compile this GPU's GPTQ kernel now (and check nothing else)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    machine = probe()
    if args.build_kernels:
        return 0 if build_kernels(machine) else 1
    checks = run_checks(machine, model=args.model, context=args.context)
    if args.json:
        print(json.dumps([{**asdict(check), "blocking": check.blocking} for check in checks], indent=2))
    else:
        print("\n".join(check.line() for check in checks))
        blocking = sum(check.blocking for check in checks)
        print(f"\n{blocking} problem(s) block chatting." if blocking else "\nNothing blocks chatting.")
    return exit_code(checks)


if __name__ == "__main__":
    sys.exit(main())
