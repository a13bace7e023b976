"""The chat page. It only renders: prompts, generation and loading live in plain modules.

Run it with `python app.py [--model PATH_OR_ID] [--port 6006] [--host 127.0.0.1]`, which starts
Streamlit privately (no usage statistics, loopback only); `streamlit run app.py` works too.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

STREAMLIT_FLAGS = {
    "server.headless": "true",
    "browser.gatherUsageStats": "false",
    "server.fileWatcherType": "none",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Chat with a GPTQ-Int4 model in the browser.")
    parser.add_argument("--model", help="model folder or id (default: the first downloaded model, else the demo)")
    parser.add_argument("--backend", default="auto", help="GPTQ kernel: auto, marlin, exllama_v2, triton, torch")
    parser.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when present)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=6006)
    return parser.parse_known_args(argv)[0]


def launch(argv: list[str]) -> None:
    """`python app.py ...` → `streamlit run app.py ...` with private, loopback-only defaults."""
    args = parse_args(argv)
    flags = {**STREAMLIT_FLAGS, "server.address": args.host, "server.port": str(args.port)}
    command = [sys.executable, "-m", "streamlit", "run", str(Path(__file__).resolve())]
    command += [f"--{key}={value}" for key, value in flags.items()]
    print(f"Open http://{args.host}:{args.port} in your browser (forward the port if this is a remote machine).")
    os.execv(sys.executable, [*command, "--", *argv])


if __name__ == "__main__" and "streamlit" not in sys.modules:
    launch(sys.argv[1:])

import streamlit as st  # noqa: E402

from chat import ChatSettings, stream_reply  # noqa: E402
from checkpoint import CheckpointError  # noqa: E402
from demo_model import build_demo_model  # noqa: E402
from generation import PlainEngine, SamplingSettings, checkpoint_defaults  # noqa: E402
from i18n import LANGUAGES, pick_language, stats_line, t  # noqa: E402
from installed import default_model  # noqa: E402
from kernels import KernelError  # noqa: E402
from model_loader import LoadedModel, load  # noqa: E402
from prompt import PromptTooLong  # noqa: E402


@st.cache_resource(show_spinner=False)
def open_model(reference: str | None, backend: str, device: str | None, _progress) -> tuple[LoadedModel, PlainEngine]:
    """Load once per process; with no model on disk, build the demo model first."""
    if reference is None:
        reference = str(build_demo_model(progress=_progress))
    loaded = load(reference, backend=backend, device=device, progress=_progress)
    return loaded, PlainEngine(loaded.model, loaded.tokenizer)


def show_progress(slot, lang: str):
    def report(message: str, fraction: float) -> None:
        slot.progress(min(max(fraction, 0.0), 1.0), text=message)

    return report


def model_panel(loaded: LoadedModel, engine: PlainEngine, lang: str) -> None:
    facts = loaded.facts
    st.sidebar.markdown(f"**{t('model', lang)}:** `{facts.name}`")
    st.sidebar.caption(
        f"{t('device', lang)}: {facts.device_name} · {facts.dtype}  \n"
        f"{t('kernel', lang)}: {facts.kernel_class} ({facts.backend})  \n"
        f"{t('memory', lang)}: {facts.memory_bytes / 2**30:.2f} GiB · "
        f"{t('load_time', lang)}: {facts.load_seconds:.1f} s  \n"
        f"{t('engine', lang)}: {engine.name}"
    )


def settings_panel(loaded: LoadedModel, lang: str) -> ChatSettings:
    """Sidebar widgets; their values are exactly what the next reply uses."""
    defaults = checkpoint_defaults(loaded.model, loaded.tokenizer)
    facts = loaded.facts
    bar = st.sidebar
    bar.subheader(t("settings", lang))
    system_prompt = bar.text_area(t("system_prompt", lang), "You are a helpful assistant.", key="system_prompt")
    context = bar.slider(
        t("context_length", lang),
        256,
        facts.max_context,
        min(facts.default_context, facts.max_context),
        256,
        key="context_length",
    )
    max_new = bar.slider(t("max_new_tokens", lang), 1, min(4096, context - 64), min(512, context // 2), key="max_new")
    temperature = bar.slider(t("temperature", lang), 0.0, 2.0, defaults.temperature, 0.05, key="temperature")
    top_p = bar.slider(t("top_p", lang), 0.05, 1.0, defaults.top_p, 0.05, key="top_p")
    top_k = bar.slider(t("top_k", lang), 0, 200, defaults.top_k, key="top_k")
    penalty = bar.slider(t("repetition_penalty", lang), 1.0, 2.0, defaults.repetition_penalty, 0.01, key="penalty")
    sampling = SamplingSettings(
        max_new_tokens=max_new,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=penalty,
        stop_token_ids=defaults.stop_token_ids,
    )
    return ChatSettings(sampling=sampling, system_prompt=system_prompt, context_length=context)


def render_message(message: dict, lang: str) -> None:
    with st.chat_message(message["role"]):
        st.markdown(message["content"])
        if message.get("error"):
            st.error(message["error"])
        if message.get("stopped"):
            st.caption(t("stopped", lang))
        if message.get("stats"):
            st.caption(message["stats"])


def sent_history(messages: list[dict]) -> list[dict]:
    """What the model sees: turns that were really exchanged, without failed sends."""
    return [{"role": m["role"], "content": m["content"]} for m in messages if not m.get("error")]


def answer(engine: PlainEngine, loaded: LoadedModel, settings: ChatSettings, lang: str) -> None:
    """Stream a reply into the history, saving it as it grows so a stop or rerun keeps the partial text."""
    messages = st.session_state.messages
    try:
        reply = stream_reply(engine, loaded.tokenizer, sent_history(messages), settings)
    except PromptTooLong as error:
        messages[-1]["error"] = f"{t('too_long', lang)}: {error}"
        st.error(messages[-1]["error"])
        return
    entry = {"role": "assistant", "content": "", "streaming": True}
    messages.append(entry)
    with st.chat_message("assistant"):
        if engine.busy:
            st.info(t("waiting", lang))

        def pieces():
            for piece in reply:
                entry["content"] += piece
                yield piece

        stream = pieces()
        try:
            st.write_stream(stream)
        except Exception as error:  # shown on the page; the history keeps the partial reply
            entry["error"] = f"{t('failed', lang)}: {error}"
            st.error(entry["error"])
        finally:
            reply.stop.set()
            stream.close()
            entry["streaming"] = False
        entry["stats"] = stats_line(reply.stats, lang)
        st.caption(entry["stats"])


def main() -> None:
    args = parse_args(sys.argv[1:])
    st.set_page_config(page_title="Qwen GPTQ Chat", page_icon="💬")
    state = st.session_state
    state.setdefault("messages", [])
    state.setdefault("language", pick_language(st.context.locale))
    for message in state.messages:  # a reply cut short by a stop or a rerun
        if message.pop("streaming", False):
            message["stopped"] = True

    lang = st.sidebar.radio(
        t("language", state.language), list(LANGUAGES), format_func=LANGUAGES.get, key="language", horizontal=True
    )
    st.title(t("title", lang))
    st.caption(t("caption", lang))

    reference = default_model(args.model)
    slot = st.empty()
    if reference is None:
        slot.info(t("building_demo", lang))
    try:
        loaded, engine = open_model(reference, args.backend, args.device, show_progress(slot, lang))
    except (CheckpointError, KernelError, RuntimeError, OSError, ValueError) as error:
        slot.empty()
        st.error(f"{t('load_failed', lang)}: {error}")
        for message in state.messages:
            render_message(message, lang)
        st.stop()
    slot.empty()

    model_panel(loaded, engine, lang)
    settings = settings_panel(loaded, lang)
    if st.sidebar.button(t("clear", lang), key="clear"):
        state.messages = []

    with st.chat_message("assistant"):
        st.markdown(t("greeting", lang))  # shown, never sent to the model
    for message in state.messages:
        render_message(message, lang)

    if text := st.chat_input(t("input_placeholder", lang)):
        state.messages.append({"role": "user", "content": text})
        render_message(state.messages[-1], lang)
        answer(engine, loaded, settings, lang)


main()
