"""The chat page. It only renders: prompts, generation, storage and history edits live in plain modules.

Streamlit runs `app.py`, which calls `main()` here on every rerun; `python app.py` starts it (`launch.py`).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from gptq_chat.api.access import PASSWORD_ENV, WRONG_PASSWORD_DELAY_S, exposure_problem, secret_matches
from gptq_chat.api.remote import RemoteError, RemoteModel, RemoteServer, list_models
from gptq_chat.chat.conversations import (
    DB_NAME,
    ChatRef,
    Conversation,
    ConversationStore,
    data_dir,
    from_json,
    save_chat,
    to_json,
    to_markdown,
)
from gptq_chat.chat.prompt import PromptTooLong
from gptq_chat.chat.reply import ChatSettings
from gptq_chat.chat.think import split_think
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.loading.checkpoint import CheckpointError
from gptq_chat.loading.gpus import gpu_memory_rows
from gptq_chat.loading.holder import ModelHolder, SwitchRefused, device_memory, display_name, model_choices
from gptq_chat.loading.kernels import KernelError
from gptq_chat.loading.loader import LoadedModel
from gptq_chat.loading.options import load_options
from gptq_chat.models.installed import default_model
from gptq_chat.ui.history import (
    can_regenerate,
    context_use,
    last_index,
    left_out,
    mark_interrupted,
    needs_reply,
    sent_history,
    with_edited_last_user,
    without_last_reply,
)
from gptq_chat.ui.i18n import LANGUAGES, TEXT, context_line, pick_language, stats_line, t
from gptq_chat.ui.launch import parse_args
from gptq_chat.ui.presets import CUSTOM, DEFAULT, PRESETS, preset_of
from gptq_chat.ui.rendering import to_markdown as markdown_of
from gptq_chat.ui.replies import stream_into, wait_turn
from gptq_chat.ui.reply_source import ReplySource, local_source, remote_source

LOAD_ERRORS = (CheckpointError, KernelError, RuntimeError, OSError, ValueError)
# Per-conversation settings: the widget keys, saved with each chat and restored when it is opened.
SETTING_KEYS = ("preset", "system_prompt", "context_length", "max_new", "temperature", "top_p", "top_k", "penalty")
LISTED_CHATS = 100
LIST_TITLE_CHARS = 26  # one line of the sidebar
# A list reads down its left edge: chat titles start there, as in every chat app.
PAGE_CSS = (
    "<style>.st-key-chat_list button, .st-key-chat_list button > div {justify-content: flex-start; text-align: left;}"
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


# -- state changes (button callbacks run before the page is drawn) ---------------------------------------


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


def chat_settings() -> dict[str, Any]:
    state = st.session_state
    return {key: state[key] for key in SETTING_KEYS if key in state}


@after_reply
def show_conversation(conversation: Conversation | None) -> None:
    """Make `conversation` (None: a new, empty chat) the one this tab shows, with its settings."""
    state = st.session_state
    state.messages = [dict(m) for m in conversation.messages] if conversation else []
    state.chat = ChatRef(conversation.id, conversation.revision) if conversation else ChatRef()
    state.editing = False
    state.pending = False
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
def delete_chat(store: ConversationStore, conversation_id: int) -> None:
    store.delete(conversation_id)
    show_conversation(None)


def rename_chat(store: ConversationStore, conversation_id: int) -> None:
    title = st.session_state.get(f"rename_{conversation_id}", "")
    if title.strip():
        store.rename(conversation_id, title)


@after_reply
def import_chat(store: ConversationStore, key: str) -> None:
    state = st.session_state
    upload = state.get(key)
    if upload is None:
        return
    try:
        title, messages, settings = from_json(upload.getvalue())
    except ValueError as error:
        state.notices.append(("error", f"{upload.name}: {error}"))
        return
    show_conversation(store.create(title, messages, settings))
    state.import_round += 1  # a fresh uploader, so the same file can be imported again
    state.notices.append(("success", f"imported:{title}"))


def persist(store: ConversationStore) -> None:
    """Save this tab's chat (from callbacks and the page, where session state is safe to use)."""
    state = st.session_state
    if save_chat(store, state.chat, state.messages, chat_settings()):
        state.notices.append(("warning", "conflict"))


@after_reply
def send(store: ConversationStore) -> None:
    state = st.session_state
    text = state.get("chat_text") or ""
    if not text.strip():
        return
    state.messages.append({"role": "user", "content": text})
    state.editing = False
    state.pending = True
    persist(store)


