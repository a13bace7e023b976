"""The README's first command on a GPU machine, end to end (`pytest -m gpu`, with $GPTQ_CHAT_WHEELS naming a folder).

`bash env/setup.sh --wheels $GPTQ_CHAT_WHEELS` runs in a clean copy of the project (a `git clone` where the checkout
is a git repository, else its files less what .gitignore names), reusing the torch of the Python that makes .venv
($PYTHON, else python3), with a kernel cache of its own, so that the compile-ahead really compiles. Before it, a
random-weight checkpoint with Qwen1.5-7B-Chat's shapes goes where download.py puts models, so that the doctor checks
it too. Then: the doctor's report is all green; a second set-up changes nothing, in seconds; the page, as `python
app.py --model` opens it, loads the checkpoint on the fast engine, compiles nothing at the first chat and answers; and
serve.py answers the official `openai` client. The page, the server and the client run in the new .venv's Python
(tests/support/first_chat.py), as a user's would: this process needs only pytest and torch.

The folder is filled on a machine with internet access by `bash env/setup.sh --download-wheels DIR --for cu130
--python 3.12 --no-torch` (this machine's torch build and Python). SKIP_DEMO=1 leaves the demo model out (its data
package alone is 93 MB). Step times and the first chat's figures are printed (run with `-s`); where
$GPTQ_CHAT_RESULTS names a folder, both set-ups' output, serve.py's and the figures (first_run_gpu.json) are kept there.
"""

from __future__ import annotations

import fnmatch
import gc
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from gptq_chat.models.home import REPO_ROOT
from tests.support.fixtures_random import write_qwen_shaped
from tests.support.setup_script import offline_env, run_setup, step_times

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
WHEELS_ENV = "GPTQ_CHAT_WHEELS"
RESULTS_ENV = "GPTQ_CHAT_RESULTS"  # a folder to keep the logs and figures in
SHAPE = "qwen1.5-7b"
MODEL = Path("Qwen") / "Qwen1.5-7B-Chat-GPTQ-Int4-random"  # under models/, where download.py puts Qwen's
CHECK = re.compile(r"^(✓|⚠|✗) (.{10}) (.*)$", re.MULTILINE)  # a line of the doctor's report
FIGURES: dict[str, Any] = {}


@dataclass(frozen=True)
class FirstSetup:
    project: Path
    model: Path
    wheels: Path
    env: dict[str, str]  # what setup.sh and the programs of the new .venv run with
    kernels: Path  # gptqmodel's kernel cache, this run's alone
    logs: Path
    output: str


def record(**figures: Any) -> None:
    """Keep figures in $GPTQ_CHAT_RESULTS/first_run_gpu.json as they come (a run cut short keeps those it had)."""
    FIGURES.update(figures)
    if os.environ.get(RESULTS_ENV):
        Path(os.environ[RESULTS_ENV], "first_run_gpu.json").write_text(json.dumps(FIGURES, indent=2) + "\n")


def gitignored(leave_out: Path) -> Callable[[str, list[str]], set[str]]:
    """A `shutil.copytree` filter: .git, `leave_out`, and what .gitignore names (its patterns here are names, globs,
    /anchored and folder/ ones)."""
    lines = (REPO_ROOT / ".gitignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]

    def skipped(folder: str, names: list[str]) -> set[str]:
        left = set()
        for name in names:
            path = Path(folder, name)
            relative = path.relative_to(REPO_ROOT).as_posix()
            matches = (
                fnmatch.fnmatch(relative if pattern.startswith("/") else name, pattern.strip("/"))
                for pattern in patterns
                if path.is_dir() or not pattern.endswith("/")
            )
            if name == ".git" or path.resolve() == leave_out or any(matches):
                left.add(name)
        return left

    return skipped


def clean_copy(destination: Path, leave_out: Path) -> Path:
    """The project as a fresh clone has it: `git clone` of what is committed where the checkout is a git
    repository, else its files less what git ignores (.venv, models, logs, caches) and less `leave_out`."""
    if (REPO_ROOT / ".git").exists() and shutil.which("git"):
        subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(destination)], check=True, timeout=300)
    else:
        shutil.copytree(REPO_ROOT, destination, symlinks=True, ignore=gitignored(leave_out.resolve()))
    return destination


