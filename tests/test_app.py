"""The page: its logic as plain functions, then every control through Streamlit's AppTest on the demo model."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psutil
import pytest
import torch
from streamlit import config as streamlit_config
from streamlit.runtime.scriptrunner_utils.exceptions import StopException
from streamlit.runtime.scriptrunner_utils.script_requests import RerunData
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx
from streamlit.testing.v1 import AppTest

from gptq_chat.api.access import exposure_problem, is_loopback, secret_matches, without_password
from gptq_chat.chat.branches import linked, path_to, version_of
from gptq_chat.chat.conversations import DATA_ENV, ConversationStore, SaveFailed, Summary
from gptq_chat.chat.prompt import encode_chat, with_system
from gptq_chat.chat.reply import Reply, ReplyStats
from gptq_chat.chat.think import answer_only, split_think
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.loading import holder
from gptq_chat.loading.loader import load
from gptq_chat.models.installed import MODEL_ENV
from gptq_chat.ui.chat_list import chat_labels, chat_time, user_zone
from gptq_chat.ui.history import (
    can_regenerate,
    context_use,
    for_regeneration,
    left_out,
    mark_interrupted,
    needs_reply,
    sent_history,
    speeds,
    with_edit,
)
from gptq_chat.ui.i18n import LANGUAGES, TEXT, context_line, pick_language, stats_line
from gptq_chat.ui.presets import CUSTOM, PRESETS, preset_of
from gptq_chat.ui.rendering import to_markdown
from gptq_chat.ui.replies import stream_into, wait_turn
from gptq_chat.ui.saving import failure_notice, tell
from tests.support.browser_app import free_port
from tests.support.small_disk import run_in_child, tmpfs_possible

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
QUESTION = "What is the capital of France?"
SHORT = 24


# -- logic, no page ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "final", "thinking", "answer", "done"),
    [
        ("<think>\nLet me see.\n</think>\n\nParis.", True, "Let me see.", "Paris.", True),
        ("<think>\nstill going", False, "still going", "", False),
        ("Reasoning without the tag.</think>Paris.", True, "Reasoning without the tag.", "Paris.", True),  # QwQ
        ("<thi", False, "", "", False),  # half a tag while streaming: held back
        ("<thi", True, "", "<thi", True),  # ...but a finished reply is shown as written
        ("<think>\n\n</think>\n\nHi!", True, "", "Hi!", True),  # Qwen3 with thinking off
        ("No reasoning here.", True, "", "No reasoning here.", True),
    ],
)
def test_think_is_split_from_the_answer(text: str, final: bool, thinking: str, answer: str, done: bool) -> None:
    split = split_think(text, final=final)
    assert (split.thinking, split.answer, split.thinking_done) == (thinking, answer, done)


def test_latex_delimiters_become_streamlits_but_code_is_untouched() -> None:
    text = "Area \\(\\pi r^2\\), and\n\\[E = mc^2\\]\n`\\(x\\)`\n```python\ns = r'\\(y\\)'\n```\nthen \\(z\\)"
    out = to_markdown(text)
    assert "$\\pi r^2$" in out and "$$\nE = mc^2\n$$" in out and "$z$" in out
    assert "`\\(x\\)`" in out and "s = r'\\(y\\)'" in out


def test_an_open_code_fence_is_closed_while_streaming_only() -> None:
    text = "Here:\n```python\nprint('hi')"
    assert to_markdown(text, streaming=True).endswith("print('hi')\n```")
    assert to_markdown(text) == text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("", False),
        (None, False),
        ("192.168.1.5", False),
        ("myhost", False),
    ],
)
def test_loopback_hosts(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_password_is_required_off_loopback_and_compared_exactly() -> None:
    assert exposure_problem("127.0.0.1", None) is None
    assert exposure_problem("0.0.0.0", "secret") is None
    problem = exposure_problem("0.0.0.0", None)
    assert problem is not None and "--password" in problem and "GPTQ_CHAT_PASSWORD" in problem
    assert secret_matches("s3cret-密码", "s3cret-密码")
    assert not secret_matches("s3cret", "s3cret-密码")
    assert not secret_matches("", "x")


def test_app_refuses_to_start_on_the_network_without_a_password() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, APP, "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60, env=env, cwd=REPO
    )
    assert done.returncode != 0
    assert "Refusing to start" in done.stderr and "--password" in done.stderr


def test_the_password_never_reaches_the_command_line() -> None:
    argv = ["--host", "0.0.0.0", "--password", "s3cret", "--password=other", "--port", "7000"]
    assert without_password(argv) == ["--host", "0.0.0.0", "--port", "7000"]


@contextmanager
def started(command: list[str], tmp_path: Path) -> Iterator[psutil.Process]:
    """A child process from the repository root, killed on leaving; its data goes to `tmp_path`."""
    env = {key: value for key, value in os.environ.items() if key != "GPTQ_CHAT_PASSWORD"}
    child = subprocess.Popen(
        command, cwd=REPO, env={**env, DATA_ENV: str(tmp_path)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield psutil.Process(child.pid)
    finally:
        child.kill()
        child.wait(timeout=30)


def wait_for(check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_app_gives_streamlit_the_password_in_its_environment_never_on_its_command_line(tmp_path: Path) -> None:
    """`ps` shows every user of the machine a command line; only the process's owner can read its environment."""
    secret = "s3cret-口令"
    command = [sys.executable, APP, "--password", secret, "--port", str(free_port()), "--context", "512"]
    with started(command, tmp_path) as process:
        wait_for(lambda: "streamlit" in process.cmdline())  # app.py has become `streamlit run app.py ...`
        assert not any(secret in arg for arg in process.cmdline())
        assert process.cmdline()[-2:] == ["--context", "512"]  # the page's own flags still reach it
        assert process.environ()["GPTQ_CHAT_PASSWORD"] == secret