@after_reply
def regenerate() -> None:
    state = st.session_state
    state.messages = without_last_reply(state.messages)
    state.pending = True


@after_reply
def start_edit() -> None:
    state = st.session_state
    index = last_index(state.messages, "user")
    if index is not None:
        state.edit_text = state.messages[index]["content"]
        state.editing = True


@after_reply
def resend(store: ConversationStore) -> None:
    state = st.session_state
    try:
        state.messages = with_edited_last_user(state.messages, state.get("edit_text", ""))
    except ValueError:
        return
    state.editing = False
    state.pending = True
    persist(store)


def cancel_edit() -> None:
    st.session_state.editing = False


def request_switch() -> None:
    st.session_state.switch_to = st.session_state.model_pick


def preset_chosen() -> None:
    state = st.session_state
    if state.preset != CUSTOM:
        state.system_prompt = PRESETS[state.preset]


def prompt_edited() -> None:
    state = st.session_state
    state.preset = preset_of(state.system_prompt)


# -- access ------------------------------------------------------------------------------------------------


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


# -- sidebar ------------------------------------------------------------------------------------------------


def conversations_panel(store: ConversationStore, lang: str) -> None:
    state = st.session_state
    bar = st.sidebar
    bar.subheader(t("conversations", lang))
    bar.button(t("new_chat", lang), key="new_chat", icon=":material/add:", on_click=show_conversation, args=(None,))
    summaries = store.summaries()[:LISTED_CHATS]
    listed = (
        bar.container(height=min(320, 40 * len(summaries) + 16), border=False, key="chat_list") if summaries else bar
    )
    for summary in summaries:
        current = summary.id == state.chat.id
        listed.button(
            summary.title if len(summary.title) <= LIST_TITLE_CHARS else summary.title[: LIST_TITLE_CHARS - 1] + "…",
            help=summary.title if len(summary.title) > LIST_TITLE_CHARS else None,
            key=f"chat_{summary.id}",
            type="secondary" if current else "tertiary",
            icon=":material/chat:" if current else None,
            width="stretch",
            on_click=open_chat,
            args=(store, summary.id),
        )
    conversation_id = state.chat.id
    if conversation_id is not None:
        conversation = store.get(conversation_id)
        if conversation is not None:
            conversation.messages = state.messages
            conversation.settings = chat_settings()
            chat_actions(store, conversation, lang)
    with bar.expander(t("import", lang), icon=":material/upload:"):
        key = f"import_{state.import_round}"
        st.file_uploader(
            t("import", lang),
            type=["json"],
            key=key,
            on_change=import_chat,
            args=(store, key),
            label_visibility="collapsed",
        )


def chat_actions(store: ConversationStore, conversation: Conversation, lang: str) -> None:
    """Rename, export and delete the chat on screen."""
    row = st.sidebar.container(horizontal=True, gap="small")
    with row.popover("", icon=":material/edit:", help=t("rename", lang)):
        st.text_input(t("title_label", lang), value=conversation.title, key=f"rename_{conversation.id}")
        st.button(t("save", lang), key="rename_save", on_click=rename_chat, args=(store, conversation.id))
    with row.popover("", icon=":material/download:", help=t("export", lang)):
        labels = {role: t(f"{role}_label", lang) for role in ("user", "assistant", "system")}
        stem = f"chat-{conversation.id}"
        st.download_button(
            t("export_md", lang),
            to_markdown(conversation, labels),
            f"{stem}.md",
            "text/markdown",
            key="export_md",
            on_click="ignore",
        )
        st.download_button(
            t("export_json", lang), to_json(conversation), f"{stem}.json", "application/json", key="export_json"
        )
    with row.popover("", icon=":material/delete:", help=t("delete", lang)):
        st.button(
            t("delete_confirm", lang),
            key="delete_chat",
            type="primary",
            on_click=delete_chat,
            args=(store, conversation.id),
        )


def backend_panel(lang: str) -> RemoteServer | None:
    """Where replies come from: this computer (None), or the OpenAI-compatible server whose address is given."""
    bar = st.sidebar
    bar.subheader(t("model", lang))
    choice = bar.radio(
        t("backend", lang),
        ["local", "remote"],
        format_func=lambda key: t(f"backend_{key}", lang),
        key="backend",
        horizontal=True,
    )
    if choice == "local":
        return None
    url = bar.text_input(t("server_url", lang), key="remote_url", placeholder="http://127.0.0.1:8000/v1")
    key = bar.text_input(t("api_key", lang), key="remote_key", type="password")
    return RemoteServer(url, key)