def setup_env(kernels: Path) -> dict[str, str]:
    """setup.sh's environment without an index (tests/support/setup_script.py), less this process's own Python path
    and the app's settings (the copy keeps its models and chats in itself), with gptqmodel's kernel cache in
    `kernels`; SKIP_DEMO as given, and nothing else skipped."""
    env = offline_env(None, os.environ.get("PYTHON", "python3"), GPTQMODEL_TORCH_EXTENSIONS_DIR=str(kernels))
    for name in list(env):
        if name.startswith(("GPTQ_CHAT_", "SKIP_")) or name in ("PYTHONPATH", "PYTHONHOME"):
            del env[name]
    if os.environ.get("SKIP_DEMO"):
        env["SKIP_DEMO"] = os.environ["SKIP_DEMO"]
    return env


@pytest.fixture(scope="module")
def first_setup(tmp_path_factory: pytest.TempPathFactory) -> FirstSetup:
    """The checkpoint written, then the set-up run once from scratch (the tests below share it)."""
    if not os.environ.get(WHEELS_ENV):
        pytest.skip(
            f"${WHEELS_ENV} names no wheel folder: a folder filled by env/setup.sh --download-wheels DIR --for cu130 "
            "--python 3.12 --no-torch on a machine with internet access"
        )
    wheels = Path(os.environ[WHEELS_ENV])
    logs = Path(os.environ.get(RESULTS_ENV) or tmp_path_factory.mktemp("logs"))
    project = clean_copy(tmp_path_factory.mktemp("copy") / "project", wheels)
    started = time.monotonic()
    model = write_qwen_shaped(project / "models" / MODEL, SHAPE)
    gc.collect()
    torch.cuda.empty_cache()  # the card's memory for the programs below
    record(checkpoint_s=round(time.monotonic() - started, 1))
    print(f"\n{SHAPE} checkpoint written in {FIGURES['checkpoint_s']} s: {model}")
    kernels = tmp_path_factory.mktemp("kernels")
    env = setup_env(kernels)
    result = run_setup(project, "--wheels", str(wheels), env=env, timeout=1800, log=logs / "setup-first.log")
    assert result.returncode == 0, result.stdout[-5000:]
    return FirstSetup(project, model, wheels, env, kernels, logs, result.stdout)


def doctor_checks(output: str) -> dict[str, list[tuple[str, str]]]:
    """The doctor's report at the end of a set-up: (status, message) by check name."""
    report = output[output.index("==> Checking the set-up") :]
    checks: dict[str, list[tuple[str, str]]] = {}
    for status, name, message in CHECK.findall(report):
        checks.setdefault(name.strip(), []).append((status, message))
    return checks


