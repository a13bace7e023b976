"""The built-in demo model, built once per machine (idempotent; a few minutes the first time), and served."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from gptq_chat.api.protocol import ServedModel
    from gptq_chat.loading.loader import LoadedModel


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The real GPTQ-Int4 demo model under the models home (`GPTQ_CHAT_HOME` moves it)."""
    from gptq_chat.models.demo_model import build_demo_model

    return build_demo_model()


@pytest.fixture(scope="session")
def served(demo_model_dir: Path) -> ServedModel:
    """The demo model as the API serves it (the API and remote-backend tests; the loader caches the model)."""
    from gptq_chat.api.protocol import ServedModel
    from gptq_chat.loading.loader import load

    return ServedModel.of(load(demo_model_dir))


@pytest.fixture(scope="session")
def demo_paths(demo_model_dir: Path) -> dict[str, LoadedModel]:
    """The demo model on the CPU by path ("plain", "fast"): the loader's cached objects, so every module that loads
    it with the same options (tests/test_engine.py too) shares them instead of loading again."""
    from gptq_chat.loading.loader import load

    return {
        "plain": load(demo_model_dir, device="cpu", engine="plain"),
        "fast": load(demo_model_dir, device="cpu", engine="fast", context_length=1024),
    }


@pytest.fixture(scope="session")
def demo_slots(demo_model_dir: Path) -> LoadedModel:
    """The demo model's fast engine with four slots, for requests decoded in the same steps."""
    from gptq_chat.loading.loader import load

    return load(demo_model_dir, device="cpu", engine="fast", context_length=512, slots=4)
