"""Fill a folder with what `bash env/setup.sh --wheels DIR` installs on a machine without internet access.

    bash env/setup.sh --download-wheels DIR --for cu128 --python 3.12 [--no-torch] [--dev]

runs this with the requirement files and the tested set. The folder is for another machine (a rented GPU server
with no way out, say), so pip is told that machine's Python and platform (CPython, Linux x86_64 with glibc 2.31 or
newer: Ubuntu 20.04 and later) and takes binary wheels only; it resolves the whole set once, then fetches each file.
A package published only as source (gptqmodel and a few of its dependencies) comes as its sdist, its dependencies
resolved in its place, plus the build requirements its pyproject.toml names, so that the offline machine can build
it with no index (one with C code also needs a C compiler there).

torch comes from download.pytorch.org/whl/<--for> ($TORCH_INDEX_URL to change), everything else from PyPI
($PIP_INDEX_URL); --no-torch leaves out torch and what only torch needs, for images that have it. pip evaluates
environment markers for the Python that runs it, so run this with the offline machine's Python version where you
can. Needs pip 22.2 or newer; standard library only, so that a bare Python runs it.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

NEWEST_GLIBC_MINOR = 31  # manylinux_2_31: Ubuntu 20.04; pip takes only the tags named, so older ones are listed too
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
EXTRA_ONLY = re.compile(r";.*\bextra\s*==")
# How pip names the package it could not find a file for (with constraints, pip reports it as a conflict).
MISSING = re.compile(r"(?:No matching distribution found for|Cannot install) ([A-Za-z0-9][A-Za-z0-9._-]*)")
SAVED = re.compile(r"(?:Saved|File was already downloaded) (\S+\.whl)")
LEGACY_BUILD = ["setuptools>=40.8.0", "wheel"]  # what pip builds a source tree without [build-system] with


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def name_of(requirement: str) -> str:
    match = NAME.match(requirement)
    return canonical(match.group(1)) if match else ""


def read_requirements(path: Path) -> list[str]:
    """A requirements file's requirement lines (comments and options aside)."""
    lines = (line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def pip(*args: str) -> tuple[str, str]:
    """`python -m pip ARGS`, its output shown as it comes; returns stdout and stderr, or stops with pip's error."""
    command = [sys.executable, "-m", "pip", *args, "--progress-bar", "off", "--disable-pip-version-check"]
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        process.wait()
        errors.seek(0)
        return_code, stderr = process.returncode, errors.read()
    if return_code != 0:
        raise PipFailed(stderr)
    return "".join(lines), stderr


class PipFailed(Exception):
    """pip stopped; its stderr is the message."""


def target_options(python: str) -> list[str]:
    """pip's options for wheels that install on the offline machine rather than on this one."""
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(NEWEST_GLIBC_MINOR, 16, -1)]
    platforms += ["manylinux2014_x86_64", "linux_x86_64"]  # manylinux2014 brings manylinux2010 and manylinux1
    options = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    for platform in platforms:
        options += ["--platform", platform]
    return options


def torch_requirement(requirements: list[str], constraints: Path | None) -> str:
    """The tested set's torch where it names one, else requirements.txt's range."""
    tested = read_requirements(constraints) if constraints else []
    return next(line for line in [*tested, *requirements] if name_of(line) == "torch")


def sdist_needs(sdist: Path) -> tuple[list[str], list[str]]:
    """What a source distribution needs to run (its PKG-INFO, extras aside) and to build (its pyproject.toml)."""
    with tarfile.open(sdist) as archive:
        texts = {}
        for member in archive.getmembers():
            parts = Path(member.name).parts
            if len(parts) == 2 and parts[1] in ("PKG-INFO", "pyproject.toml"):
                handle = archive.extractfile(member)
                texts[parts[1]] = handle.read().decode("utf-8") if handle else ""
    metadata = email.parser.Parser().parsestr(texts.get("PKG-INFO", ""))
    needs = [line for line in metadata.get_all("Requires-Dist") or [] if not EXTRA_ONLY.search(line)]
    if "[build-system]" not in texts.get("pyproject.toml", ""):
        return needs, LEGACY_BUILD
    try:
        import tomllib
    except ImportError:  # Python < 3.11: pip carries tomli
        from pip._vendor import tomli as tomllib
    return needs, tomllib.loads(texts["pyproject.toml"])["build-system"].get("requires", LEGACY_BUILD)


def download_torch(folder: Path, requirement: str, flavour: str, target: list[str]) -> str:
    """torch alone from PyTorch's index for this build; its dependencies are resolved with the rest."""
    index = os.environ.get("TORCH_INDEX_URL") or f"https://download.pytorch.org/whl/{flavour}"
    print(f"==> {requirement}, the {flavour} build, from {index} (about 1 GB for a CUDA build)", flush=True)
    stdout, _ = pip("download", "--no-deps", *target, "--index-url", index, "-d", str(folder), requirement)
    saved = SAVED.findall(stdout)
    return f"torch=={Path(saved[-1]).name.split('-')[1]}"  # exactly that file: 2.11.0+cu128, not PyPI's 2.11.0


def has_wheel(requirements: list[str], constraints: list[str], target: list[str], work: Path) -> bool:
    """Whether these requirements, alone, have wheels for the offline machine."""
    try:
        pip("download", "--no-deps", "--quiet", *target, "-d", str(work / "probe"), *constraints, *requirements)
    except PipFailed:
        return False
    return True


