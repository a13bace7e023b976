"""The built-in demo model, built once per machine (idempotent; a few minutes the first time)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The real GPTQ-Int4 demo model under the models home (`GPTQ_CHAT_HOME` moves it)."""
    from demo_model import build_demo_model

    return build_demo_model()
