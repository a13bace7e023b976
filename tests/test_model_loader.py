"""The loader: validation before loading, a clear refusal for impossible requests, facts about the result."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from gptq_chat.loading.checkpoint import CheckpointError
from gptq_chat.loading.kernels import KernelError
from gptq_chat.loading.loader import load, load_uncached


def test_tiny_qwen_checkpoint_loads_with_a_gptq_kernel_on_cpu(tiny_gptq_dir: Path) -> None:
    loaded = load_uncached(tiny_gptq_dir, device="cpu")
    facts = loaded.facts
    assert facts.device == "cpu" and facts.backend == "torch_aten"
    assert facts.quantized_layers == 7 * loaded.info.shape.num_layers
    assert facts.kernel_class.endswith("Linear")
    assert facts.load_seconds > 0 and facts.max_context == loaded.info.shape.max_position_embeddings
    logits = loaded.model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, loaded.info.shape.vocab_size) and torch.isfinite(logits).all()


def test_broken_folder_fails_fast_before_loading(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="not a quantized checkpoint"):
        load(tmp_path)
    assert time.perf_counter() - started < 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_points_to_the_doctor(tiny_gptq_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="doctor"):
        load(tiny_gptq_dir, device="cuda")


def test_a_gpu_kernel_on_the_cpu_is_refused(tiny_gptq_dir: Path) -> None:
    with pytest.raises(KernelError, match="marlin needs a CUDA GPU"):
        load(tiny_gptq_dir, backend="marlin", device="cpu")


def test_what_the_libraries_print_goes_to_a_log_that_a_failure_names(
    tiny_gptq_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """gptqmodel's banner and tables and transformers' warnings land in logs/model-load.log, not on the console;
    a load that fails inside a library says so and names that file."""
    from gptq_chat.loading.library_log import ModelLoadError

    monkeypatch.setenv("GPTQ_CHAT_LOGS", str(tmp_path / "logs"))
    log = tmp_path / "logs" / "model-load.log"
    load_uncached(tiny_gptq_dir, device="cpu")
    printed = capfd.readouterr()
    assert "Kernel: selected" not in printed.out + printed.err  # gptqmodel's own line
    assert "Kernel: selected" in log.read_text() and f"loading {tiny_gptq_dir}" in log.read_text()

    broken = tmp_path / "broken"
    shutil.copytree(tiny_gptq_dir, broken)
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(
        ModelLoadError, match=rf"Loading broken failed: .*what the libraries printed: {re.escape(str(log))}"
    ):
        load_uncached(broken, device="cpu")


def test_a_logging_handler_made_while_libraries_print_to_the_log_outlives_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library that makes a logging handler during the load gets the log file as its stream, which closes with
    the load: its later lines still go to the log, and a root handler (a library's `basicConfig`, which our own
    lines pass through) writes to the stderr it would have had, instead of failing on a closed file."""
    import io
    import logging

    from gptq_chat.loading.library_log import library_output

    monkeypatch.setenv("GPTQ_CHAT_LOGS", str(tmp_path / "logs"))
    terminal = io.StringIO()
    monkeypatch.setattr("sys.stderr", terminal)
    library, root = logging.getLogger("some.library"), logging.getLogger()
    with library_output("model-load", "a test load") as log:
        library_handler, root_handler = logging.StreamHandler(), logging.StreamHandler()  # sys.stderr: the log
        library.addHandler(library_handler)
        root.addHandler(root_handler)
    try:
        library.warning("the library's line, after the load")
        root.warning("our line, after the load")
    finally:
        library.removeHandler(library_handler)
        root.removeHandler(root_handler)
    assert "the library's line, after the load" in log.read_text()
    assert "our line, after the load" in terminal.getvalue() and "our line" not in log.read_text()


def test_the_command_line_defaults_are_the_loaders_so_the_page_and_load_share_one_model() -> None:
    """`load()` caches by `load_uncached`'s arguments with its defaults filled in: a flag whose default differed
    would make the page (which passes every flag) load a second copy of the model beside any `load(path)`."""
    import argparse
    import inspect

    from gptq_chat.loading.options import add_model_flags, load_options

    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    parameters = inspect.signature(load_uncached).parameters
    options = load_options(parser.parse_args([]))
    assert options == {key: parameters[key].default for key in options}
