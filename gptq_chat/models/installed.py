"""Which models are on disk, and which one the app opens when the user names none."""

from __future__ import annotations

import os
from pathlib import Path

from gptq_chat.models.home import demo_model_dir, models_home

MODEL_ENV = "GPTQ_CHAT_MODEL"
MAX_DEPTH = 3  # models_home/org/name, or models_home/hub-cache/org/name


def installed_models(root: Path | None = None) -> list[Path]:
    """Folders under the models home that hold a config.json (complete or not), the demo model last."""
    root = root or models_home()
    if not root.is_dir():
        return []
    found = []
    for depth in range(1, MAX_DEPTH + 1):
        for config in root.glob("/".join(["*"] * depth) + "/config.json"):
            if not any(part.startswith((".", "_")) for part in config.relative_to(root).parts[:-1]):
                found.append(config.parent)
    demo = demo_model_dir()
    return sorted(found, key=lambda path: (path == demo, str(path)))


def default_model(requested: str | None = None) -> str | None:
    """The user's choice (argument, then $GPTQ_CHAT_MODEL), else the first installed model; None if none."""
    choice = requested or os.environ.get(MODEL_ENV)
    if choice:
        return choice
    models = installed_models()
    return str(models[0]) if models else None
