"""The page's chat history as plain data, and the edits the page's buttons make to it.

A message is a dict: `role` ("user" or "assistant"), `content`, and display-only keys: `stats` (a
`replies.stats_record`), `stopped` (the reply was cut short), `error`, `streaming` (being written;
only while the page runs). Every function here returns or changes plain lists, so it is tested
without a browser.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gptq_chat.chat.attachments import ATTACHMENTS, DOCUMENTS, loaded
from gptq_chat.chat.branches import Node, append
from gptq_chat.chat.think import answer_only

History = list[dict[str, Any]]


def sent_indices(messages: Sequence[dict[str, Any]]) -> list[int]:
    """Positions of the messages the model sees: failed sends and failed replies are left out."""
    return [i for i, m in enumerate(messages) if not m.get("error")]


def sent_history(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the model sees: real exchanges, earlier replies without their `<think>` reasoning, the files attached
    to each question as its `documents`."""
    history: list[dict[str, Any]] = []
    for i in sent_indices(messages):
        message = messages[i]
        if message["role"] == "assistant":
            history.append({"role": "assistant", "content": answer_only(message["content"])})
            continue
        history.append({"role": "user", "content": message["content"]})
        if message.get(ATTACHMENTS):
            history[-1][DOCUMENTS] = [loaded(record) for record in message[ATTACHMENTS]]
    return history


def mark_interrupted(messages: History) -> None:
    """A reply still flagged as streaming when the page runs again was cut short: say so."""
    for message in messages:
        if message.pop("streaming", False):
            message["stopped"] = True


def last_index(messages: Sequence[dict[str, Any]], role: str) -> int | None:
    return next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == role), None)


def can_regenerate(path: Sequence[Node], index: int) -> bool:
    """The message at `index` is a reply (whole, stopped or failed) to the user message before it."""
    return 0 < index < len(path) and path[index]["role"] == "assistant" and path[index - 1]["role"] == "user"


def for_regeneration(path: Sequence[Node], index: int) -> list[Node]:
    """The path to answer again in place of the reply at `index`: up to its question, whose reply becomes a new
    version beside the old one (which stays in the tree)."""
    if not can_regenerate(path, index):
        raise ValueError(f"message {index + 1} is not a reply to a question")
    kept = list(path[:index])
    kept[-1].pop("error", None)  # a message that failed to send gets another chance
    return kept


def with_edit(nodes: list[Node], path: Sequence[Node], index: int, text: str) -> list[Node]:
    """The path after editing the user message at `index`: the edit is a new version beside it (added to `nodes`),
    and what came after the old version stays on the old branch."""
    if not text.strip():
        raise ValueError("an edited message cannot be empty")
    if path[index]["role"] != "user":
        raise ValueError(f"message {index + 1} is not a user message")
    kept = list(path[:index])
    append(nodes, kept, {"role": "user", "content": text})
    return kept


def needs_reply(messages: Sequence[dict[str, Any]]) -> bool:
    """The last message is a user message the model has not answered or failed on."""
    return bool(messages) and messages[-1]["role"] == "user" and not messages[-1].get("error")


@dataclass(frozen=True)
class ContextUse:
    """How full the context window was at the last reply, and how many old messages it left out."""

    used: int
    window: int
    dropped: int

    @property
    def fraction(self) -> float:
        return min(self.used / self.window, 1.0) if self.window else 0.0


def context_use(messages: Sequence[dict[str, Any]], window: int) -> ContextUse | None:
    """From the last reply's statistics: prompt and new tokens against the window it ran with."""
    for message in reversed(messages):
        stats = message.get("stats")
        if message["role"] == "assistant" and stats:
            used = int(stats.get("prompt_tokens", 0)) + int(stats.get("new_tokens", 0))
            return ContextUse(used, int(stats.get("context_length") or window), int(stats.get("dropped_messages", 0)))
    return None


def left_out(messages: Sequence[dict[str, Any]]) -> set[int]:
    """Positions of the messages the last reply did not see (dropped to fit the context window)."""
    reply = last_index(messages, "assistant")
    if reply is None or not messages[reply].get("stats"):
        return set()
    dropped = int(messages[reply]["stats"].get("dropped_messages", 0))
    return set(sent_indices(messages[:reply])[:dropped])


def speeds(messages: Sequence[dict[str, Any]]) -> list[float]:
    """Decode tokens/s of every reply that has statistics, oldest first."""
    return [
        float(m["stats"]["tokens_per_s"])
        for m in messages
        if m["role"] == "assistant" and m.get("stats", {}).get("tokens_per_s")
    ]
