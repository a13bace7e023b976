"""Random-weight GPTQ-Int4 checkpoints for tests, written once per session (a second or two each)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import warnings
from pathlib import Path

import pytest

from gptq_chat.testing.random_checkpoint import write_random_gptq_checkpoint


def add_qwen_tokenizer(directory: Path) -> bool:
    """Save the real Qwen tokenizer next to the weights where `dashscope` (its BPE ranks) is installed; say whether it
    was."""
    if importlib.util.find_spec("dashscope") is None:
        warnings.warn(f"dashscope is not installed: {directory} has no tokenizer", stacklevel=2)
        return False
    from gptq_chat.testing.qwen_tokenizer import save_qwen_tokenizer

    save_qwen_tokenizer(directory)
    return True


@pytest.fixture(scope="session")
def tiny_gptq_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The "tiny" shape's weights and configs, without a tokenizer (kernel tests need none); read-only."""
    return write_random_gptq_checkpoint(tmp_path_factory.mktemp("tiny-gptq-weights"), "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_gptq_dir(tiny_gptq_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Qwen2 GPTQ-Int4 checkpoint (hidden 256, group 128, sym, v1 format) with Qwen's tokenizer.

    Its vocabulary is Qwen's real 151,936 (tied embeddings, 78 MB) so that every id the tokenizer
    produces exists. The weight file is a hard link to `tiny_gptq_weights`'s: tests must not modify the folder
    (copy it first).
    """
    directory = tmp_path_factory.mktemp("tiny-gptq")
    for source in tiny_gptq_weights.iterdir():
        if source.suffix == ".safetensors":  # 78 MB: share it; the small JSON files get their own copies
            try:
                os.link(source, directory / source.name)
                continue
            except OSError:
                pass
        shutil.copy2(source, directory / source.name)
    add_qwen_tokenizer(directory)
    return directory


def write_qwen_shaped(folder: Path, shape: str) -> Path:
    """A random-weight checkpoint with the exact shapes of a Qwen chat model, written on the GPU, with Qwen's
    tokenizer and no end-of-sequence (GPU tests only)."""
    write_random_gptq_checkpoint(folder, shape, device="cuda", eos_token_id=None)
    add_qwen_tokenizer(folder)
    return folder


def random_qwen(tmp_path_factory: pytest.TempPathFactory, shape: str) -> Path:
    """`write_qwen_shaped` in a new folder under pytest's temporary directory."""
    return write_qwen_shaped(tmp_path_factory.mktemp(shape), shape)


@pytest.fixture(scope="session")
def qwen_shaped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen1.5-0.5B-Chat's shapes (24 layers, vocab 151,936)."""
    return random_qwen(tmp_path_factory, "qwen1.5-0.5b")


@pytest.fixture(scope="session")
def qwen7b_shaped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen1.5-7B-Chat's shapes (32 layers; 5.9 GB): big enough that two cards share its layers evenly."""
    return random_qwen(tmp_path_factory, "qwen1.5-7b")
