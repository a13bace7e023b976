"""The page's remote path: replies from an OpenAI-compatible server (serve.py on the demo model, on loopback)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit import config as streamlit_config
from streamlit.testing.v1 import AppTest

from gptq_chat.api.protocol import ServedModel
from gptq_chat.api.remote import RemoteError, RemoteModel, RemoteServer, list_models, stream_remote_reply
from gptq_chat.api.server import create_app
from gptq_chat.chat.conversations import DATA_ENV
from gptq_chat.chat.prompt import encode_chat, with_system
from gptq_chat.chat.reply import ChatSettings, stream_reply
from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.loading.loader import load
from gptq_chat.models.installed import MODEL_ENV
from tests.support.browser_app import free_port
from tests.support.live_server import serving

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[1] / "app.py")
KEY = "remote-key-5678"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Tell me a long story about the sea."}]
GREEDY = ChatSettings(sampling=SamplingSettings(max_new_tokens=24, temperature=0.0, stop_token_ids=(2,)))


@pytest.fixture(scope="module")
def server(served: ServedModel) -> Iterator[RemoteServer]:
    with serving(create_app(served, api_key=KEY)) as url:
        yield RemoteServer(f"{url}/v1", KEY)


def test_a_remote_reply_matches_the_local_one(server: RemoteServer, served: ServedModel, demo_model_dir: Path) -> None:
    loaded = load(demo_model_dir)
    local = stream_reply(loaded.scheduler, loaded.tokenizer, FRANCE, GREEDY)
    remote = stream_remote_reply(server, served.name, FRANCE, GREEDY)
    pieces = list(remote)
    assert len(pieces) > 1 and remote.text == "".join(pieces) and "Paris" in remote.text
    assert remote.text == "".join(local)
    assert (
        remote.stats.prompt_tokens
        == local.stats.prompt_tokens
        == len(encode_chat(served.tokenizer, with_system(GREEDY.system_prompt, FRANCE)))
    )
    assert remote.stats.new_tokens == local.stats.new_tokens and remote.stats.finish_reason == "stop"
    assert remote.stats.first_token_seconds is not None and remote.stats.total_seconds > 0


def test_the_sidebar_lists_the_servers_models(server: RemoteServer, served: ServedModel) -> None:
    assert list_models(server) == [RemoteModel(served.name, served.context_length)]
    host_only = RemoteServer(server.base_url.removeprefix("http://").removesuffix("/v1"), KEY)
    assert host_only.url == server.base_url and list_models(host_only) == list_models(server)


def test_remote_failures_say_what_to_fix(server: RemoteServer, served: ServedModel) -> None:
    wrong_key = RemoteServer(server.base_url, "wrong")
    with pytest.raises(RemoteError, match=r"refused the API key \(401\)"):
        list_models(wrong_key)
    with pytest.raises(RemoteError, match=r"refused the API key"):
        list(stream_remote_reply(wrong_key, served.name, FRANCE, GREEDY))
    with pytest.raises(RemoteError, match=r"has no model 'nope' \(404\)"):
        list(stream_remote_reply(server, "nope", FRANCE, GREEDY))
    nobody = RemoteServer(f"http://127.0.0.1:{free_port()}/v1")
    started = time.monotonic()
    with pytest.raises(RemoteError, match=r"Cannot reach http://127\.0\.0\.1:\d+/v1"):
        list_models(nobody)
    assert time.monotonic() - started < 5  # no retries while a person waits
    too_long = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(RemoteError, match=r"answered 400: This model's maximum context length is 4,096 tokens"):
        list(stream_remote_reply(server, served.name, too_long, GREEDY))


def test_stopping_a_remote_reply_frees_the_servers_slot(server: RemoteServer, served: ServedModel) -> None:
    long = ChatSettings(sampling=SamplingSettings(max_new_tokens=400, temperature=0.0))
    reply = stream_remote_reply(server, served.name, STORY, long)
    pieces = iter(reply)
    next(pieces), next(pieces)
    assert served.scheduler.stats().active == 1
    reply.stop.set()
    pieces.close()  # what the page does when Stop is pressed
    started = time.monotonic()
    while served.scheduler.stats().active:
        assert time.monotonic() - started < 3, "400 tokens take ~20 s here: the server must stop at once"
        time.sleep(0.02)


# -- the page, pointed at the server -----------------------------------------------------------------------


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The page in remote mode from its first run, with a local model that could not load: none is needed."""
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "no-such-model"))
    monkeypatch.delenv("GPTQ_CHAT_PASSWORD", raising=False)
    streamlit_config.set_option("server.address", "127.0.0.1")
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["backend"] = "remote"
    at.run()
    assert not at.exception, at.exception
    return at


def connect(at: AppTest, server: RemoteServer) -> None:
    at.sidebar.text_input(key="remote_url").input(server.base_url)
    at.sidebar.text_input(key="remote_key").input(server.api_key).run()
    assert not at.exception, at.exception


def test_the_page_chats_through_a_server(page: AppTest, server: RemoteServer, served: ServedModel) -> None:
    assert "Enter the server's address" in page.sidebar.info[0].value and not page.error
    connect(page, server)
    assert page.sidebar.selectbox(key="remote_model").value.id == served.name
    assert not [s for s in page.sidebar.slider if s.key == "context_length"]  # the server has its own window
    page.sidebar.slider(key="temperature").set_value(0.0)
    page.sidebar.slider(key="max_new").set_value(24).run()
    page.chat_input[0].set_value(FRANCE[0]["content"]).run()
    assert not page.exception, page.exception
    reply = page.session_state["messages"][-1]
    assert reply["role"] == "assistant" and "Paris" in reply["content"] and not reply.get("error")
    system = page.sidebar.text_area(key="system_prompt").value
    assert reply["stats"]["prompt_tokens"] == len(encode_chat(served.tokenizer, with_system(system, FRANCE)))
    assert reply["stats"]["model"] == served.name and reply["stats"]["new_tokens"] > 0
    assert "new tokens" in page.chat_message[-1].caption[-1].value


def test_a_server_that_goes_away_is_an_error_and_the_chat_survives(
    page: AppTest, server: RemoteServer, served: ServedModel
) -> None:
    with serving(create_app(served, api_key=KEY)) as url:
        connect(page, RemoteServer(f"{url}/v1", KEY))
        assert page.sidebar.selectbox(key="remote_model").value.id == served.name
    page.sidebar.slider(key="max_new").set_value(8).run()
    page.chat_input[0].set_value("Hi").run()  # the model list is still cached; the reply cannot come
    assert not page.exception, page.exception
    messages = page.session_state["messages"]
    assert messages[0] == {"id": 0, "parent": None, "role": "user", "content": "Hi"}
    assert "Cannot reach" in messages[-1]["error"] and "Cannot reach" in page.chat_message[-1].error[0].value
    connect(page, RemoteServer(server.base_url, "wrong"))
    assert "refused the API key" in page.sidebar.error[0].value
    assert [m.markdown[0].value for m in page.chat_message][1] == "Hi"  # history is still on screen
