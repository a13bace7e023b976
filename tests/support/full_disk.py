"""Chatting while the disk fills: the store's scenario, run in a child by `small_disk`.

Each fills the disk after a first exchange is saved, tries to save a second, looks at what is on the page and in
the file, makes room, and looks again. They return what they saw; the tests judge it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptq_chat.chat.conversations import DB_NAME, ChatRef, ConversationStore, SaveFailed, save_chat
from tests.support.small_disk import Disk

REPLY = "Paris is the capital of France. " * 256  # 8 KB: a save needs new pages in the file


def exchange(number: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Question {number}"}, {"role": "assistant", "content": f"{number}. {REPLY}"}]


def saved_texts(store: ConversationStore, chat_id: int | None) -> list[str]:
    conversation = store.get(chat_id) if chat_id is not None else None
    return [m["content"] for m in conversation.messages] if conversation else []


def integrity(store: ConversationStore) -> str:
    with store.connect() as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def store_on_a_full_disk(disk: Disk, folder: Path) -> dict[str, Any]:
    """save_chat on a full disk, then again once there is room; reads and integrity checks in between."""
    store = ConversationStore(folder / DB_NAME)
    chat = ChatRef()
    save_chat(store, chat, exchange(1), {})
    disk.fill()
    both = exchange(1) + exchange(2)
    try:
        save_chat(store, chat, both, {})
        refusal = None
    except SaveFailed as error:
        refusal = {"disk_full": error.disk_full, "message": str(error)}
    try:
        store.create("another chat", exchange(3))
        new_chat_refused = False
    except SaveFailed:
        new_chat_refused = True
    full = {"saved": saved_texts(store, chat.id), "integrity": integrity(store), "unsaved": chat.unsaved}
    disk.free()
    save_chat(store, chat, both, {})  # the same call as before: it writes everything now
    reopened = ConversationStore(folder / DB_NAME)  # what an app restart sees
    later = {"saved": saved_texts(reopened, chat.id), "integrity": integrity(reopened), "unsaved": chat.unsaved}
    chats = len(reopened.summaries())
    return {"refusal": refusal, "new_chat_refused": new_chat_refused, "full": full, "later": later, "chats": chats}
