"""Saving a tab's chat, and what the page tells the user about it: a fork, or a save the disk refused.

A refused save leaves the chat on the page and its `ChatRef` marked unsaved; the page tries again on its next
run (or the next message) and says nothing more once it succeeds. Plain functions: no Streamlit here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gptq_chat.chat.conversations import ChatRef, ConversationStore, SaveFailed, save_chat

Notice = tuple[str, str]  # (st.error/warning/... name, an i18n key or `key:detail`), as page.show_notices draws it


def failure_notice(error: SaveFailed) -> Notice:
    """A refused chat save: a full disk in plain words, any other refusal with SQLite's reason."""
    return ("error", "disk_full") if error.disk_full else ("error", f"not_saved:{error}")


def save_notice(
    store: ConversationStore,
    chat: ChatRef,
    nodes: Sequence[dict[str, Any]],
    settings: dict[str, Any],
    leaf: int | None,
) -> Notice | None:
    """Save the tab's chat (its tree, and the branch shown); the notice the page shows about it, if any."""
    try:
        forked = save_chat(store, chat, nodes, settings, leaf)
    except SaveFailed as error:
        return failure_notice(error)
    return ("warning", "conflict") if forked else None


def tell(notices: list[Notice], notice: Notice | None) -> None:
    """Add a notice once: a refused save is tried again on every run, and one message says so."""
    if notice is not None and notice not in notices:
        notices.append(notice)