def test_setup_reuses_the_torch_here_installs_from_the_folder_compiles_the_kernel_and_ends_all_green(
    first_setup: FirstSetup,
) -> None:
    output = first_setup.output
    times = step_times(output)
    record(setup_s=times)
    print("set-up: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in times.items()))
    assert {"venv", "torch", "packages", "kernels", "doctor"} <= set(times), times

    reused = re.search(r"Reusing the preinstalled torch (\S+) \(CUDA [0-9.]+, runs on this driver's CUDA [0-9.]+\) "
                       r"from (\S+); --own-torch installs a separate one", output)  # fmt: skip
    assert reused, output[-5000:]
    version, site = reused.groups()
    assert "Installing torch" not in output
    venv_site = next((first_setup.project / ".venv").glob("lib/python*/site-packages"))
    assert (venv_site / "gptqmodel").is_dir(), "gptqmodel did not come from the wheel folder into .venv"
    assert re.search(r"^Marlin \(fp16\) compiled in \d+ s\.$", output, re.MULTILINE), (
        "the compile-ahead did not compile"
    )

    checks = doctor_checks(output)
    lines = [f"{status} {name}: {message}" for name, found in checks.items() for status, message in found]
    print("doctor:\n  " + "\n  ".join(lines))
    assert all(line.startswith("✓") for line in lines) and "Nothing blocks chatting." in output, lines
    assert checks["GPU 0"][0][1].startswith(torch.cuda.get_device_name(0)), checks["GPU 0"]
    assert checks["kernels"][0][1].startswith("marlin will be used")
    assert checks["compiled"][0][1].startswith(f"Marlin (fp16) is compiled: {first_setup.kernels}")
    torch_line = checks["torch"][0][1]
    assert torch_line.startswith(f"{version} (CUDA"), torch_line
    assert torch_line.endswith(f"; from {site}/torch (a preinstalled one this venv shares)"), torch_line
    assert any(message.startswith(f"{MODEL.as_posix()}: ") for _, message in checks["model"]), checks["model"]


def test_a_second_setup_changes_nothing_in_seconds(first_setup: FirstSetup) -> None:
    python = str(first_setup.project / ".venv" / "bin" / "python")
    freeze = [python, "-m", "pip", "freeze", "--all"]
    before = subprocess.run(freeze, capture_output=True, text=True, env=first_setup.env, check=True).stdout
    started = time.monotonic()
    again = run_setup(
        first_setup.project,
        "--wheels",
        str(first_setup.wheels),
        env=first_setup.env,
        timeout=600,
        log=first_setup.logs / "setup-again.log",
    )
    seconds = time.monotonic() - started
    assert again.returncode == 0, again.stdout[-5000:]
    times = step_times(again.stdout)
    record(second_setup_s=round(seconds, 1), second_setup_steps_s=times)
    print(f"second set-up: {seconds:.1f} s (" + ", ".join(f"{name} {took:.1f} s" for name, took in times.items()) + ")")
    assert "Requirements already installed (nothing changed since the last run)" in again.stdout
    assert "Marlin (fp16) is already compiled" in again.stdout
    for work in ("Creating the virtual environment", "Installing", "compiled in", "Quantizing"):
        assert work not in again.stdout, work
    assert subprocess.run(freeze, capture_output=True, text=True, env=first_setup.env, check=True).stdout == before
    assert seconds < 60


def kernel_builds(folder: Path) -> dict[str, int]:
    """gptqmodel's compiled objects and libraries under its kernel cache, with their times."""
    return {str(path): path.stat().st_mtime_ns for path in folder.rglob("*") if path.suffix in (".o", ".so")}


def first_chat(setup: FirstSetup, what: str, *extra: str) -> dict[str, Any]:
    """tests/support/first_chat.py in the copy, by its .venv's Python: what it saw."""
    seen = setup.project / f"{what}.json"
    command = [str(setup.project / ".venv" / "bin" / "python"), "-m", "tests.support.first_chat", what]
    done = subprocess.run(
        [*command, str(setup.model), str(seen), *extra],
        cwd=setup.project,
        env=setup.env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(seen.read_text())


def test_the_page_and_the_api_answer_on_the_fast_engine_with_nothing_compiled_at_the_first_chat(
    first_setup: FirstSetup,
) -> None:
    if not (first_setup.model / "tokenizer.json").is_file():
        pytest.skip("no Qwen tokenizer beside the checkpoint: it is built from dashscope's (env/setup.sh --dev)")
    compiled = kernel_builds(first_setup.kernels)
    assert compiled, f"nothing compiled in {first_setup.kernels}"
    page = first_chat(first_setup, "page")
    assert not page["exceptions"], page["exceptions"]
    assert kernel_builds(first_setup.kernels) == compiled, "the first chat compiled a kernel"
    panel = page["model_panel"]
    assert "Generation path: fast engine (CUDA graphs)" in panel and "(marlin)" in panel, panel
    loaded = re.search(r"Load time: ([0-9.]+) s", panel)
    assert loaded, panel
    stats = page["stats"]
    assert page["reply"].strip() and stats["new_tokens"] > 0, page
    record(
        page_open_s=page["opened_s"],
        first_load_s=float(loaded.group(1)),
        first_token_ms=round(stats["first_token_s"] * 1000),
        page_tokens_per_s=stats["tokens_per_s"],
    )
    print(
        f"page: opened in {page['opened_s']} s, model loaded in {loaded.group(1)} s, first token "
        f"{FIGURES['first_token_ms']} ms, {stats['new_tokens']} tokens at {stats['tokens_per_s']} tokens/s"
    )

    api = first_chat(first_setup, "api", str(first_setup.logs / "serve.log"))
    assert api["model"] == MODEL.name and api["reply"].strip() and api["completion_tokens"] > 0, api
    assert api["streamed"].strip() and api["stream_finish"] in (["stop"], ["length"]), api
    record(api_serving_s=api["serving_s"])
    print(f"serve.py: answering after {api['serving_s']} s; {api['completion_tokens']} tokens, and a stream")
