"""The built-in demo model, built once per machine (idempotent; a few minutes the first time), and served."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from gptq_chat.api.protocol import ServedModel


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