@pytest.mark.slow
def test_streamlit_run_from_the_repository_listens_on_loopback_only(tmp_path: Path) -> None:
    """`.streamlit/config.toml` keeps a bare `streamlit run app.py` as private as `python app.py`."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", f"--server.port={port}"]
    with started(command, tmp_path) as process:

        def listening() -> list[str]:
            return [c.laddr.ip for c in process.net_connections("inet") if c.status == psutil.CONN_LISTEN]

        wait_for(lambda: bool(listening()))
        assert listening() == ["127.0.0.1"]


def test_sent_history_leaves_out_failures_and_old_reasoning() -> None:
    messages = [
        {"role": "user", "content": "too long", "error": "too long"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>greet</think>Hello!", "stats": {}},
        {"role": "user", "content": "Bye"},
    ]
    assert sent_history(messages) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert answer_only("<think>x</think>y") == "y"


def test_regenerate_and_edit_start_a_new_version_and_keep_the_old_branch() -> None:
    nodes = linked(
        [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2", "error": "too long"},
            {"role": "assistant", "content": "A2", "stopped": True},
        ]
    )
    path = path_to(nodes, 3)
    assert can_regenerate(path, 3) and can_regenerate(path, 1) and not can_regenerate(path, 2)
    again = for_regeneration(path, 3)
    assert [m["content"] for m in again] == ["Q1", "A1", "Q2"] and "error" not in again[-1]  # Q2 gets another go
    assert needs_reply(again) and len(nodes) == 4  # A2 stays in the tree, beside the reply to come
    edited = with_edit(nodes, path, 0, "Q1, shorter")
    assert [m["content"] for m in edited] == ["Q1, shorter"] and edited[0]["parent"] is None
    assert [n["content"] for n in nodes] == ["Q1", "A1", "Q2", "A2", "Q1, shorter"]  # the first branch is whole
    assert version_of(nodes, edited[0]) == (2, 2) and version_of(nodes, path[0]) == (1, 2)
    with pytest.raises(ValueError):
        with_edit(nodes, path, 0, "  ")
    with pytest.raises(ValueError):
        for_regeneration(path, 2)


def test_a_reply_cut_off_by_a_lost_run_is_marked_stopped() -> None:
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Par", "streaming": True}]
    mark_interrupted(messages)
    assert messages[1] == {"role": "assistant", "content": "Par", "stopped": True}


def test_context_meter_and_left_out_messages_come_from_the_last_reply() -> None:
    stats = {"prompt_tokens": 900, "new_tokens": 100, "dropped_messages": 2, "context_length": 1024}
    messages = [
        {"role": "user", "content": "old", "error": "failed"},  # never sent: not counted as dropped
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "stats": {"tokens_per_s": 20.0}},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2", "stats": {**stats, "tokens_per_s": 30.0}},
    ]
    use = context_use(messages, window=4096)
    assert use is not None and (use.used, use.window, use.dropped) == (1000, 1024, 2)
    assert use.fraction == pytest.approx(1000 / 1024)
    assert left_out(messages) == {1, 2}
    assert speeds(messages) == [20.0, 30.0]
    assert context_use(messages[:2], 4096) is None
    assert (
        context_line(1000, 1024, 2, "en")
        == "Context: 1,000 / 1,024 tokens · 2 earlier messages left out to fit the context"
    )


def test_every_ui_string_has_chinese_and_english() -> None:
    assert set(LANGUAGES) == {"zh", "en"}
    assert all(set(words) == {"zh", "en"} and all(words.values()) for words in TEXT.values())
    assert all(f"preset_{key}" in TEXT for key in [*PRESETS, CUSTOM])
    assert pick_language("zh-CN") == "zh" and pick_language("zh-TW") == "zh"
    assert pick_language("en-US") == "en" and pick_language(None) == "en"


def test_a_refused_save_is_told_once_and_a_full_disk_in_plain_words() -> None:
    """The page tries a refused save again on every run; the user reads one message about it, not one per try."""
    notices: list[tuple[str, str]] = []
    for _ in range(3):
        tell(notices, failure_notice(SaveFailed("database or disk is full")))
    assert notices == [("error", "disk_full")]
    tell(notices, failure_notice(SaveFailed("disk I/O error")))
    assert notices[-1] == ("error", "not_saved:disk I/O error")


def test_stats_line_says_speed_and_what_the_model_saw() -> None:
    record = {"first_token_s": 0.25, "tokens_per_s": 31.42, "prompt_tokens": 40, "new_tokens": 12}
    assert stats_line(record, "en") == "first token 0.25 s · 31.4 tokens/s · 40 prompt tokens · 12 new tokens"
    assert "首字延迟" in stats_line(record, "zh")


SHANGHAI = ZoneInfo("Asia/Shanghai")


def shanghai(*when: int) -> float:
    """A moment given as Shanghai's wall clock (year, month, day, hour, minute)."""
    return datetime(*when, tzinfo=SHANGHAI).timestamp()


def test_a_chats_time_is_as_short_as_it_can_be_in_both_languages() -> None:
    now = shanghai(2026, 3, 10, 15, 0)
    for lang in LANGUAGES:
        assert chat_time(shanghai(2026, 3, 10, 14, 5), now, SHANGHAI, lang) == "14:05"
        assert chat_time(shanghai(2026, 3, 10, 0, 0), now, SHANGHAI, lang) == "00:00"
        assert chat_time(shanghai(2025, 12, 7, 14, 5), now, SHANGHAI, lang) == "2025-12-07"
    assert chat_time(shanghai(2026, 3, 9, 23, 59), now, SHANGHAI, "en") == "Mar 9 23:59"
    assert chat_time(shanghai(2026, 1, 2, 9, 30), now, SHANGHAI, "zh") == "1月2日 09:30"


def test_a_chats_time_is_told_in_the_users_time_zone() -> None:
    now = shanghai(2026, 3, 10, 8, 0)  # midnight in London
    updated = shanghai(2026, 3, 10, 7, 30)  # still yesterday there
    assert chat_time(updated, now, user_zone("Asia/Shanghai"), "en") == "07:30"
    assert chat_time(updated, now, user_zone("Europe/London"), "en") == "Mar 9 23:30"
    assert user_zone(None) is None and user_zone("Nowhere/Atlantis") is None  # then the server's own zone


