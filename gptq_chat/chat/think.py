"""Split a reply into the model's `<think>…</think>` reasoning and its answer.

Newer Qwen models (Qwen3, QwQ) reason before answering. The page shows the reasoning collapsed and
apart from the answer, and only the answer goes back to the model in later turns (Qwen's advice).
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN = "<think>"
CLOSE = "</think>"


@dataclass(frozen=True)
class Split:
    thinking: str
    answer: str
    thinking_done: bool  # False while the model is still reasoning


def split_think(text: str, final: bool = True) -> Split:
    """Reasoning and answer of a whole or partial reply.

    QwQ-style templates put `<think>` in the prompt, so a reply may carry only the closing tag. While
    streaming (`final=False`) a half-written `<think>` at the start is held back instead of flashing.
    """
    start = text.lstrip()
    if CLOSE in text:
        head, _, tail = text.partition(CLOSE)
        head = head.lstrip()
        if head.startswith(OPEN) or OPEN not in head:
            return Split(head.removeprefix(OPEN).strip(), tail.strip(), True)
    if start.startswith(OPEN):
        return Split(start[len(OPEN) :].strip(), "", False)
    if not final and start and OPEN.startswith(start):
        return Split("", "", False)
    return Split("", text, True)


def answer_only(text: str) -> str:
    """What goes back to the model for an earlier reply: the answer without its reasoning."""
    return split_think(text).answer
