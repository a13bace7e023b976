"""Chatting while the disk fills: the store's and the page's scenarios, run in a child by `small_disk`.

Each fills the disk after a first exchange is saved, tries to save a second, looks at what is on the page and in
the file, makes room, and looks again. They return what they saw; the tests judge it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptq_chat.chat.conversations import DB_NAME, ChatRef, ConversationStore, SaveFailed, save_chat
from tests.support.small_disk import Disk

APP = str(Path(__file__).resolve().parents[2] / "app.py")
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


def page_state(at: Any, store: ConversationStore) -> dict[str, Any]:
    """What the page shows (errors, the chat's texts) and holds (its messages), and what its chat has in the file."""
    chat = at.session_state["chat"]
    return {
        "exceptions": [e.value for e in at.exception],
        "errors": [e.value for e in at.error],
        "shown": [m.markdown[0].value for m in at.chat_message if m.markdown],
        "messages": [m["content"] for m in at.session_state["messages"]],
        "saved": saved_texts(store, chat.id),
        "unsaved": chat.unsaved,
    }


def page_on_a_full_disk(disk: Disk, folder: Path) -> dict[str, Any]:
    """The demo model's page (its data in `folder`): a message sent while the disk is full, a rerun still full,
    a rerun with room."""
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    config.set_option("server.address", "127.0.0.1")
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.sidebar.slider(key="temperature").set_value(0.0)
    at.sidebar.slider(key="max_new").set_value(8).run()
    at.chat_input[0].set_value("What is the capital of France?").run()
    store = ConversationStore(folder / DB_NAME)
    disk.fill()
    at.chat_input[0].set_value("And of Italy?").run()
    sent = page_state(at, store)
    at.run()  # any click while the disk is still full
    still_full = page_state(at, store)
    disk.free()
    at.run()  # the next click once there is room
    return {"sent": sent, "still_full": still_full, "room": page_state(at, store)}
