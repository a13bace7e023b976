"""System-prompt presets: common starting points; the page names them in the user's language."""

from __future__ import annotations

DEFAULT = "default"
CUSTOM = "custom"

PRESETS: dict[str, str] = {
    DEFAULT: "You are a helpful assistant.",
    "concise": "You are a helpful assistant. Answer briefly and directly, in the language of the question.",
    "coder": (
        "You are an expert programmer. Answer with correct, idiomatic code in fenced code blocks that name "
        "the language, followed by a short explanation."
    ),
    "translator": (
        "You are a professional translator. Translate the user's text from Chinese into English, or from any "
        "other language into Chinese. Reply with the translation only."
    ),
    "math": (
        "You are a careful math tutor. Reason step by step and write every formula in LaTeX: $...$ inline "
        "and $$...$$ on its own line."
    ),
    "chinese": "你是一个乐于助人的助手。请始终用简体中文回答。",
}


def preset_of(system_prompt: str) -> str:
    """Which preset a system prompt is, or CUSTOM once the user has edited it."""
    return next((key for key, text in PRESETS.items() if text == system_prompt.strip()), CUSTOM)
