"""The card runs out of memory mid-service (`pytest -m gpu`): the request that found no room fails with a message
that says what to do (the API: 503, `out_of_memory`, `Retry-After`), and the engine serves the next requests with
the same tokens as before the fault."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch

from gptq_chat.engine.protocols import SamplingSettings
from gptq_chat.engine.scheduler import OutOfMemory
from gptq_chat.loading.loader import load_uncached

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SHORT = list(range(1000, 1032))
LONG = [1000 + (i * 7919) % 90_000 for i in range(6000)]
GREEDY = SamplingSettings(max_new_tokens=16, temperature=0.0, stop_token_ids=())


@contextmanager
def card_filled() -> Iterator[None]:
    """Take every free byte of the card in 64 MiB blocks (then smaller ones), as another program could; give it
    back afterwards."""
    blocks, size = [], 64 * 2**20
    while size >= 2**20:
        try:
            blocks.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
        except torch.cuda.OutOfMemoryError:
            size //= 2
    try:
        yield
    finally:
        del blocks
        torch.cuda.empty_cache()


def generated(scheduler, prompt: list[int]) -> list[int]:
    return list(scheduler.generate(prompt, GREEDY, threading.Event()))


def test_the_plain_path_fails_one_request_clearly_and_serves_on(qwen_shaped: Path) -> None:
    """transformers' `generate` allocates as it goes: with the card full, the long prompt cannot run."""
    loaded = load_uncached(qwen_shaped, backend="marlin", device="cuda", engine="plain", context_length=8192)
    before = generated(loaded.scheduler, SHORT)
    with card_filled(), pytest.raises(OutOfMemory, match="ran out of memory for this request \\(6,000 prompt"):
        generated(loaded.scheduler, LONG)
    assert generated(loaded.scheduler, SHORT) == before
    assert loaded.scheduler.stats().active == loaded.scheduler.stats().waiting == 0


def test_the_fast_engine_keeps_its_graphs_through_a_fault(qwen_shaped: Path) -> None:
    """The engine's buffers and graphs are allocated at load: a full card either leaves its requests running, or
    fails the one whose prefill needed more; either way the next requests give the same tokens as before. One slot:
    the short prompt overwrites the start of the long one's cache, so a slot that claimed the long prompt's K/V
    after a prefill cut short would answer it from the short one's."""
    loaded = load_uncached(qwen_shaped, backend="marlin", device="cuda", engine="fast", context_length=8192, slots=1)
    before_long, before_short = generated(loaded.scheduler, LONG), generated(loaded.scheduler, SHORT)
    with card_filled():
        try:
            during = generated(loaded.scheduler, LONG)
        except OutOfMemory as fault:
            print(f"fast engine with a full card: {fault}")
        else:
            print("fast engine with a full card: served the 6,000-token prompt from its own memory")
            assert during == before_long
    assert generated(loaded.scheduler, LONG) == before_long
    assert generated(loaded.scheduler, SHORT) == before_short


def test_the_api_answers_503_with_retry_after_and_serves_on(qwen_shaped: Path) -> None:
    from gptq_chat.api.protocol import ServedModel
    from gptq_chat.api.server import create_app
    from tests.support.live_server import serving

    loaded = load_uncached(qwen_shaped, backend="marlin", device="cuda", engine="plain", context_length=8192)
    served = ServedModel.of(loaded)
    served = replace(served, defaults=replace(served.defaults, stop_token_ids=()))
    long_text = served.tokenizer.decode(LONG)
    with serving(create_app(served)) as url:

        def ask(text: str) -> httpx.Response:
            body = {"model": served.name, "prompt": text, "max_tokens": 8, "temperature": 0}
            return httpx.post(f"{url}/v1/completions", json=body, timeout=300)

        before = ask("Once upon a time").json()["choices"][0]["text"]
        with card_filled():
            refused = ask(long_text)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "10", refused.text
        assert refused.json()["error"]["code"] == "out_of_memory"
        assert ask("Once upon a time").json()["choices"][0]["text"] == before