def resolve(
    requirements: list[str], torch: str, folder: Path, constraints: list[str], target: list[str], work: Path
) -> tuple[list[str], dict[str, list[str]], list[dict]]:
    """Resolve the set for the offline machine. A package that has no wheel for it is taken as its sdist, and its
    own requirements replace it in the set. A quick pass over each new requirement alone (no dependencies) finds
    those first; the full resolution, which takes a minute, then runs once. Returns the set's requirements, each
    sdist's build requirements, and pip's report of what it would install."""
    sdists: dict[str, list[str]] = {}
    have_wheels: set[str] = set()  # requirements the quick pass found wheels for
    (work / "torch.txt").write_text(torch + "\n", encoding="utf-8")
    while True:
        unchecked = [line for line in requirements if line not in have_wheels]
        quick = bool(unchecked)
        asked = unchecked if quick else requirements
        (work / "requirements.txt").write_text("\n".join(asked) + "\n", encoding="utf-8")
        what = "Checking that each has a wheel" if quick else "Resolving the whole set"
        print(f"==> {what}: {len(asked)} requirements, for the offline machine", flush=True)
        scope = ["--no-deps"] if quick else ["--report", str(work / "report.json")]
        try:
            pip(
                "install", "--dry-run", "--quiet", "--ignore-installed", "--target", str(work / "target"), *scope,
                *target, "--find-links", str(folder),
                "-r", str(work / "requirements.txt"), *constraints, "-c", str(work / "torch.txt"),
            )  # fmt: skip
        except PipFailed as failed:
            missing = MISSING.search(str(failed))
            name = canonical(missing.group(1)) if missing else ""
            wanted = [line for line in requirements if name_of(line) == name]
            if not wanted or name in sdists or has_wheel(wanted, constraints, target, work):
                raise  # a conflict, or a dependency of a wheel that has none: not ours to work around
            print(f"==> {name}: no wheel for that machine, so its source distribution", flush=True)
            source = work / "sdist"
            shutil.rmtree(source, ignore_errors=True)
            pip("download", "--no-deps", f"--no-binary={name}", "-d", str(source), *constraints, *wanted)
            sdist = next(source.iterdir())
            needs, sdists[name] = sdist_needs(sdist)
            shutil.copy2(sdist, folder / sdist.name)
            # Its requirements instead of it; those that name a package taken as source already are that sdist's.
            requirements = [line for line in requirements + needs if name_of(line) not in sdists]
            continue
        if not quick:
            report = json.loads((work / "report.json").read_text(encoding="utf-8"))["install"]
            return requirements, sdists, report
        have_wheels.update(unchecked)


def needed(requirements: list[str], report: list[dict], no_torch: bool, folder: Path) -> list[str]:
    """The download addresses of what the requirements reach (with --no-torch, not through torch), minus what is in
    the folder already."""
    by_name = {canonical(item["metadata"]["name"]): item for item in report}
    keep: set[str] = set()
    reach = [name_of(line) for line in requirements]
    while reach:
        name = reach.pop()
        if name in keep or name not in by_name or (no_torch and name == "torch"):
            continue
        keep.add(name)
        dependencies = by_name[name]["metadata"].get("requires_dist", [])
        reach += [name_of(line) for line in dependencies if not EXTRA_ONLY.search(line)]
    urls = (by_name[name]["download_info"]["url"] for name in sorted(keep))
    return [url for url in urls if Path(unquote(urlparse(url).path)).parent != folder]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--for", dest="flavour", required=True, choices=("cu130", "cu128", "cu126", "cpu"))
    parser.add_argument("--python", required=True, help="the offline machine's Python, e.g. 3.12")
    parser.add_argument("-r", dest="requirements", action="append", type=Path, required=True)
    parser.add_argument("-c", dest="constraints", type=Path, help="the tested set")
    parser.add_argument("--no-deps", nargs="+", action="extend", default=[], help="installed without dependencies")
    parser.add_argument("--no-torch", action="store_true", help="the offline machine's image has torch")
    args = parser.parse_args(argv)

    version = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True).stdout
    found = re.match(r"pip (\d+)\.(\d+)", version)
    if found is None or tuple(map(int, found.groups())) < (22, 2):
        sys.exit(f"Error: --download-wheels needs pip 22.2 or newer: {sys.executable} -m pip install -U pip")
    folder = args.folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    target = target_options(args.python)
    requirements = [line for path in args.requirements for line in read_requirements(path)]
    constraints = ["-c", str(args.constraints)] if args.constraints else []
    torch = torch_requirement(requirements, args.constraints)
    try:
        if not args.no_torch:
            torch = download_torch(folder, torch, args.flavour, target)
        with tempfile.TemporaryDirectory(prefix="wheels-") as work:
            requirements, sdists, report = resolve(requirements, torch, folder, constraints, target, Path(work))
        urls = needed(requirements, report, args.no_torch, folder)
        print(f"==> Downloading {len(urls)} wheels", flush=True)
        if urls:
            pip("download", "--no-deps", *target, "-d", str(folder), *urls)
        for name, build in sdists.items():
            print(f"==> What building {name} needs: {', '.join(build)}", flush=True)
            pip("download", *target, "-d", str(folder), *build)
        if args.no_deps:
            print(f"==> Installed without dependencies: {', '.join(args.no_deps)}", flush=True)
            pip("download", "--no-deps", *target, "-d", str(folder), *args.no_deps)
    except PipFailed as failed:
        sys.stderr.write(str(failed))
        sys.exit("\nError: pip stopped (its message is above); the folder keeps what it has fetched so far.")

    files = [path for path in folder.iterdir() if path.is_file()]
    size = sum(path.stat().st_size for path in files)
    print(f"\n{folder}: {len(files)} files, {size / 1e9:.2f} GB.")
    if sdists:
        print(f"Built from source on the offline machine: {', '.join(sorted(sdists))}; what that needs is in the")
        print("folder, and one with C code also needs a C compiler there.")
    print("Copy the folder to the offline machine; there, in this project:")
    print(f"  PYTHON=python{args.python} bash env/setup.sh --wheels {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
