"""The real Qwen1.5 tokenizer as a fixture, built once per test session (deriving its merges takes seconds)."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from gptq_chat.testing.qwen_tokenizer import build_qwen_tokenizer


@pytest.fixture(scope="session")
def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen1.5-Chat's tokenizer, rebuilt offline from dashscope's qwen.tiktoken; tests must not mutate it."""
    return build_qwen_tokenizer()
