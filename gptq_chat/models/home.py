"""Where the app keeps models and data, in one place so every entry point agrees."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: gptq_chat/models/home.py
DEMO_MODEL_NAME = "SmolLM2-135M-Instruct-GPTQ-Int4"


def models_home() -> Path:
    """The folder that holds downloaded and built models (`GPTQ_CHAT_HOME` overrides `./models`)."""
    return Path(os.environ.get("GPTQ_CHAT_HOME", REPO_ROOT / "models")).expanduser()


def demo_model_dir() -> Path:
    """Where `python download.py --demo` puts the built-in demo model."""
    return models_home() / "demo" / DEMO_MODEL_NAME


def logs_dir() -> Path:
    """Where libraries' own console output goes (gptqmodel's banners, tables and per-layer bars), beside the models."""
    return Path(os.environ.get("GPTQ_CHAT_LOGS", models_home().parent / "logs")).expanduser()


def log_file(name: str) -> Path:
    """`logs_dir()/name.log`, its folder made."""
    folder = logs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.log"
