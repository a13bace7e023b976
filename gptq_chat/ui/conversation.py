"""The conversation on the page: the history with its buttons, and a reply drawn while it streams."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st
import streamlit.components.v1 as components

from gptq_chat.chat.attachments import ATTACHMENTS, chip, preview
from gptq_chat.chat.branches import append, version_of
from gptq_chat.chat.conversations import ConversationStore
from gptq_chat.chat.prompt import PromptTooLong
from gptq_chat.chat.reply import ChatSettings
from gptq_chat.chat.think import split_think
from gptq_chat.ui.actions import (
    cancel_edit,
    chat_settings,
    persist,
    regenerate,
    resend,
    start_edit,
    switch_version,
)
from gptq_chat.ui.history import can_regenerate, context_use, left_out, sent_history
from gptq_chat.ui.i18n import chip_line, context_line, sources_line, stats_line, t
from gptq_chat.ui.rendering import to_markdown as markdown_of
from gptq_chat.ui.replies import stream_into, wait_turn
from gptq_chat.ui.reply_source import ReplySource
from gptq_chat.ui.saving import save_notice, tell

PREVIEW_CHARS = 2000  # of an attached file's text, in its chip's preview


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
        attachment_chips(message.get(ATTACHMENTS) or (), index, lang)
        st.markdown(message["content"])
    if message.get("error"):
        st.error(message["error"])
    if message.get("stopped"):
        st.caption(t("stopped", lang))
    if message.get("stats"):
        if message["stats"].get("sources"):
            st.caption(f":material/description: {sources_line(message['stats']['sources'], lang)}")
        st.caption(stats_line(message["stats"], lang))


def attachment_chips(records: Sequence[dict[str, Any]], index: int, lang: str) -> None:
    """Each file attached to a message: name, pages, about how many tokens; its text in a preview."""
    if not records:
        return
    with st.container(horizontal=True, gap="small", key=f"attachments_{index}"):
        for number, record in enumerate(records):
            name, pages, tokens = chip(record)
            with st.popover(
                chip_line(name, pages, tokens, lang), icon=":material/description:", key=f"chip_{index}_{number}"
            ):
                st.caption(t("preview", lang))
                st.text(preview(record, PREVIEW_CHARS))


def copy_box(message: dict, index: int, lang: str) -> None:
    """st.code carries a copy-to-clipboard button; the popover keeps it out of the way."""
    with st.popover(t("copy", lang), icon=":material/content_copy:", key=f"copy_{index}"):
        st.code(split_think(message["content"]).answer, language="markdown", wrap_lines=True)


def edit_box(store: ConversationStore, lang: str) -> None:
    st.text_area(t("edit_label", lang), key="edit_text")
    row = st.container(horizontal=True)
    row.button(t("resend", lang), key="resend", type="primary", on_click=resend, args=(store,))
    row.button(t("cancel", lang), key="cancel_edit", on_click=cancel_edit)


def version_switch(store: ConversationStore, index: int, lang: str) -> None:
    """‹ n / m › under a message that has other versions (an edit of it, or a regenerated reply)."""
    state = st.session_state
    number, versions = version_of(state.nodes, state.messages[index])
    if versions < 2:
        return
    step_button(store, index, -1, lang, disabled=number == 1)
    st.caption(f"{number} / {versions}", width="content")
    step_button(store, index, 1, lang, disabled=number == versions)


def step_button(store: ConversationStore, index: int, step: int, lang: str, disabled: bool) -> None:
    """‹ (step -1, the older version) or › (+1, the newer)."""
    older = step < 0
    st.button(
        "",
        key=f"{'older' if older else 'newer'}_{index}",
        icon=f":material/chevron_{'left' if older else 'right'}:",
        help=t("older_version" if older else "newer_version", lang),
        type="tertiary",
        disabled=disabled,
        on_click=switch_version,
        args=(store, index, step),
    )


def point_out(lang: str) -> None:
    """Mark the message a search opened, and scroll the page to it."""
    st.container(key="found_message").caption(f":material/search: {t('found_here', lang)}")
    components.html(
        "<script>parent.document.querySelector('.st-key-found_message')?.scrollIntoView({block: 'center'})</script>",
        height=0,
    )


def conversation_view(store: ConversationStore, lang: str, busy: bool) -> None:
    """The history, with Edit under each question, Copy/Regenerate under each answer, and ‹ n / m › under those
    with other versions."""
    state = st.session_state
    messages = state.messages
    hidden = left_out(messages)
    found = state.pop("found", None)  # a search result just opened: pointed out once
    with st.chat_message("assistant"):
        st.markdown(t("greeting", lang))  # shown, never sent to the model
    for index, message in enumerate(messages):
        with st.chat_message(message["role"]):
            if index in hidden:
                st.caption(t("left_out", lang))
            if message["id"] == found:
                point_out(lang)
            if index == state.editing:
                edit_box(store, lang)
                continue
            render_message(message, index, lang)
            if busy:
                continue
            with st.container(horizontal=True, gap="small", vertical_alignment="center"):
                if message["role"] == "assistant":
                    copy_box(message, index, lang)
                    if can_regenerate(messages, index):
                        st.button(
                            t("regenerate", lang),
                            key=f"regenerate_{index}",
                            icon=":material/refresh:",
                            on_click=regenerate,
                            args=(index,),
                        )
                else:
                    st.button(
                        t("edit", lang), key=f"edit_{index}", icon=":material/edit:", on_click=start_edit, args=(index,)
                    )
                version_switch(store, index, lang)


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
    nodes = state.nodes
    append(nodes, messages, entry)
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
            tell(
                notices, save_notice(store, chat, nodes, settings_now, entry["id"])
            )  # refused: kept, tried again next run
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
