"""Attached files from the chat input to the prompt: read once, kept in the message they came with, fitted to the room
the chat leaves, with what was read kept for the reply's statistics. Counted with Qwen's real tokenizer."""

from __future__ import annotations

import pytest

from gptq_chat.chat.attachments import (
    DOCUMENTS,
    chip,
    documents_estimated,
    documents_in_prompt,
    loaded,
    preview,
    read_files,
    saved,
    sources_record,
)
from gptq_chat.chat.documents import Document
from gptq_chat.chat.prompt import build_prompt
from gptq_chat.chat.retrieval import approx_tokens
from gptq_chat.engine.prefix_store import common_prefix
from tests.support.handbook import HANDBOOK_EN, QUESTIONS_EN

SYSTEM = "You are a helpful assistant."
NOTE = Document("note.txt", "text", ("The spare key is under the blue flowerpot by the back door.",))
HANDBOOK = Document("handbook.pdf", "pdf", HANDBOOK_EN)


def asked(question: str, *documents: Document) -> dict:
    return {"role": "user", "content": question, DOCUMENTS: list(documents)}


def prompt_of(tokenizer, history: list[dict], context: int, max_new: int = 256) -> tuple[list[int], tuple, int]:
    """What a reply sends: (prompt ids, sources, dropped messages), as `stream_reply` builds it."""
    messages, sources = documents_in_prompt(tokenizer, history, SYSTEM, context, max_new)
    prompt = build_prompt(tokenizer, messages, SYSTEM, context, max_new)
    return prompt.ids, sources, prompt.dropped_messages


def test_a_small_file_goes_in_whole_and_stays_where_it_was_attached_turn_after_turn(qwen_tokenizer) -> None:
    first, sources, _ = prompt_of(qwen_tokenizer, [asked("Where is the key?", NOTE)], 4096)
    assert "blue flowerpot" in qwen_tokenizer.decode(first)
    assert sources_record(sources) == [{"name": "note.txt", "pages": "1", "whole": True, "chunks": 0}]
    later = [asked("Where is the key?", NOTE), {"role": "assistant", "content": "Under the pot."}, asked("Which?")]
    second, sources, _ = prompt_of(qwen_tokenizer, later, 4096)
    assert len(sources) == 1 and sources[0].whole
    # The next turn's prompt begins with the first one (up to its final "assistant" header): the document's tokens
    # are a prefix the engine's cache still holds.
    assert common_prefix(first, second) >= len(first) - 3


def test_a_long_file_is_cut_to_the_room_the_chat_leaves_and_never_pushes_the_chat_out(qwen_tokenizer) -> None:
    history = [
        asked("Read this handbook.", HANDBOOK),
        {"role": "assistant", "content": "Done. Ask me anything about it."},
        asked(QUESTIONS_EN[0][0]),
    ]
    context, max_new = 2048, 256
    ids, sources, dropped = prompt_of(qwen_tokenizer, history, context, max_new)
    assert dropped == 0 and len(ids) <= context - max_new
    assert len(ids) >= context - max_new - 160  # the room is used, within about one chunk
    (excerpt,) = sources
    assert not excerpt.whole and 0 < len(excerpt.pages) < 40
    text = qwen_tokenizer.decode(ids)
    assert text.index('<document name="handbook.pdf"') < text.index("Read this handbook.")  # in its own message
    assert text.count("<document") == 1


def test_files_of_messages_dropped_to_fit_take_no_room(qwen_tokenizer) -> None:
    filler = "word " * 1000
    history = [
        asked("An old question about the note.", NOTE),
        {"role": "assistant", "content": filler},
        asked("A new question."),
    ]
    ids, sources, dropped = prompt_of(qwen_tokenizer, history, 1024, 64)
    assert dropped == 2 and sources == () and "flowerpot" not in qwen_tokenizer.decode(ids)


def test_a_server_without_a_tokenizer_here_gets_the_files_fitted_by_estimate() -> None:
    messages, sources = documents_estimated([asked(QUESTIONS_EN[0][0], HANDBOOK)], SYSTEM, 2048, 256)
    assert len(sources) == 1 and not sources[0].whole
    assert messages[0]["content"].startswith('<document name="handbook.pdf"') and DOCUMENTS not in messages[0]
    small, sources = documents_estimated([asked("Where is the key?", NOTE)], SYSTEM, 2048, 256)
    assert sources[0].whole and "blue flowerpot" in small[0]["content"]


def test_files_are_read_once_and_refused_ones_are_named_with_their_reason() -> None:
    documents, refused = read_files(
        [
            ("note.txt", "钥匙在后门的蓝色花盆下面。".encode("gb18030")),
            ("photo.txt", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256))),
            ("big.md", b"x" * 2048),
        ],
        max_bytes=1024,
    )
    assert [d.pages for d in documents] == [("钥匙在后门的蓝色花盆下面。",)]
    assert [(r.name, r.reason) for r in refused] == [("photo.txt", "binary"), ("big.md", "too_large")]
    assert loaded(saved(documents[0])) == documents[0]  # as the chat store keeps it, and back


@pytest.mark.parametrize("context", [1024, 4096])
def test_the_prompt_with_files_always_fits(qwen_tokenizer, context: int) -> None:
    """Two files on two messages, a question about the second: whatever the window, the prompt fits it."""
    history = [
        asked("Here is a note.", NOTE),
        {"role": "assistant", "content": "Noted."},
        asked(QUESTIONS_EN[3][0], HANDBOOK),
    ]
    ids, sources, _ = prompt_of(qwen_tokenizer, history, context, 128)
    assert len(ids) <= context - 128 and sources


def test_a_saved_file_keeps_its_token_estimate_and_previews_from_its_first_pages() -> None:
    record = saved(HANDBOOK)
    assert chip(record) == ("handbook.pdf", 40, approx_tokens(HANDBOOK.text))
    assert preview(record, 100) == HANDBOOK.text[:100]
    assert preview(record, len(HANDBOOK_EN[0]) + 5) == HANDBOOK.text[: len(HANDBOOK_EN[0]) + 5]
    assert preview(saved(NOTE), 10_000) == NOTE.text
