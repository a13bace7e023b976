"""The page's state changes: button and widget callbacks, which Streamlit runs before it draws the page."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import streamlit as st

from gptq_chat.chat.attachments import ATTACHMENTS, read_files, saved
from gptq_chat.chat.branches import append, leaf_of, newest_leaf, path_to, switched
from gptq_chat.chat.conversations import ChatRef, Conversation, ConversationStore, SaveFailed, from_json
from gptq_chat.ui.history import for_regeneration, with_edit
from gptq_chat.ui.presets import CUSTOM, PRESETS, preset_of
from gptq_chat.ui.saving import failure_notice, save_notice, tell

# Per-conversation settings: the widget keys, saved with each chat and restored when it is opened.
SETTING_KEYS = ("preset", "system_prompt", "context_length", "max_new", "temperature", "top_p", "top_k", "penalty")


def after_reply(callback: Callable[..., None]) -> Callable[..., None]:
    """Run a callback that changes the chat only once a reply this tab just stopped has been saved.

    With Streamlit's fastReruns a click stops the running script and starts the next run (callbacks
    first) at once, while the stopped run's thread is still closing its reply.
    """

    @functools.wraps(callback)
    def wrapped(*args: Any, **kwargs: Any) -> None:
        lock = st.session_state.get("stream_lock")
        if lock is None:
            return callback(*args, **kwargs)
        with lock:
            return callback(*args, **kwargs)

    return wrapped


def telling_refusals(callback: Callable[..., None]) -> Callable[..., None]:
    """A callback that changes the store says so, instead of failing the page, when the disk refuses the change."""

    @functools.wraps(callback)
    def wrapped(*args: Any, **kwargs: Any) -> None:
        try:
            callback(*args, **kwargs)
        except SaveFailed as error:
            tell(st.session_state.notices, ("error", f"change_failed:{error}"))

    return wrapped


def chat_settings() -> dict[str, Any]:
    state = st.session_state
    return {key: state[key] for key in SETTING_KEYS if key in state}


@after_reply
def show_conversation(conversation: Conversation | None) -> None:
    """Make `conversation` (None: a new, empty chat) the one this tab shows, with its settings."""
    state = st.session_state
    state.nodes = [dict(n) for n in conversation.nodes] if conversation else []  # every branch
    state.messages = path_to(state.nodes, conversation.leaf) if conversation else []  # the one shown: same dicts
    state.chat = ChatRef(conversation.id, conversation.revision) if conversation else ChatRef()
    state.editing = None
    state.pending = False
    state.found = None
    if conversation:
        for key in SETTING_KEYS:
            if key in conversation.settings:
                state[key] = conversation.settings[key]
        state.saved_settings = chat_settings()


@after_reply
def open_chat(store: ConversationStore, conversation_id: int) -> None:
    conversation = store.get(conversation_id)
    if conversation is None:
        st.session_state.notices.append(("warning", "missing_chat"))
    show_conversation(conversation)


@after_reply
def open_hit(store: ConversationStore, conversation_id: int, message_id: int) -> None:
    """A search result: its chat, on the branch that holds the message found, which the page points out."""
    open_chat(store, conversation_id)
    state = st.session_state
    found = next((node for node in state.nodes if node["id"] == message_id), None)
    if found is None:
        return
    if not any(message is found for message in state.messages):  # on another branch than the one last shown
        state.messages = path_to(state.nodes, newest_leaf(state.nodes, found)["id"])
    state.found = message_id


@after_reply
@telling_refusals
def delete_chat(store: ConversationStore, conversation_id: int) -> None:
    store.delete(conversation_id)
    show_conversation(None)


@telling_refusals
def rename_chat(store: ConversationStore, conversation_id: int) -> None:
    title = st.session_state.get(f"rename_{conversation_id}", "")
    if title.strip():
        store.rename(conversation_id, title)


@after_reply
@telling_refusals
def import_chat(store: ConversationStore, key: str) -> None:
    state = st.session_state
    upload = state.get(key)
    if upload is None:
        return
    try:
        imported = from_json(upload.getvalue())
    except ValueError as error:
        state.notices.append(("error", f"{upload.name}: {error}"))
        return
    show_conversation(store.create(imported.title, imported.messages, imported.settings, imported.leaf))
    state.import_round += 1  # a fresh uploader, so the same file can be imported again
    state.notices.append(("success", f"imported:{imported.title}"))


def persist(store: ConversationStore) -> None:
    """Save this tab's chat (from callbacks and the page, where session state is safe to use)."""
    state = st.session_state
    tell(state.notices, save_notice(store, state.chat, state.nodes, chat_settings(), leaf_of(state.messages)))


def persist_settings(store: ConversationStore) -> None:
    """The open chat's settings, when they changed; a refused save is tried again on the next run."""
    state = st.session_state
    if state.chat.id is None or chat_settings() == state.get("saved_settings"):
        return
    try:
        store.save_settings(state.chat.id, chat_settings())
    except SaveFailed as error:
        tell(state.notices, failure_notice(error))
        return
    state.saved_settings = chat_settings()


@after_reply
def send(store: ConversationStore, max_file_bytes: int) -> None:
    """The chat input's text and files as a new message; a file that gives no text stops the message, says why,
    and puts the text back in the box."""
    state = st.session_state
    value = state.get("chat_text")  # a ChatInputValue: text and files
    text, files = (value.text or "", value.files) if value is not None else ("", [])
    if not text.strip() and not files:
        return
    documents, refused = read_files([(file.name, file.getvalue()) for file in files], max_file_bytes)
    if refused:
        state.notices += [("error", f"file_{r.reason}:{r.name}") for r in refused] + [("warning", "not_sent_file")]
        state.chat_text = text
        return
    message: dict[str, Any] = {"role": "user", "content": text}
    if documents:
        message[ATTACHMENTS] = [saved(document) for document in documents]
    append(state.nodes, state.messages, message)
    state.editing = None
    state.pending = True
    persist(store)


@after_reply
def regenerate(index: int) -> None:
    state = st.session_state
    state.messages = for_regeneration(state.messages, index)
    state.editing = None
    state.pending = True


@after_reply
def start_edit(index: int) -> None:
    state = st.session_state
    state.edit_text = state.messages[index]["content"]
    state.editing = index  # the position of the message being edited (None: none)


@after_reply
def resend(store: ConversationStore) -> None:
    state = st.session_state
    try:
        state.messages = with_edit(state.nodes, state.messages, state.editing, state.get("edit_text", ""))
    except ValueError:
        return
    state.editing = None
    state.pending = True
    persist(store)


def cancel_edit() -> None:
    st.session_state.editing = None


@after_reply
def switch_version(store: ConversationStore, index: int, step: int) -> None:
    """‹ or › under a message: show its previous or next version, and remember it as the branch shown."""
    state = st.session_state
    state.messages = switched(state.nodes, state.messages, index, step)
    state.editing = None
    persist(store)


def request_switch() -> None:
    st.session_state.switch_to = st.session_state.model_pick


def request_kv_cache() -> None:
    st.session_state.switch_kv_cache = st.session_state.kv_cache_pick


def preset_chosen() -> None:
    state = st.session_state
    if state.preset != CUSTOM:
        state.system_prompt = PRESETS[state.preset]


def prompt_edited() -> None:
    state = st.session_state
    state.preset = preset_of(state.system_prompt)
