"""A first chat on a fresh set-up, run by that set-up's own Python (tests/test_setup_gpu.py starts it):

    .venv/bin/python -m tests.support.first_chat page MODEL RESULT.json
    .venv/bin/python -m tests.support.first_chat api MODEL RESULT.json SERVE.log

`page` opens the page as `python app.py --model MODEL` would (through Streamlit's AppTest) and sends one message;
`api` starts serve.py on MODEL (its output in SERVE.log) and asks it through the official `openai` client, whole and
streamed. What each saw is written to RESULT.json, for the test to check: the checks stay in the test, this only
drives.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from gptq_chat.models.home import REPO_ROOT
from tests.support.browser_app import free_port

APP = REPO_ROOT / "app.py"
QUESTION = "What is the capital of France?"
NEW_TOKENS = 16


def page(model: Path) -> dict[str, Any]:
    """The page's first run (the model loads), then one message and its streamed reply."""
    from streamlit import config as streamlit_config
    from streamlit.testing.v1 import AppTest

    sys.argv = [str(APP), "--model", str(model)]  # the page reads its flags as `python app.py --model M` passes them
    streamlit_config.set_option("server.address", "127.0.0.1")  # as .streamlit/config.toml says
    started = time.monotonic()
    at = AppTest.from_file(str(APP), default_timeout=600)
    at.run()
    opened = time.monotonic() - started
    if not at.exception:
        at.sidebar.slider(key="temperature").set_value(0.0)
        at.sidebar.slider(key="max_new").set_value(NEW_TOKENS).run()
        at.chat_input[0].set_value(QUESTION).run()
    messages = at.session_state.get("messages", [])
    reply = messages[-1] if messages and messages[-1]["role"] == "assistant" else {}
    return {
        "exceptions": [str(exception.value) for exception in at.exception],
        "opened_s": round(opened, 1),
        "model_panel": "\n".join(caption.value for caption in at.sidebar.caption),
        "reply": reply.get("content", ""),
        "stats": reply.get("stats", {}),
    }


def api(model: Path, log: Path) -> dict[str, Any]:
    """serve.py's start (until its model is loaded), then a chat completion and a streamed one."""
    import openai

    from gptq_chat.testing.soak import KEY, serve_process

    messages = [{"role": "user", "content": QUESTION}]
    started = time.monotonic()
    with serve_process(model, free_port(), log) as url:
        serving = time.monotonic() - started
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        name = client.models.list().data[0].id
        whole = client.chat.completions.create(model=name, messages=messages, max_tokens=NEW_TOKENS, temperature=0)
        chunks = list(
            client.chat.completions.create(
                model=name, messages=messages, max_tokens=NEW_TOKENS, temperature=0, stream=True
            )
        )
    return {
        "serving_s": round(serving, 1),
        "model": name,
        "reply": whole.choices[0].message.content,
        "completion_tokens": whole.usage.completion_tokens if whole.usage else 0,
        "streamed": "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices),
        "stream_chunks": len(chunks),
        "stream_finish": [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1:],
    }


def main(argv: list[str]) -> None:
    what, model, result = argv[0], Path(argv[1]), Path(argv[2])
    seen = page(model) if what == "page" else api(model, Path(argv[3]))
    result.write_text(json.dumps(seen, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