def test_chats_that_read_the_same_in_the_list_are_told_apart_by_their_number() -> None:
    now, today, yesterday = shanghai(2026, 3, 10, 15, 0), shanghai(2026, 3, 10, 14, 5), shanghai(2026, 3, 9, 14, 5)
    summaries = [
        Summary(7, f"{QUESTION} One word.", today, 2),
        Summary(3, QUESTION, today, 2),
        Summary(2, QUESTION, yesterday, 2),
        Summary(1, "Hi", today, 2),
    ]
    assert chat_labels(summaries, now, SHANGHAI, "en") == [
        "What is the capital of Fr… · 14:05 · #7",
        "What is the capital of Fr… · 14:05 · #3",
        "What is the capital of Fr… · Mar 9 14:05",
        "Hi · 14:05",
    ]


def test_presets_fill_the_system_prompt_and_an_edit_makes_it_custom() -> None:
    assert preset_of(PRESETS["coder"]) == "coder"
    assert preset_of(PRESETS["coder"] + " Also be funny.") == CUSTOM


class FakeEngine:
    """Busy for a while, as when another tab's reply holds the model."""

    def __init__(self, busy_for: float) -> None:
        self.until = time.monotonic() + busy_for

    @property
    def busy(self) -> bool:
        return time.monotonic() < self.until


def test_waiting_for_another_tab_keeps_telling_the_user() -> None:
    notes: list[float] = []
    waited = wait_turn(FakeEngine(0.3), notes.append, poll=0.05)
    assert waited >= 0.3 and len(notes) >= 3 and notes == sorted(notes)
    assert wait_turn(FakeEngine(0), notes.append) < 0.05


def scripted_reply(pieces: list[str], released: threading.Event) -> Reply:
    """A Reply whose generator, like the engine's, releases the model in its `finally`."""

    def generate():
        try:
            yield from pieces
        finally:
            released.set()

    stats = ReplyStats(prompt_tokens=10, new_tokens=len(pieces), first_token_seconds=0.1, total_seconds=1.0)
    return Reply(pieces=generate(), stats=stats)


def test_a_click_during_streaming_keeps_the_partial_reply_and_frees_the_model() -> None:
    released, saved = threading.Event(), []
    reply = scripted_reply(["Par", "is", " is", " the", " capital"], released)
    entry: dict = {"role": "assistant", "content": ""}
    drawn: list[str] = []

    def show(text: str, final: bool) -> None:
        drawn.append(text)
        if len(drawn) == 2:
            raise StopException()  # what Streamlit raises in the element being drawn when a click reruns the page

    with pytest.raises(StopException):
        stream_into(
            entry, reply, show, context_length=512, model="demo", finish=lambda: saved.append(dict(entry)), interval=0
        )
    assert entry["content"] == "Paris" and entry["stopped"] is True and "streaming" not in entry
    assert entry["stats"]["finish"] == "cancelled" and entry["stats"]["context_length"] == 512
    assert released.is_set() and reply.stop.is_set()  # the model is free before the next run starts
    assert saved == [entry]


def test_a_finished_reply_is_drawn_whole_and_not_marked_stopped() -> None:
    released = threading.Event()
    entry: dict = {"role": "assistant", "content": ""}
    finals: list[tuple[str, bool]] = []
    stream_into(
        entry, scripted_reply(["A", "B"], released), lambda s, f: finals.append((s, f)), context_length=1, model="m"
    )
    assert finals[-1] == ("AB", True) and "stopped" not in entry and released.is_set()
    assert entry["stats"]["tokens_per_s"] == pytest.approx(1 / 0.9, abs=0.01)


def test_a_generation_error_is_kept_with_the_reply() -> None:
    def broken():
        yield "Half"
        raise RuntimeError("CUDA error: out of memory")

    entry: dict = {"role": "assistant", "content": ""}
    stream_into(entry, Reply(pieces=broken(), stats=ReplyStats()), lambda s, f: None, context_length=1, model="m")
    assert entry["content"] == "Half" and "out of memory" in entry["error"] and "stopped" not in entry


# -- model switching ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_models(tiny_gptq_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding two small checkpoints (copies of the tiny random Qwen2)."""
    home = tmp_path_factory.mktemp("models-home")
    for name in ("Qwen/Tiny-A-GPTQ-Int4", "Qwen/Tiny-B-GPTQ-Int4"):
        shutil.copytree(tiny_gptq_dir, home / name)
    return home


