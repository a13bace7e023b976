"""env/wheels.py, behind `bash env/setup.sh --download-wheels`: what it reads from pip and from source releases, and
what it leaves out. The download itself needs PyPI and download.pytorch.org; these are its decisions, on pip's own
report format and real sdist layouts built here."""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

from gptq_chat.models.home import REPO_ROOT


def load_wheels() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wheels", REPO_ROOT / "env" / "wheels.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheels = load_wheels()


def item(name: str, url: str, *requires: str) -> dict:
    """One entry of `pip install --dry-run --report`'s "install" list, as pip writes it."""
    metadata = {"name": name, "version": "1.0", "requires_dist": list(requires)}
    return {"metadata": metadata, "download_info": {"url": url}}


def sdist(folder: Path, name: str, pkg_info: str, pyproject: str | None) -> Path:
    path = folder / f"{name}-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        files = {"PKG-INFO": pkg_info, **({"pyproject.toml": pyproject} if pyproject is not None else {})}
        for file, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(f"{name}-1.0/{file}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


def test_no_torch_leaves_out_torch_and_what_only_torch_needs(tmp_path: Path) -> None:
    report = [
        item("torch", "https://index/torch.whl", "sympy>=1.13", "jinja2", "nvidia-cublas-cu12; os_name == 'posix'"),
        item("sympy", "https://index/sympy.whl", "mpmath"),
        item("mpmath", "https://index/mpmath.whl"),
        item("nvidia-cublas-cu12", "https://index/cublas.whl"),
        item("Jinja2", "https://index/jinja2.whl", "MarkupSafe>=2.0"),
        item("MarkupSafe", "https://index/markupsafe.whl"),
        item("transformers", "https://index/transformers.whl", "numpy>=1.17", "torch>=2.2; extra == 'torch'"),
        item("numpy", f"file://{tmp_path}/numpy.whl"),  # fetched into the folder already
        item("gptqmodel-needs", "https://index/g.whl", "jinja2>=3.1", "sympy; extra == 'solver'"),
    ]
    roots = ["torch>=2.8,<2.15", "transformers>=5.17,<6", "gptqmodel-needs"]
    assert wheels.needed(roots, report, True, tmp_path) == [
        "https://index/g.whl",
        "https://index/jinja2.whl",
        "https://index/markupsafe.whl",
        "https://index/transformers.whl",
    ]
    everything = wheels.needed(roots, report, False, tmp_path)
    assert len(everything) == 8 and {"https://index/cublas.whl", "https://index/mpmath.whl"} <= set(everything)


def test_a_source_release_needs_its_requirements_but_extras_and_its_build_tools(tmp_path: Path) -> None:
    pkg_info = (
        "Metadata-Version: 2.4\nName: GPTQModel\nVersion: 1.0\n"
        "Requires-Dist: accelerate>=1.13.0\n"
        'Requires-Dist: numpy==2.2.6; python_version < "3.14"\n'
        'Requires-Dist: pytest>=8.3.5; extra == "test"\n'
        "Requires-Dist: torch>=2.8.0\n"
    )
    pyproject = '[build-system]\nrequires = ["setuptools>=79.0.0,<85", "cmake>=3.27"]\nbuild-backend = "x"\n'
    needs, build = wheels.sdist_needs(sdist(tmp_path, "gptqmodel", pkg_info, pyproject))
    assert needs == ["accelerate>=1.13.0", 'numpy==2.2.6; python_version < "3.14"', "torch>=2.8.0"]
    assert build == ["setuptools>=79.0.0,<85", "cmake>=3.27"]
    # No [build-system]: what pip builds such a tree with.
    _, build = wheels.sdist_needs(sdist(tmp_path, "old", "Metadata-Version: 2.1\nName: old\nVersion: 1.0\n", None))
    assert build == ["setuptools>=40.8.0", "wheel"]


@pytest.mark.parametrize(
    ("stderr", "name"),
    [
        ("ERROR: No matching distribution found for pypcre>=0.2.13\n", "pypcre"),
        ("ERROR: Cannot install gptqmodel<8 and >=7.6 because these package versions have conflicting", "gptqmodel"),
    ],
)
def test_the_package_pip_found_no_file_for_is_read_from_either_message(stderr: str, name: str) -> None:
    found = wheels.MISSING.search(stderr)
    assert found is not None and found.group(1) == name


def test_wheels_are_asked_for_the_offline_machine_every_glibc_up_to_2_31() -> None:
    options = wheels.target_options("3.12")
    platforms = [options[i + 1] for i, option in enumerate(options) if option == "--platform"]
    assert platforms[0] == "manylinux_2_31_x86_64" and platforms[14] == "manylinux_2_17_x86_64"
    assert [f"manylinux_2_{minor}_x86_64" for minor in range(31, 16, -1)] == platforms[:15]
    assert "manylinux2014_x86_64" in platforms
    assert options[:5] == ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
