"""The real Qwen tokenizers as fixtures, built once per test session (deriving their merges takes seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from gptq_chat.testing.qwen_tokenizer import build_qwen25_tokenizer, build_qwen_tokenizer

QWEN25_CHAT_TEMPLATE = Path(__file__).with_name("qwen2_5_chat_template.jinja")


@pytest.fixture(scope="session")
def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen1.5-Chat's tokenizer, rebuilt offline from dashscope's qwen.tiktoken; tests must not mutate it."""
    return build_qwen_tokenizer()


@pytest.fixture(scope="session")
def qwen25_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2.5-Instruct's tokenizer: the same BPE, Qwen2.5's added tokens and its published chat template."""
    return build_qwen25_tokenizer(QWEN25_CHAT_TEMPLATE.read_text(encoding="utf-8"))