@st.cache_data(ttl=30, show_spinner=False)
def remote_models(base_url: str, api_key: str) -> list[RemoteModel]:
    """The server's models, asked at most every 30 s (a failure is not cached: the next run asks again)."""
    return list_models(RemoteServer(base_url, api_key))


def remote_panel(server: RemoteServer, lang: str) -> ReplySource | None:
    """The server's model picker; None (with the reason shown) while there is nothing to chat with."""
    bar = st.sidebar
    if not server.base_url.strip():
        bar.info(t("server_hint", lang))
        return None
    try:
        models = remote_models(server.base_url, server.api_key)
    except RemoteError as error:
        bar.error(f"{t('server_failed', lang)}: {error}")
        return None
    if not models:
        bar.error(t("server_no_models", lang))
        return None
    model = bar.selectbox(t("model", lang), models, format_func=lambda m: m.id, key="remote_model")
    window = f" · {model.context_length:,} {t('tokens', lang)}" if model.context_length else ""
    bar.caption(f"{t('server', lang)}: {server.url}{window}")
    return remote_source(server, model)


def memory_lines(device: str, lang: str) -> str:
    """Live memory: a line per GPU (every visible card: a split model uses several), else the RAM."""
    if device.startswith("cuda"):
        rows = gpu_memory_rows()
        return "  \n".join(
            f"{row.gpu} VRAM: {row.used} {t('used', lang)} · {row.free} {t('free', lang)} ({t('of_total', lang)} "
            f"{row.total})"
            for row in rows
        )
    memory = device_memory(device)
    return (
        f"{memory.kind}: {memory.used / 2**30:.2f} GiB {t('used', lang)} · "
        f"{memory.free / 2**30:.2f} GiB {t('free', lang)} ({t('of_total', lang)} {memory.total / 2**30:.1f} GiB)"
    )


def model_panel(holder: ModelHolder, loaded: LoadedModel | None, lang: str) -> None:
    """The model picker, then what runs it and the device's memory, live."""
    state = st.session_state
    bar = st.sidebar
    current = Path(holder.reference) if holder.reference else None
    options = [str(path) for path in model_choices(current)]
    if options:
        state.model_pick = str(current) if current is not None else options[0]
        bar.selectbox(
            t("switch_model", lang),
            options,
            format_func=display_name,
            key="model_pick",
            on_change=request_switch,
            label_visibility="collapsed",
        )
    if loaded is None:
        return
    facts = loaded.facts
    bar.caption(
        f"{t('device', lang)}: **{facts.device_name}** · {facts.dtype}  \n"
        f"{t('kernel', lang)}: {facts.kernel_class} ({facts.backend})  \n"
        f"{memory_lines(facts.device, lang)}  \n"
        f"{t('memory', lang)}: {facts.memory_bytes / 2**30:.2f} GiB · "
        f"{t('load_time', lang)}: {facts.load_seconds:.1f} s  \n"
        f"{t('engine', lang)}: {facts.engine}",
        help=facts.kernel_reason,
    )


@st.cache_data(ttl=300, show_spinner=False)
def health_checks(model: str | None) -> list[tuple[str, str, str, str]]:
    """The environment doctor's checks (1-2 s: it runs nvidia-smi and nvcc), at most every five minutes."""
    try:
        from gptq_chat.doctor import checks as doctor
    except ImportError:  # the doctor is optional: without it there is no panel
        return []
    try:
        return [(c.status, c.name, c.message, c.fix) for c in doctor.run_checks(model=model)]
    except Exception as error:  # the panel must never take the page down
        return [("⚠", "doctor", f"{type(error).__name__}: {error}", "")]


def health_panel(model: str | None, lang: str) -> None:
    checks = health_checks(model)
    if not checks:
        return
    worst = next((mark for mark in ("✗", "⚠") if any(c[0] == mark for c in checks)), "✓")
    with st.sidebar.expander(f"{t('health', lang)} {worst}", icon=":material/health_and_safety:"):
        for status, name, message, fix in checks:
            st.markdown(f"{status} **{name}** {message}")
            if fix:
                st.caption(fix)


