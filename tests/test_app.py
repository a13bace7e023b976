"""The page, driven through Streamlit's AppTest on the real demo model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from installed import MODEL_ENV
from prompt import encode_chat, with_system

APP = str(Path(__file__).resolve().parents[1] / "app.py")
pytestmark = pytest.mark.slow


@pytest.fixture
def page(demo_model_dir, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(MODEL_ENV, str(demo_model_dir))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    at.sidebar.slider(key="temperature").set_value(0.0)
    return at


def send(at: AppTest, text: str) -> AppTest:
    at.chat_input[0].set_value(text).run()
    assert not at.exception, at.exception
    return at


def assistant_texts(at: AppTest) -> list[str]:
    return [m.markdown[0].value for m in at.chat_message if m.name == "assistant"]


def test_message_gets_a_streamed_reply_with_stats(page: AppTest) -> None:
    send(page, "What is the capital of France?")
    texts = assistant_texts(page)
    assert texts[0] in ("Hello! How can I help you?", "你好！有什么可以帮您的？")  # greeting, shown only
    assert "Paris" in texts[-1]
    captions = [c.value for c in page.chat_message[-1].caption]
    assert any("new tokens" in c or "生成 token" in c for c in captions)


def test_greeting_is_never_sent_to_the_model(page: AppTest, demo_model_dir) -> None:
    send(page, "Hi")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    system = page.sidebar.text_area(key="system_prompt").value
    expected = len(encode_chat(tokenizer, with_system(system, [{"role": "user", "content": "Hi"}])))
    caption = page.chat_message[-1].caption[-1].value
    assert f"{expected} prompt tokens" in caption or f"{expected} 提示 token" in caption


def test_history_survives_reruns_and_clear_empties_it(page: AppTest) -> None:
    send(page, "What is the capital of France?")
    page.run()
    assert [m.name for m in page.chat_message] == ["assistant", "user", "assistant"]
    assert page.session_state["messages"][0]["content"] == "What is the capital of France?"
    page.sidebar.button(key="clear").click().run()
    assert page.session_state["messages"] == []
    assert [m.name for m in page.chat_message] == ["assistant"]


def test_settings_reach_generate(page: AppTest) -> None:
    page.sidebar.slider(key="max_new").set_value(3).run()
    send(page, "Tell me a long story about the sea.")
    stats = page.chat_message[-1].caption[-1].value
    assert "3 new tokens" in stats or "3 生成 token" in stats


def test_system_prompt_reaches_the_model(page: AppTest) -> None:
    send(page, "Hi")
    short = page.session_state["messages"][-1]["stats"]
    page.sidebar.button(key="clear").click().run()
    page.sidebar.text_area(key="system_prompt").input("You are a pirate. " * 10).run()
    send(page, "Hi")
    long = page.session_state["messages"][-1]["stats"]
    assert short != long  # the prompt-token count moved with the system prompt


def test_too_long_message_is_kept_and_explained(page: AppTest) -> None:
    page.sidebar.slider(key="context_length").set_value(256).run()
    page.sidebar.slider(key="max_new").set_value(64).run()
    send(page, "word " * 400)
    assert "too long" in page.error[0].value.lower() or "过长" in page.error[0].value
    assert page.session_state["messages"][-1]["content"] == "word " * 400
    send(page, "What is the capital of France?")  # the chat goes on, without the failed message
    assert "Paris" in assistant_texts(page)[-1]


def test_load_error_is_shown_as_text_and_history_survives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "Broken-GPTQ-Int4"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    monkeypatch.setenv(MODEL_ENV, str(broken))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["messages"] = [{"role": "user", "content": "kept message"}]
    at.run()
    assert not at.exception
    assert "not a quantized checkpoint" in at.error[0].value
    assert "kept message" in [m.markdown[0].value for m in at.chat_message]
