"""The chat page. It only renders: prompts, generation, storage and history edits live in plain modules.

Streamlit runs `app.py`, which calls `main()` here on every rerun; `python app.py` starts it (`launch.py`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import streamlit as st

from gptq_chat.api.access import PASSWORD_ENV, WRONG_PASSWORD_DELAY_S, exposure_problem, secret_matches
from gptq_chat.chat.conversations import DB_NAME, ChatRef, ConversationStore, data_dir
from gptq_chat.chat.documents import SUPPORTED_EXTENSIONS
from gptq_chat.loading.checkpoint import CheckpointError
from gptq_chat.loading.holder import ModelHolder, SwitchRefused, display_name
from gptq_chat.loading.kernels import KernelError
from gptq_chat.loading.loader import LoadedModel
from gptq_chat.loading.options import load_options
from gptq_chat.models.installed import default_model
from gptq_chat.ui.actions import persist, persist_settings, send, show_conversation
from gptq_chat.ui.conversation import answer, context_meter, conversation_view
from gptq_chat.ui.history import mark_interrupted, needs_reply
from gptq_chat.ui.i18n import LANGUAGES, TEXT, pick_language, t
from gptq_chat.ui.launch import parse_args
from gptq_chat.ui.reply_source import local_source
from gptq_chat.ui.sidebar import (
    backend_panel,
    conversations_panel,
    health_panel,
    model_panel,
    remote_panel,
    settings_panel,
    speed_panel,
)

LOAD_ERRORS = (CheckpointError, KernelError, RuntimeError, OSError, ValueError)
# A list reads down its left edge: chat titles start there, as in every chat app.
PAGE_CSS = (
    "<style>.st-key-chat_list button, .st-key-chat_list button > div, .st-key-search_hits button,"
    " .st-key-search_hits button > div {justify-content: flex-start; text-align: left;}"
    "</style>"
)


@st.cache_resource(show_spinner=False)
def model_holder(reference: str | None, options: dict[str, Any]) -> ModelHolder:
    """One per process: every tab shares the model (and its scheduler); `options` are the loader's, from the flags."""
    return ModelHolder(reference, **options)


@st.cache_resource(show_spinner=False)
def conversation_store(path: str) -> ConversationStore:
    return ConversationStore(Path(path))


def progress_bar(slot: Any):
    def report(message: str, fraction: float) -> None:
        slot.progress(min(max(fraction, 0.0), 1.0), text=message)

    return report


def access_granted(password: str | None, lang: str) -> bool:
    """No password: open (loopback only). Otherwise each tab logs in once."""
    state = st.session_state
    problem = exposure_problem(st.get_option("server.address"), password)
    if problem:
        st.error(problem)
        return False
    if not password or state.get("authenticated"):
        return True
    st.info(t("password_needed", lang))
    with st.form("login"):
        given = st.text_input(t("password", lang), type="password", key="password_given")
        submitted = st.form_submit_button(t("log_in", lang), type="primary")
    if submitted:
        if secret_matches(given, password):
            state.authenticated = True
            st.rerun()
        time.sleep(WRONG_PASSWORD_DELAY_S)
        st.error(t("wrong_password", lang))
    return False


def start_session(store: ConversationStore) -> None:
    """Every run: this tab's defaults; on its first run, the chat in the address (a reload) or a new one."""
    state = st.session_state
    for key, value in {"notices": [], "session_speeds": [], "import_round": 0, "editing": None}.items():
        state.setdefault(key, value)
    state.setdefault("pending", False)
    if "messages" not in state:
        wanted = st.query_params.get("chat")
        show_conversation(store.get(int(wanted)) if wanted and wanted.isdigit() else None)
    state.setdefault("chat", ChatRef())
    state.setdefault("stream_lock", threading.RLock())  # held while a reply streams and saves


def load_model(holder: ModelHolder, lang: str) -> LoadedModel | None:
    """Switch first if asked (freeing the old model before loading), then the model every tab shares."""
    state = st.session_state
    slot = st.empty()
    target = state.pop("switch_to", None)
    kv_cache = state.pop("switch_kv_cache", None)
    try:
        if (target and target != holder.reference) or (kv_cache and holder.reference):
            target = target or holder.reference
            slot.info(f"{t('switching', lang)} {display_name(target)}…")
            changes = {"kv_cache": kv_cache} if kv_cache else {}
            try:
                holder.switch(target, progress=progress_bar(slot), **changes)
            except SwitchRefused as refusal:
                state.notices.append(("error", f"{t('switch_refused', lang)}: {refusal}"))
        elif holder.reference is None:
            slot.info(t("building_demo", lang))
        loaded = holder.get(progress=progress_bar(slot))
    except LOAD_ERRORS as error:
        slot.empty()
        st.error(f"{t('load_failed', lang)}: {error}")
        return None
    slot.empty()
    return loaded


def show_notices(lang: str) -> None:
    """One-time messages from callbacks and finished replies: a text key, `key:detail`, or plain text.

    A run that goes on to write a reply reruns the page when the reply ends: its notices are kept for that run, or
    they would vanish with the reply's first token."""
    state = st.session_state
    for kind, text in state.notices:
        key, _, detail = text.partition(":")
        message = (f"{t(key, lang)}: {detail}" if detail else t(key, lang)) if key in TEXT else text
        getattr(st, kind)(message)
    if not reply_due():
        state.notices = []


def reply_due() -> bool:
    """Whether this run writes a reply: a message was sent (or a reply asked for) and has none yet."""
    state = st.session_state
    return state.pending and needs_reply(state.messages)


def main() -> None:
    args = parse_args(sys.argv[1:])
    st.set_page_config(page_title="Qwen GPTQ Chat", page_icon="💬", initial_sidebar_state="expanded")
    state = st.session_state
    state.setdefault("language", pick_language(st.context.locale))
    lang = st.sidebar.radio(
        t("language", state.language), list(LANGUAGES), format_func=LANGUAGES.get, key="language", horizontal=True
    )
    st.html(PAGE_CSS)
    st.title(t("title", lang))
    st.caption(t("caption", lang))
    if not access_granted(args.password or os.environ.get(PASSWORD_ENV), lang):
        st.stop()

    store = conversation_store(str(data_dir() / DB_NAME))
    start_session(store)
    with state.stream_lock:  # a reply this tab just stopped is still saving in the stopped run's thread
        mark_interrupted(state.messages)
        if state.chat.unsaved:  # the disk refused the last save: try again now
            persist(store)
    if state.chat.id is not None:
        st.query_params["chat"] = str(state.chat.id)  # a reload reopens this chat
    else:
        st.query_params.pop("chat", None)

    conversations_panel(store, lang)
    server = backend_panel(lang)
    if server is None:
        holder = model_holder(default_model(args.model), load_options(args))
        loaded = load_model(holder, lang)
        model_panel(holder, loaded, lang)
        health_panel(holder.reference, lang)
        source = local_source(loaded) if loaded is not None else None
    else:
        source = remote_panel(server, lang)
    show_notices(lang)
    if source is None:
        conversation_view(store, lang, busy=True)
        st.stop()

    settings = settings_panel(source, lang)
    persist_settings(store)
    speed_panel(lang)
    context_meter(settings.context_length, lang)

    st.chat_input(
        t("input_placeholder", lang),
        key="chat_text",
        accept_file="multiple",
        file_type=list(SUPPORTED_EXTENSIONS),
        max_upload_size=args.max_file_mb,
        on_submit=send,
        args=(store, args.max_file_mb * 2**20),
    )
    pending = reply_due()
    conversation_view(store, lang, busy=pending)
    if pending:
        answer(source, settings, store, lang)
