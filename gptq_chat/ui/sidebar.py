"""The sidebar: saved chats, where replies come from, the model and its memory, health, settings, speed."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from gptq_chat.api.remote import RemoteError, RemoteModel, RemoteServer, list_models
from gptq_chat.chat.branches import leaf_of
from gptq_chat.chat.conversations import Conversation, ConversationStore, to_json, to_markdown
from gptq_chat.chat.reply import ChatSettings
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.loading.fit import KV_CACHE_CHOICES, KV_CACHE_HELP
from gptq_chat.loading.gpus import gpu_memory_rows
from gptq_chat.loading.holder import ModelHolder, device_memory, display_name, model_choices
from gptq_chat.loading.loader import LoadedModel, ModelFacts
from gptq_chat.ui.actions import (
    chat_settings,
    delete_chat,
    import_chat,
    open_chat,
    open_hit,
    preset_chosen,
    prompt_edited,
    rename_chat,
    request_kv_cache,
    request_switch,
    show_conversation,
)
from gptq_chat.ui.chat_list import chat_labels, list_title, user_zone
from gptq_chat.ui.i18n import t
from gptq_chat.ui.presets import CUSTOM, DEFAULT, PRESETS, preset_of
from gptq_chat.ui.reply_source import ReplySource, remote_source

LISTED_CHATS = 100
SEARCH_HITS = 30


def conversations_panel(store: ConversationStore, lang: str) -> None:
    state = st.session_state
    bar = st.sidebar
    bar.subheader(t("conversations", lang))
    bar.button(t("new_chat", lang), key="new_chat", icon=":material/add:", on_click=show_conversation, args=(None,))
    query = bar.text_input(
        t("search", lang),
        key="search_text",
        placeholder=t("search", lang),
        label_visibility="collapsed",
        icon=":material/search:",
    )
    if query.strip():
        search_results(store, query, lang)
    summaries = store.summaries()[:LISTED_CHATS]
    listed = (
        bar.container(height=min(320, 40 * len(summaries) + 16), border=False, key="chat_list") if summaries else bar
    )
    labels = chat_labels(summaries, time.time(), user_zone(st.context.timezone), lang)
    for summary, label in zip(summaries, labels, strict=True):
        listed.button(
            label,
            help=summary.title if list_title(summary.title) != summary.title else None,
            key=f"chat_{summary.id}",
            type="primary" if summary.id == state.chat.id else "tertiary",  # the open chat: the selected item
            width="stretch",
            on_click=open_chat,
            args=(store, summary.id),
        )
    conversation_id = state.chat.id
    if conversation_id is not None:
        conversation = store.get(conversation_id)
        if conversation is not None:
            conversation.nodes, conversation.leaf = state.nodes, leaf_of(state.messages)
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


def search_results(store: ConversationStore, query: str, lang: str) -> None:
    """Every message that holds the text, as buttons that open its chat there (title · the words around it)."""
    hits = store.search(query, limit=SEARCH_HITS)
    if not hits:
        st.sidebar.caption(t("no_hits", lang))
        return
    listed = st.sidebar.container(height="content" if len(hits) <= 5 else 320, border=False, key="search_hits")
    for hit in hits:
        listed.button(
            f"{list_title(hit.title)} · {hit.snippet}",
            key=f"hit_{hit.conversation_id}_{hit.message_id}",
            type="tertiary",
            width="stretch",
            on_click=open_hit,
            args=(store, hit.conversation_id, hit.message_id),
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


def facts_caption(facts: ModelFacts, lang: str) -> str:
    """The loaded model's lines under the model picker: device, kernel, live memory, engine, cache and context, and
    for a model over several cards why it is split so."""
    return (
        f"{t('device', lang)}: **{facts.device_name}** · {facts.dtype}  \n"
        f"{t('kernel', lang)}: {facts.kernel_class} ({facts.backend})  \n"
        f"{memory_lines(facts.device, lang)}  \n"
        f"{t('memory', lang)}: {facts.memory_bytes / 2**30:.2f} GiB · "
        f"{t('load_time', lang)}: {facts.load_seconds:.1f} s  \n"
        f"{t('engine', lang)}: {facts.engine}  \n"
        f"{t('kv_cache', lang)}: {facts.kv_cache} · {t('context', lang)}: {facts.default_context:,} tokens"
        + (f"  \n{t('prefix_cache', lang)}: {facts.prefix_cache:,} tokens" if facts.prefix_cache else "")
        + (f"  \n{t('split_reason', lang)}: {facts.split_reason}" if facts.split_reason else "")
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
    bar.caption(facts_caption(loaded.facts, lang), help=loaded.facts.kernel_reason)
    state.kv_cache_pick = holder.options.get("kv_cache", "auto")
    bar.selectbox(
        t("kv_cache_pick", lang),
        KV_CACHE_CHOICES,
        key="kv_cache_pick",
        on_change=request_kv_cache,
        help=KV_CACHE_HELP,
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
