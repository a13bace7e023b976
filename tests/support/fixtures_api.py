"""The API on the demo model under a real uvicorn on a loopback port: over one request at a time (transformers
generate) and over continuous batching (the fast engine, eager on the CPU, 4 slots), with its key and a raw poster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gptq_chat.api.protocol import ServedModel
from gptq_chat.api.server import create_app
from gptq_chat.loading.loader import load
from tests.support.live_server import serving

KEY = "test-key-1234"


@pytest.fixture(scope="session")
def base_url(served: ServedModel) -> Iterator[str]:
    with serving(create_app(served, api_key=KEY)) as url:
        yield url


@pytest.fixture(scope="session")
def batched(demo_model_dir: Path) -> Iterator[tuple[ServedModel, str]]:
    """The fast engine (eager on the CPU) decoding 4 sequences at once behind the scheduler."""
    served = ServedModel.of(load(demo_model_dir, engine="fast", slots=4))
    with serving(create_app(served, api_key=KEY)) as url:
        yield served, url


@pytest.fixture(params=["plain", "batched"])
def api(request: pytest.FixtureRequest, served: ServedModel, base_url: str) -> tuple[ServedModel, str]:
    """The API over one request at a time, then over continuous batching."""
    return (served, base_url) if request.param == "plain" else request.getfixturevalue("batched")


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)


def post(
    base_url: str, body: object, key: str | None = KEY, path: str = "/v1/chat/completions", **headers: str
) -> httpx.Response:
    """A raw POST (bytes as they are, anything else as JSON) with the key unless `key` is None."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(
        f"{base_url}{path}", content=content, headers={"Content-Type": "application/json", **headers}, timeout=60
    )