def settings_panel(source: ReplySource, lang: str) -> ChatSettings:
    """Sidebar widgets; their values are exactly what the next reply uses, and are saved with the chat."""
    state = st.session_state
    defaults = source.defaults
    max_context = max(source.max_context, 256)
    state.setdefault("system_prompt", PRESETS[DEFAULT])
    state.setdefault("preset", preset_of(state.system_prompt))
    state.setdefault("context_length", min(source.default_context, max_context) // 256 * 256 or 256)
    state.context_length = min(max(int(state.context_length), 256), max_context)  # another model may be smaller
    max_new_limit = max(min(4096, state.context_length - 64), 1)
    state.setdefault("max_new", min(512, state.context_length // 2))
    state.max_new = min(max(int(state.max_new), 1), max_new_limit)
    state.setdefault("temperature", defaults.temperature)
    state.setdefault("top_p", defaults.top_p)
    state.setdefault("top_k", defaults.top_k)
    state.setdefault("penalty", defaults.repetition_penalty)

    with st.sidebar.expander(t("settings", lang), icon=":material/tune:"):
        st.selectbox(
            t("preset", lang),
            [*PRESETS, CUSTOM],
            format_func=lambda key: t(f"preset_{key}", lang),
            key="preset",
            on_change=preset_chosen,
        )
        st.text_area(t("system_prompt", lang), key="system_prompt", on_change=prompt_edited)
        if source.shortens_history:
            context = st.slider(t("context_length", lang), 256, max_context, step=256, key="context_length")
        else:  # the server fits the prompt to its own window (or refuses it)
            context = source.max_context
        max_new = st.slider(t("max_new_tokens", lang), 1, max_new_limit, key="max_new")
        temperature = st.slider(t("temperature", lang), 0.0, 2.0, step=0.05, key="temperature")
        top_p = st.slider(t("top_p", lang), 0.05, 1.0, step=0.05, key="top_p")
        top_k = st.slider(t("top_k", lang), 0, 200, key="top_k")
        penalty = st.slider(t("repetition_penalty", lang), 1.0, 2.0, step=0.01, key="penalty")
    sampling = SamplingSettings(
        max_new_tokens=max_new,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=penalty,
        stop_token_ids=defaults.stop_token_ids,
    )
    return ChatSettings(sampling=sampling, system_prompt=state.system_prompt, context_length=context)


def speed_panel(lang: str) -> None:
    speeds = st.session_state.session_speeds
    if not speeds:
        return
    st.sidebar.subheader(t("performance", lang))
    st.sidebar.line_chart({t("tokens_per_s", lang): speeds}, height=140, x_label=t("reply_number", lang), y_label=None)


# -- the conversation -------------------------------------------------------------------------------------


def context_meter(window: int, lang: str) -> None:
    use = context_use(st.session_state.messages, window)
    if use is None:
        return
    st.progress(use.fraction, text=context_line(use.used, use.window, use.dropped, lang))


def show_thinking(thinking: str, lang: str) -> None:
    with st.expander(t("thought", lang), icon=":material/psychology:"):
        st.markdown(markdown_of(thinking))


def render_message(message: dict, index: int, lang: str) -> None:
    """A saved message: reasoning collapsed, the answer, then why it is incomplete and its statistics."""
    if message["role"] == "assistant":
        split = split_think(message["content"])
        if split.thinking:
            show_thinking(split.thinking, lang)
        st.container(key=f"answer_{index}").markdown(markdown_of(split.answer))
    else:
        st.markdown(message["content"])
    if message.get("error"):
        st.error(message["error"])
    if message.get("stopped"):
        st.caption(t("stopped", lang))
    if message.get("stats"):
        st.caption(stats_line(message["stats"], lang))


def copy_box(message: dict, index: int, lang: str) -> None:
    """st.code carries a copy-to-clipboard button; the popover keeps it out of the way."""
    with st.popover(t("copy", lang), icon=":material/content_copy:", key=f"copy_{index}"):
        st.code(split_think(message["content"]).answer, language="markdown", wrap_lines=True)


def edit_box(store: ConversationStore, lang: str) -> None:
    st.text_area(t("edit_label", lang), key="edit_text")
    row = st.container(horizontal=True)
    row.button(t("resend", lang), key="resend", type="primary", on_click=resend, args=(store,))
    row.button(t("cancel", lang), key="cancel_edit", on_click=cancel_edit)


def conversation_view(store: ConversationStore, lang: str, busy: bool) -> None:
    """The history, with Edit under the last question and Copy/Regenerate under the answers."""
    state = st.session_state
    messages = state.messages
    hidden = left_out(messages)
    last_user = last_index(messages, "user")
    with st.chat_message("assistant"):
        st.markdown(t("greeting", lang))  # shown, never sent to the model
    for index, message in enumerate(messages):
        with st.chat_message(message["role"]):
            if index in hidden:
                st.caption(t("left_out", lang))
            if index == last_user and state.editing:
                edit_box(store, lang)
                continue
            render_message(message, index, lang)
            if busy:
                continue
            row = st.container(horizontal=True, gap="small")
            with row:
                if message["role"] == "assistant":
                    copy_box(message, index, lang)
                    if index == len(messages) - 1 and can_regenerate(messages):
                        icon = ":material/refresh:"
                        st.button(t("regenerate", lang), key="regenerate", icon=icon, on_click=regenerate)
                elif index == last_user:
                    st.button(t("edit", lang), key="edit", icon=":material/edit:", on_click=start_edit)


class LiveReply:
    """Draws a reply while it streams: reasoning in a collapsed box, the answer below it."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.thinking_box = st.container()
        self.answer = st.container(key="live_answer").empty()
        self.status: Any = None
        self.thought_shown = False

    def show(self, text: str, final: bool) -> None:
        split = split_think(text, final=final)
        if split.thinking or not split.thinking_done:
            if self.status is None:
                self.status = self.thinking_box.status(t("thinking", self.lang), expanded=False)
                self.thinking = self.status.empty()
            self.thinking.markdown(markdown_of(split.thinking, streaming=not final))
            if split.thinking_done and not self.thought_shown:
                self.status.update(label=t("thought", self.lang), state="complete")
                self.thought_shown = True
        self.answer.markdown(markdown_of(split.answer, streaming=not final) + ("" if final else " ▌"))


def answer(source: ReplySource, settings: ChatSettings, store: ConversationStore, lang: str) -> None:
    """Stream a reply into the history; Stop (or any click) keeps the partial text, marked stopped."""
    state = st.session_state
    state.pending = False
    messages = state.messages
    try:
        reply = source.start(sent_history(messages), settings)
    except PromptTooLong as error:
        messages[-1]["error"] = f"{t('too_long', lang)}: {error}"
        persist(store)
        st.error(messages[-1]["error"])
        return
    entry: dict[str, Any] = {"role": "assistant", "content": ""}
    messages.append(entry)
    # What the reply's end needs, taken now: with fastReruns a click stops this run (every later
    # session-state access raises StopException) while the next run already starts.
    chat, notices, speeds, settings_now = state.chat, state.notices, state.session_speeds, chat_settings()
    with state.stream_lock, st.chat_message("assistant"):
        stop = st.empty()
        stop.button(t("stop", lang), key="stop", icon=":material/stop_circle:", shortcut="Escape")
        waiting = st.empty()

        def wait() -> None:
            if source.queue is None:
                return
            icon = ":material/hourglass_top:"
            wait_turn(source.queue, lambda s: waiting.info(f"{t('waiting', lang)} ({s:.0f} s)", icon=icon))
            waiting.empty()

        def finish() -> None:
            if save_chat(store, chat, messages, settings_now):
                notices.append(("warning", "conflict"))
            if entry["stats"]["tokens_per_s"]:
                speeds.append(entry["stats"]["tokens_per_s"])

        view = LiveReply(lang)
        stream_into(
            entry,
            reply,
            view.show,
            context_length=settings.context_length,
            model=source.name,
            wait=wait,
            finish=finish,
        )
        stop.empty()
    st.rerun()  # draw the finished reply with its buttons and statistics


# -- the page ---------------------------------------------------------------------------------------------


def start_session(store: ConversationStore) -> None:
    """Every run: this tab's defaults; on its first run, the chat in the address (a reload) or a new one."""
    state = st.session_state
    for key, value in {"notices": [], "session_speeds": [], "import_round": 0, "editing": False}.items():
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
    try:
        if target and target != holder.reference:
            slot.info(f"{t('switching', lang)} {display_name(target)}…")
            try:
                holder.switch(target, progress=progress_bar(slot))
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
    """One-time messages from callbacks and finished replies: a text key, `key:detail`, or plain text."""
    for kind, text in st.session_state.notices:
        key, _, detail = text.partition(":")
        message = (f"{t(key, lang)}: {detail}" if detail else t(key, lang)) if key in TEXT else text
        getattr(st, kind)(message)
    st.session_state.notices = []


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
    if state.chat.id is not None and chat_settings() != state.get("saved_settings"):
        store.save_settings(state.chat.id, chat_settings())
        state.saved_settings = chat_settings()
    speed_panel(lang)
    context_meter(settings.context_length, lang)

    st.chat_input(t("input_placeholder", lang), key="chat_text", on_submit=send, args=(store,))
    pending = state.pending and needs_reply(state.messages)
    conversation_view(store, lang, busy=pending)
    if pending:
        answer(source, settings, store, lang)