@pytest.mark.slow
def test_switching_frees_the_old_model_and_refuses_one_that_does_not_fit(
    two_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPTQ_CHAT_HOME", str(two_models))
    app_model = holder.ModelHolder(str(two_models / "Qwen/Tiny-A-GPTQ-Int4"), device="cpu")
    first = weakref.ref(app_model.get().model)
    assert [holder.display_name(p) for p in holder.model_choices(None)] == [
        "Qwen/Tiny-A-GPTQ-Int4",
        "Qwen/Tiny-B-GPTQ-Int4",
    ]

    real_memory = holder.device_memory
    monkeypatch.setattr(holder, "device_memory", lambda device: holder.Memory("RAM", 0, 2**20, 2**30))
    with pytest.raises(holder.SwitchRefused, match=r"needs [\d.]+ GiB of RAM .* only [\d.]+ GiB would be free"):
        app_model.switch(str(two_models / "Qwen/Tiny-B-GPTQ-Int4"))
    assert first() is not None and app_model.loaded is not None  # refused: nothing changed

    monkeypatch.setattr(holder, "device_memory", real_memory)
    switched = app_model.switch(str(two_models / "Qwen/Tiny-B-GPTQ-Int4"))
    assert switched.info.path.name == "Tiny-B-GPTQ-Int4"
    assert first() is None  # the old model's weights were freed, not just forgotten
    back = app_model.switch(str(two_models / "Qwen/Tiny-A-GPTQ-Int4"))  # and back: it loads again
    assert back.info.path.name == "Tiny-A-GPTQ-Int4" and app_model.loaded is back
    assert list(back.scheduler.generate([9707], SamplingSettings(max_new_tokens=2), threading.Event()))


@pytest.mark.slow
def test_a_new_kv_cache_format_reloads_the_model_with_it(two_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTQ_CHAT_HOME", str(two_models))
    model = str(two_models / "Qwen/Tiny-A-GPTQ-Int4")
    app_model = holder.ModelHolder(model, device="cpu", engine="fast", context_length=256)
    first = app_model.get()
    assert first.facts.kv_cache == "fp16"  # "auto" where no option says otherwise: fp16 on the CPU
    assert app_model.switch(model) is first  # the same model and options: nothing to do
    old = weakref.ref(first.model)
    del first
    int8 = app_model.switch(model, kv_cache="int8")
    assert int8.facts.kv_cache == "int8" and int8.model.caches[0].k.dtype == torch.int8
    assert app_model.options["kv_cache"] == "int8" and old() is None  # kept for later switches; fp16's freed
    assert list(int8.scheduler.generate([9707], SamplingSettings(max_new_tokens=2), threading.Event()))
    assert app_model.switch(model, kv_cache="int8") is int8


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["fast engine's scheduler", "plain engine, held directly"])
def test_a_switch_is_refused_while_a_reply_is_being_written(
    two_models: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """A switch waits for no reply: whoever is writing one (a tab through the scheduler, or a caller holding the
    plain engine itself), the switch is refused and the model stays; once the reply ends, the switch goes through."""
    monkeypatch.setenv("GPTQ_CHAT_HOME", str(two_models))
    engine = "fast" if writer.startswith("fast") else "plain"
    app_model = holder.ModelHolder(str(two_models / "Qwen/Tiny-A-GPTQ-Int4"), device="cpu", engine=engine)
    loaded = app_model.get()
    source = loaded.scheduler if engine == "fast" else loaded.engine
    reply = source.generate([9707, 11, 1879], SamplingSettings(max_new_tokens=50, temperature=0.0), threading.Event())
    next(reply)  # a reply is being written
    with pytest.raises(holder.SwitchRefused, match="A reply is being written"):
        app_model.switch(str(two_models / "Qwen/Tiny-B-GPTQ-Int4"))
    assert app_model.loaded is loaded
    reply.close()
    wait_for(lambda: not loaded.scheduler.stats().active, seconds=10)
    assert app_model.switch(str(two_models / "Qwen/Tiny-B-GPTQ-Int4")).info.path.name == "Tiny-B-GPTQ-Int4"


def test_a_traceback_kept_by_a_library_does_not_keep_the_old_model_alive() -> None:
    """Some libraries store an exception from a lazy import; its traceback keeps the caller's frame and locals."""
    kept: list[BaseException] = []

    class Weights:
        pass

    def load_like_the_loader() -> Weights:
        model = Weights()
        try:
            raise ImportError("optional kernel missing")  # inside a lazy import during the first load
        except ImportError as error:
            kept.append(error)
        return model

    model = weakref.ref(load_like_the_loader())
    assert model() is not None  # only the stored traceback's frame holds it
    assert holder.clear_finished_frames(model()) == 1
    assert model() is None
    assert kept[0].__traceback__ is not None  # the library still has its exception


def test_fit_check_counts_the_memory_the_current_model_gives_back(demo_model_dir: Path) -> None:
    """The switch asks the loader's rule with the current model's memory counted as freed (`plan_load(freed=)`)."""
    from gptq_chat.loading.checkpoint import find_checkpoint
    from gptq_chat.loading.fit import CPU_CONTEXT_TOKENS
    from gptq_chat.loading.loader import plan_load
    from gptq_chat.loading.placement import PlacementRefused

    info = find_checkpoint(demo_model_dir)
    assert plan_load(info, device="cpu", ram=16 * 2**30).layout.device == "cpu"
    with pytest.raises(PlacementRefused, match=r"needs [\d.]+ GiB of RAM .* only 0\.4 GiB would be free"):
        plan_load(info, device="cpu", ram=256 * 2**20, freed=128 * 2**20)
    roomy = plan_load(info, device="cpu", ram=256 * 2**20, freed=4 * 2**30)
    assert roomy.layout.context == min(CPU_CONTEXT_TOKENS, info.shape.max_position_embeddings)


# -- the page through AppTest ---------------------------------------------------------------------------


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Conversations in a fresh folder; the page bound to loopback as `.streamlit/config.toml` says."""
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.delenv("GPTQ_CHAT_PASSWORD", raising=False)
    streamlit_config.set_option("server.address", "127.0.0.1")
    return tmp_path / "data"


@pytest.fixture
def page(demo_model_dir: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(MODEL_ENV, str(demo_model_dir))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    at.sidebar.slider(key="temperature").set_value(0.0)
    at.sidebar.slider(key="max_new").set_value(SHORT).run()  # a short answer; 2 CPU cores write ~20 tokens/s
    return at


def send(at: AppTest, text: str) -> AppTest:
    at.chat_input[0].set_value(text).run()
    assert not at.exception, at.exception
    return at


def assistant_texts(at: AppTest) -> list[str]:
    return [m.markdown[0].value for m in at.chat_message if m.name == "assistant"]


def store_of(data: Path) -> ConversationStore:
    return ConversationStore(data / "conversations.sqlite3")


def chat_buttons(at: AppTest) -> list:
    return [b for b in at.sidebar.button if b.key and b.key.startswith("chat_")]


def selected_chats(at: AppTest) -> list[str]:
    """The chats the list shows as selected (a primary button): the open one, only."""
    return [b.key for b in chat_buttons(at) if b.proto.type == "primary"]


@pytest.mark.slow
def test_message_gets_a_streamed_reply_with_stats(page: AppTest) -> None:
    send(page, QUESTION)
    texts = assistant_texts(page)
    assert texts[0] in ("Hello! How can I help you?", "你好！有什么可以帮您的？")  # greeting, shown only
    assert texts[-1].strip() and texts[-1] == page.session_state["messages"][-1]["content"]
    captions = [c.value for c in page.chat_message[-1].caption]
    assert any("new tokens" in c and "tokens/s" in c and "first token" in c for c in captions)
    assert page.session_state["messages"][-1]["stats"]["new_tokens"] > 0


def prompt_tokens(at: AppTest, demo_model_dir: Path, question: str) -> int:
    """What a first question costs with the page's system prompt, counted apart from the page."""
    system = at.sidebar.text_area(key="system_prompt").value
    tokenizer = load(demo_model_dir).tokenizer
    return len(encode_chat(tokenizer, with_system(system, [{"role": "user", "content": question}])))


@pytest.mark.slow
def test_greeting_is_never_sent_to_the_model(page: AppTest, demo_model_dir: Path) -> None:
    send(page, "Hi")
    assert f"{prompt_tokens(page, demo_model_dir, 'Hi')} prompt tokens" in page.chat_message[-1].caption[-1].value


@pytest.mark.slow
def test_settings_reach_generate_and_the_meter_shows_the_window(page: AppTest) -> None:
    page.sidebar.slider(key="max_new").set_value(3).run()
    send(page, "Tell me a long story about the sea.")
    assert "3 new tokens" in page.chat_message[-1].caption[-1].value
    meter = page.get("progress")[0]
    assert meter.proto.text.startswith("Context: ") and "/ 4,096 tokens" in meter.proto.text


def reply_with(page: AppTest, **sliders: float) -> str:
    """The reply to one question in a new chat, with the sidebar's sliders set first."""
    page.sidebar.button(key="new_chat").click().run()
    for key, value in sliders.items():
        page.sidebar.slider(key=key).set_value(value)
    send(page.run(), "Tell me about the sea.")
    return page.session_state["messages"][-1]["content"]


@pytest.mark.slow
def test_top_k_and_repetition_penalty_reach_generate(page: AppTest) -> None:
    """Top-k 1 makes even temperature 2 give the greedy text; a penalty of 2 changes the greedy text, the same way
    each time."""
    greedy = reply_with(page, temperature=0.0, penalty=1.0, max_new=12)
    assert reply_with(page, temperature=2.0, top_k=1, penalty=1.0) == greedy
    penalised = reply_with(page, temperature=0.0, top_k=20, penalty=2.0)
    assert penalised != greedy and reply_with(page, penalty=2.0) == penalised


@pytest.mark.slow
def test_system_prompt_presets_reach_the_model(page: AppTest) -> None:
    send(page, "Hi")
    short = page.session_state["messages"][-1]["stats"]["prompt_tokens"]
    page.sidebar.button(key="new_chat").click().run()
    page.sidebar.selectbox(key="preset").set_value("coder").run()
    assert page.sidebar.text_area(key="system_prompt").value == PRESETS["coder"]
    send(page, "Hi")
    assert page.session_state["messages"][-1]["stats"]["prompt_tokens"] > short
    page.sidebar.text_area(key="system_prompt").input("You are a pirate.").run()
    assert page.sidebar.selectbox(key="preset").value == CUSTOM


@pytest.mark.slow
def test_too_long_message_is_kept_and_explained(page: AppTest) -> None:
    page.sidebar.slider(key="context_length").set_value(256).run()
    page.sidebar.slider(key="max_new").set_value(64).run()
    send(page, "word " * 400)
    assert "too long" in page.error[0].value.lower()
    assert page.session_state["messages"][-1]["content"] == "word " * 400
    send(page, QUESTION)  # the chat goes on, without the failed message
    messages = page.session_state["messages"]
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"] and not messages[-1].get("error")
    assert "word word" not in json.dumps(sent_history(messages))


@pytest.mark.slow
def test_old_messages_outside_the_window_are_marked(page: AppTest) -> None:
    page.sidebar.slider(key="context_length").set_value(256).run()
    page.sidebar.slider(key="max_new").set_value(100).run()
    send(page, "Tell me about the sea. " * 5)
    send(page, "And the mountains? " * 5)
    send(page, QUESTION)
    assert "earlier messages left out" in page.get("progress")[0].proto.text
    first_question = page.chat_message[1]
    assert "Outside the context window" in first_question.caption[0].value


@pytest.fixture
def engine(demo_model_dir: Path):
    """The very engine the page uses (`load` caches one model per process and arguments); any test
    replacement of its `generate` is removed afterwards."""
    engine = load(demo_model_dir).engine
    yield engine
    vars(engine).pop("generate", None)


def interrupting(engine, after: int, request) -> None:
    """Make the engine's next reply ask Streamlit, mid-stream, to rerun or stop the page, as a click or a
    closed tab does: the request is served where the page next draws the growing reply."""
    real_generate = engine.generate

    def generate(prompt_ids, settings, stop):
        for i, token in enumerate(real_generate(prompt_ids, settings, stop)):
            if i == after:
                request(get_script_run_ctx())
            yield token

    engine.generate = generate


def click_during_reply(ctx) -> None:
    ctx.script_requests.request_rerun(RerunData(query_string=ctx.query_string, page_script_hash=ctx.page_script_hash))


def close_tab(ctx) -> None:
    ctx.script_requests.request_stop()


@pytest.mark.slow
def test_stop_keeps_the_partial_reply_marked_and_regenerate_replaces_it(page: AppTest, engine, data: Path) -> None:
    interrupting(engine, after=6, request=click_during_reply)
    page.sidebar.slider(key="max_new").set_value(40).run()
    send(page, "Tell me a long story about the sea.")
    assert not engine.busy
    partial = page.session_state["messages"][-1]
    assert partial["stopped"] and partial["content"] and partial["stats"]["finish"] == "cancelled"
    assert partial["stats"]["new_tokens"] < 40
    assert "(stopped)" in [c.value for c in page.chat_message[-1].caption]
    assert "stop" not in [b.key for b in page.button]  # the click reran the page: nothing is streaming
    saved = store_of(data).get(page.session_state["chat"].id)
    assert saved is not None and saved.messages[-1]["stopped"] and saved.revision == page.session_state["chat"].revision

    vars(engine).pop("generate")
    page.sidebar.slider(key="max_new").set_value(12).run()
    page.button(key="regenerate_1").click().run()
    messages = page.session_state["messages"]
    assert len(messages) == 2 and not messages[-1].get("stopped")
    assert messages[-1]["stats"]["new_tokens"] == 12 or messages[-1]["stats"]["finish"] == "stop"
    assert [s.id for s in store_of(data).summaries()] == [page.session_state["chat"].id]  # no fork


@pytest.mark.slow
def test_closing_the_tab_mid_reply_saves_the_partial_reply_and_frees_the_model(
    page: AppTest, engine, data: Path
) -> None:
    interrupting(engine, after=4, request=close_tab)
    page.sidebar.slider(key="max_new").set_value(40).run()
    send(page, "Tell me a long story about the sea.")
    assert not engine.busy
    saved = store_of(data).summaries()
    conversation = store_of(data).get(saved[0].id)
    assert conversation is not None
    assert [m["role"] for m in conversation.messages] == ["user", "assistant"]
    assert conversation.messages[-1]["stopped"] and conversation.messages[-1]["content"]


@pytest.mark.slow
def test_edit_and_resend_replaces_the_last_question_and_its_answer(page: AppTest, demo_model_dir: Path) -> None:
    page.sidebar.slider(key="max_new").set_value(8).run()
    send(page, "What is the capital of Germany?")
    page.button(key="edit_0").click().run()
    assert page.text_area(key="edit_text").value == "What is the capital of Germany?"
    page.text_area(key="edit_text").input(QUESTION)
    page.button(key="resend").click().run()
    messages = page.session_state["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == QUESTION and messages[1]["content"]
    assert messages[1]["stats"]["prompt_tokens"] == prompt_tokens(page, demo_model_dir, QUESTION)


@pytest.mark.slow
def test_copy_shows_the_answer_in_a_copyable_block(page: AppTest) -> None:
    send(page, QUESTION)
    code = page.chat_message[-1].code[0]
    assert code.value == page.session_state["messages"][-1]["content"] and code.value.strip()


@pytest.mark.slow
def test_chats_are_saved_listed_switched_renamed_and_deleted(page: AppTest, data: Path) -> None:
    send(page, QUESTION)
    first = page.session_state["chat"].id
    assert page.query_params["chat"] == [str(first)] or page.query_params["chat"] == str(first)
    page.sidebar.button(key="new_chat").click().run()
    assert page.session_state["messages"] == [] and page.session_state["chat"].id is None
    page.sidebar.slider(key="max_new").set_value(5).run()
    send(page, f"{QUESTION} One word.")  # begins as the first chat does
    second = page.session_state["chat"].id
    assert second != first
    listed = chat_buttons(page)
    assert [b.key for b in listed] == [f"chat_{second}", f"chat_{first}"]  # newest first
    assert all(re.fullmatch(r"What is the capital of Fr… · \d\d:\d\d( · #\d+)?", b.label) for b in listed)
    assert listed[0].label != listed[1].label  # one line each, told apart
    assert selected_chats(page) == [f"chat_{second}"]

    page.sidebar.button(key=f"chat_{first}").click().run()  # switch back: history and settings come back
    assert page.session_state["messages"][0]["content"] == QUESTION
    assert page.sidebar.slider(key="max_new").value == SHORT
    assert selected_chats(page) == [f"chat_{first}"]
    page.sidebar.button(key=f"chat_{second}").click().run()
    assert page.sidebar.slider(key="max_new").value == 5

    page.sidebar.text_input(key=f"rename_{second}").input("Colors")
    page.sidebar.button(key="rename_save").click().run()
    assert [s.title for s in store_of(data).summaries()] == ["Colors", QUESTION]
    page.sidebar.button(key="delete_chat").click().run()
    assert [s.id for s in store_of(data).summaries()] == [first]
    assert page.session_state["messages"] == []


def new_tab(settle: AppTest) -> AppTest:
    """Another browser tab on the same app process (and the same saved chats) as `settle`."""
    tab = AppTest.from_file(APP, default_timeout=180)
    tab.run()
    tab.sidebar.slider(key="temperature").set_value(0.0)
    tab.sidebar.slider(key="max_new").set_value(settle.sidebar.slider(key="max_new").value).run()
    return tab


def version_caption(at: AppTest, index: int) -> str | None:
    """The ‹ n / m › caption under message `index` (the greeting is message -1), if it has versions."""
    captions = [c.value for c in at.chat_message[index + 1].caption if re.fullmatch(r"\d+ / \d+", c.value)]
    return captions[0] if captions else None


@pytest.mark.slow
def test_editing_an_earlier_question_and_regenerating_keep_every_branch_to_switch_between(
    page: AppTest, data: Path
) -> None:
    send(page, QUESTION)
    send(page, "And of Italy?")
    first_reply = page.session_state["messages"][1]["content"]
    page.sidebar.slider(key="max_new").set_value(4).run()
    page.button(key="regenerate_1").click().run()  # an earlier reply, not only the last
    assert [m["role"] for m in page.session_state["messages"]] == ["user", "assistant"]
    assert version_caption(page, 1) == "2 / 2" and page.session_state["messages"][1]["stats"]["new_tokens"] <= 4
    page.button(key="older_1").click().run()  # back to the first reply, and the question that followed it
    assert [m["content"] for m in page.session_state["messages"]][1:3] == [first_reply, "And of Italy?"]
    assert version_caption(page, 1) == "1 / 2"

    page.button(key="edit_0").click().run()  # the first question, with two replies and a follow-up under it
    page.text_area(key="edit_text").input("What is the capital of Spain?")
    page.button(key="resend").click().run()
    assert page.session_state["messages"][0]["content"] == "What is the capital of Spain?"
    assert version_caption(page, 0) == "2 / 2" and len(page.session_state["messages"]) == 2
    saved = store_of(data).get(page.session_state["chat"].id)
    assert len(saved.nodes) == 7 and saved.messages == [  # 2 questions, 2 replies, 1 again, 1 edit, its reply
        {k: v for k, v in m.items() if k not in ("id", "parent")} for m in page.session_state["messages"]
    ]

    other = new_tab(page)  # what a reload sees: every branch, the one last shown first
    other.sidebar.button(key=f"chat_{saved.id}").click().run()
    assert other.session_state["messages"][0]["content"] == "What is the capital of Spain?"
    other.button(key="older_0").click().run()  # a branch opens at its newest reply: the regenerated one
    assert len(other.session_state["messages"]) == 2 and version_caption(other, 1) == "2 / 2"
    other.button(key="older_1").click().run()
    assert [m["content"] for m in other.session_state["messages"]] == [
        QUESTION,
        first_reply,
        "And of Italy?",
        saved.nodes[3]["content"],
    ]


@pytest.mark.slow
def test_search_opens_the_chat_at_the_message_found_on_its_branch(page: AppTest, data: Path) -> None:
    store = store_of(data)
    older = store.create(
        "旅行",
        [
            {"id": 0, "parent": None, "role": "user", "content": "北京有哪些博物馆？"},
            {"id": 1, "parent": 0, "role": "assistant", "content": "故宫博物院。"},
            {"id": 2, "parent": None, "role": "user", "content": "上海有哪些公园？"},
        ],
        leaf=2,
    )
    send(page, QUESTION)
    mine = page.session_state["chat"].id
    page.sidebar.text_input(key="search_text").input("博物").run()
    hits = [b for b in page.sidebar.button if b.key and b.key.startswith("hit_")]
    assert [b.key for b in hits] == [f"hit_{older.id}_0", f"hit_{older.id}_1"]
    assert hits[1].label == "旅行 · 故宫博物院。"
    hits[1].click().run()
    assert page.session_state["chat"].id == older.id
    assert [m["content"] for m in page.session_state["messages"]] == ["北京有哪些博物馆？", "故宫博物院。"]
    assert [c.value for c in page.chat_message[2].caption] == [":material/search: Found here"]
    page.sidebar.text_input(key="search_text").input("capital of france").run()
    found = [b.key for b in page.sidebar.button if b.key and b.key.startswith("hit_")]
    assert found[0] == f"hit_{mine}_0" and all(key.startswith(f"hit_{mine}_") for key in found)  # case ignored
    page.sidebar.text_input(key="search_text").input("nowhere to be found").run()
    assert "Nothing found" in [c.value for c in page.sidebar.caption]


@pytest.mark.slow
def test_a_chat_changed_in_another_tab_is_not_overwritten_and_the_user_is_told(page: AppTest, data: Path) -> None:
    send(page, QUESTION)
    chat_id = page.session_state["chat"].id
    other = new_tab(page)
    other.sidebar.button(key=f"chat_{chat_id}").click().run()
    send(other, "And of Italy?")  # the other tab saves the chat first
    send(page, "And of Spain?")
    warnings = [w.value for w in page.warning]
    assert warnings == [TEXT["conflict"]["en"]], warnings
    kept, forked = store_of(data).get(chat_id), store_of(data).get(page.session_state["chat"].id)
    assert [m["content"] for m in kept.messages if m["role"] == "user"] == [QUESTION, "And of Italy?"]
    assert [m["content"] for m in forked.messages if m["role"] == "user"] == [QUESTION, "And of Spain?"]


@pytest.mark.slow
def test_a_full_disk_keeps_the_chat_on_the_page_says_so_and_saves_it_once_there_is_room(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    """The page in a child whose data folder really fills up: a small tmpfs where this machine allows one, else a
    file-size limit. A message sent then gets its reply; both stay on the page, unsaved, with a message saying so
    after every rerun; the first rerun with room saves them."""
    kind = "tmpfs" if tmpfs_possible() else "fsize"
    env = {DATA_ENV: str(tmp_path), MODEL_ENV: str(demo_model_dir), "GPTQ_CHAT_PASSWORD": ""}
    seen = run_in_child(kind, tmp_path, "tests.support.full_disk:page_on_a_full_disk", env=env)
    sent, still_full, room = seen["sent"], seen["still_full"], seen["room"]
    told = TEXT["disk_full"]["en"] if kind == "tmpfs" else f"{TEXT['not_saved']['en']}: disk I/O error"
    assert sent["exceptions"] == [] and sent["errors"] == [told], sent["errors"]
    question, reply = sent["messages"][-2:]
    assert question == "And of Italy?" and reply and [question, reply] == sent["shown"][-2:]
    assert sent["saved"] == sent["messages"][:2] and sent["unsaved"]
    assert still_full == sent  # a rerun, still full: the same message, the same chat kept
    assert room["errors"] == [] and room["saved"] == sent["messages"] and not room["unsaved"]


@pytest.mark.slow
def test_a_reload_reopens_the_chat_in_the_address(page: AppTest, data: Path) -> None:
    send(page, QUESTION)
    chat_id = page.session_state["chat"].id
    reloaded = AppTest.from_file(APP, default_timeout=180)  # a new browser session, as after F5 or a restart
    reloaded.query_params["chat"] = str(chat_id)
    reloaded.run()
    assert not reloaded.exception
    assert [m["content"] for m in reloaded.session_state["messages"]] == [
        m["content"] for m in page.session_state["messages"]
    ]
    assert assistant_texts(reloaded)[-1] == page.session_state["messages"][-1]["content"]
    assert "tokens/s" in reloaded.chat_message[-1].caption[-1].value


@pytest.mark.slow
def test_export_and_import(page: AppTest, data: Path) -> None:
    send(page, QUESTION)
    assert {b.proto.label for b in page.sidebar.get("download_button")} == {"Markdown", "JSON"}
    exported = json.dumps(
        {
            "title": "Imported chat",
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        }
    )
    page.sidebar.get("file_uploader")[0].set_value(("chat.json", exported.encode(), "application/json")).run()
    assert not page.exception
    assert page.session_state["messages"][-1]["content"] == "Hello!"
    assert "Imported chat" in [s.title for s in store_of(data).summaries()]
    page.sidebar.get("file_uploader")[0].set_value(("bad.json", b"{oops", "application/json")).run()
    assert any("not a JSON file" in e.value for e in page.error)


@pytest.mark.slow
def test_reasoning_is_shown_collapsed_apart_from_the_answer(page: AppTest, engine, demo_model_dir: Path) -> None:
    script = load(demo_model_dir).tokenizer.encode(
        "<think>\nThe user wants a capital. It is Paris.\n</think>\n\nThe capital is **Paris**."
    )

    def scripted(prompt_ids, settings, stop):
        yield from script

    engine.generate = scripted
    send(page, QUESTION)
    reply = page.chat_message[-1]
    thought = reply.expander[0]
    assert thought.label == "Reasoning" and "It is Paris." in thought.markdown[0].value
    assert reply.markdown[-1].value == "The capital is **Paris**."
    assert "<think>" not in page.chat_message[-1].markdown[-1].value
    vars(engine).pop("generate")
    send(page, "Thanks")  # the reasoning is not sent back
    assert "The user wants" not in json.dumps(sent_history(page.session_state["messages"]))


@pytest.mark.slow
def test_a_tab_waits_for_anothers_reply_and_then_answers(page: AppTest, engine) -> None:
    engine.lock.acquire()  # another tab is generating
    threading.Timer(1.5, engine.lock.release).start()
    started = time.monotonic()
    send(page, QUESTION)
    assert time.monotonic() - started >= 1.5
    reply = page.session_state["messages"][-1]
    assert reply["content"] and reply["stats"]["new_tokens"] > 0


@pytest.mark.slow
def test_sidebar_shows_device_kernel_memory_speed_and_health(page: AppTest) -> None:
    send(page, QUESTION)
    health = [e for e in page.sidebar.expander if e.label.startswith("Health")]
    torch_line = next(m.value for m in health[0].markdown if "**torch**" in m.value)
    # The doctor's verdict for this machine: fine on a GPU; on a CPU-only machine a warning that says so.
    expected = "✓ **torch**" if torch.cuda.is_available() else "⚠ **torch**"
    assert torch_line.startswith(expected) and torch.__version__ in torch_line, torch_line
    assert torch.cuda.is_available() or "CPU-only mode" in torch_line
    panel = " ".join(c.value for c in page.sidebar.caption)
    assert "Device: **CPU" in panel and "GPTQ kernel:" in panel and "RAM:" in panel and "free" in panel
    assert re.search(r"KV cache: fp16 · context: [\d,]+ tokens", panel)  # "auto" keeps fp16 on the CPU
    assert page.sidebar.get("arrow_vega_lite_chart") or page.sidebar.get("vega_lite_chart")
    assert page.session_state["session_speeds"][0] > 0


@pytest.mark.slow
def test_chinese_interface(page: AppTest) -> None:
    page.sidebar.radio(key="language").set_value("zh").run()
    assert page.title[0].value == "💬 Qwen GPTQ 本地聊天"
    send(page, QUESTION)
    assert "生成 token" in page.chat_message[-1].caption[-1].value


@pytest.mark.slow
def test_password_gate(demo_model_dir: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTQ_CHAT_PASSWORD", "open sesame")
    monkeypatch.setenv(MODEL_ENV, str(demo_model_dir))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.chat_input and not at.chat_message  # nothing behind the gate is drawn
    at.text_input[0].input("open sesam")
    started = time.monotonic()
    at.button[0].click().run()
    assert time.monotonic() - started >= 1.0  # one second per wrong guess, as the README says
    assert "Wrong password." in [e.value for e in at.error] and not at.chat_input
    at.text_input[0].input("open sesame")
    at.button[0].click().run()
    assert at.chat_input and not at.error


@pytest.mark.slow
def test_page_refuses_to_serve_the_network_without_a_password(data: Path) -> None:
    streamlit_config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
        assert "Refusing to start" in at.error[0].value and not at.chat_input
    finally:
        streamlit_config.set_option("server.address", "127.0.0.1")


@pytest.mark.slow
def test_switching_models_from_the_page(two_models: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTQ_CHAT_HOME", str(two_models))
    monkeypatch.setenv(MODEL_ENV, str(two_models / "Qwen/Tiny-A-GPTQ-Int4"))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert "Tiny-A" in at.sidebar.selectbox(key="model_pick").value
    at.sidebar.selectbox(key="model_pick").set_value(str(two_models / "Qwen/Tiny-B-GPTQ-Int4")).run()
    assert not at.exception and not at.error
    assert "Tiny-B" in at.sidebar.selectbox(key="model_pick").value
    monkeypatch.setattr(holder, "device_memory", lambda device: holder.Memory("RAM", 0, 2**20, 2**30))
    at.sidebar.selectbox(key="model_pick").set_value(str(two_models / "Qwen/Tiny-A-GPTQ-Int4")).run()
    assert "does not fit" in at.error[0].value and "GiB" in at.error[0].value
    assert "Tiny-B" in at.sidebar.selectbox(key="model_pick").value  # refused: the current model stays
    at.sidebar.selectbox(key="kv_cache_pick").set_value("int8").run()  # the page runs the plain path on a CPU
    assert "fast engine's" in at.error[-1].value and "--kv-cache fp16" in at.error[-1].value
    assert at.sidebar.selectbox(key="kv_cache_pick").value == "auto"  # refused: the options stay the app's
    assert "KV cache: fp16" in " ".join(c.value for c in at.sidebar.caption)


@pytest.mark.slow
def test_load_error_is_shown_as_text_and_history_survives(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "Broken-GPTQ-Int4"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    monkeypatch.setenv(MODEL_ENV, str(broken))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["nodes"] = at.session_state["messages"] = linked([{"role": "user", "content": "kept message"}])
    at.run()
    assert not at.exception
    assert "not a quantized checkpoint" in at.error[0].value
    assert "kept message" in [m.markdown[0].value for m in at.chat_message]
