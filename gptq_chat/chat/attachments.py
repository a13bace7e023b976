"""Files attached to the user's messages: read when attached, kept with the message, put into the prompt.

A user message may carry `documents` (a list of `Document`). When a reply is written, every document on the branch
goes into the message it was attached to, where it stays from turn to turn (so the engine's cache of that prompt
prefix keeps serving later questions): whole where they all fit in the room the chat leaves, else the chunks most
relevant to the newest question (`retrieval.fit_documents`). Which pages went in is kept with the reply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gptq_chat.chat.documents import Document, UnreadableFile, extract
from gptq_chat.chat.prompt import Message, build_prompt, encode_text
from gptq_chat.chat.retrieval import Excerpt, TokenCounter, approx_tokens, fit_documents, page_list, render_message

log = logging.getLogger(__name__)

DOCUMENTS = "documents"  # a user message's attached files, in the history given to a reply
ATTACHMENTS = "attachments"  # the same, as the page saves them with the message (JSON)
# Tokens held back per message that receives documents: a block split over several messages tokenizes a little
# differently from the one message `fit_documents` counted.
SPLIT_MARGIN = 8
TURN_TOKENS = 5  # what a chat template adds around each message (Qwen's: <|im_start|>role\n ... <|im_end|>\n)


@dataclass(frozen=True)
class Refused:
    """A file that could not be attached, and why (`UnreadableFile.reason`, for a message in the page's language)."""

    name: str
    reason: str
    message: str


def read_files(files: Sequence[tuple[str, bytes]], max_bytes: int) -> tuple[list[Document], list[Refused]]:
    """The text of each (name, bytes) file, and the files that give none."""
    documents, refused = [], []
    for name, data in files:
        started = time.perf_counter()
        try:
            documents.append(extract(name, data, max_bytes))
        except UnreadableFile as error:
            refused.append(Refused(name, error.reason, str(error)))
            continue
        log.info("Read %s (%d bytes) in %.2f s", name, len(data), time.perf_counter() - started)
    return documents, refused


def saved(document: Document) -> dict[str, Any]:
    """A document as the chat store keeps it (JSON), with its token estimate counted once for its chip."""
    return {
        "name": document.name,
        "kind": document.kind,
        "pages": list(document.pages),
        "tokens": approx_tokens(document.text),
    }


def checked(records: Any) -> list[dict[str, Any]]:
    """Saved documents as `saved` writes them, or ValueError (an imported file's may be anything)."""
    if not isinstance(records, list):
        raise ValueError("attachments must be a list")
    for record in records:
        if not (
            isinstance(record, dict)
            and isinstance(record.get("name"), str)
            and record.get("kind") in ("pdf", "docx", "text")
            and isinstance(record.get("pages"), list)
            and all(isinstance(page, str) for page in record["pages"])
            and isinstance(record.get("tokens"), int)
        ):
            raise ValueError(
                'each attachment needs a "name", a "kind" (pdf, docx or text), "pages" of text and its "tokens"'
            )
    return records


def loaded(record: Mapping[str, Any]) -> Document:
    return Document(str(record["name"]), record["kind"], tuple(str(page) for page in record["pages"]))


def chip(record: Mapping[str, Any]) -> tuple[str, int, int]:
    """(name, pages, ≈ tokens) of a saved document, for its chip on the message (drawn on every run of the page:
    nothing here reads the whole text)."""
    return str(record["name"]), len(record["pages"]), int(record["tokens"])


def preview(record: Mapping[str, Any], chars: int) -> str:
    """The first `chars` characters of a saved document's text, joining only the pages they need."""
    text = ""
    for page in record["pages"]:
        text += ("\n\n" if text else "") + page
        if len(text) >= chars:
            break
    return text[:chars]


def place_documents(
    history: Sequence[Mapping[str, Any]], count: TokenCounter, room: int
) -> tuple[list[Message], tuple[Excerpt, ...]]:
    """Plain messages with each message's documents in marked blocks before its text, using at most `room` tokens
    more than the messages alone, and what of each document went in (for the reply's statistics)."""
    messages: list[Message] = [{"role": m["role"], "content": m["content"]} for m in history]
    owners = [i for i, m in enumerate(history) for _ in m.get(DOCUMENTS) or ()]
    if not owners:
        return messages, ()
    documents = [document for m in history for document in m.get(DOCUMENTS) or ()]
    question = messages[-1]["content"]
    room_with_question = room + count(question) - SPLIT_MARGIN * len(set(owners))
    fitted = fit_documents(documents, question, count, room_with_question)
    for owner in sorted(set(owners)):
        mine = [excerpt for excerpt in fitted.excerpts if owners[excerpt.document] == owner]
        if mine:
            messages[owner]["content"] = render_message(messages[owner]["content"], mine)
    return messages, fitted.excerpts


def sources_record(excerpts: Sequence[Excerpt]) -> list[dict[str, Any]]:
    """What of each document a reply read, as kept with its statistics (JSON): name, pages, whole or not."""
    return [{"name": e.name, "pages": page_list(e.pages), "whole": e.whole, "chunks": len(e.chunks)} for e in excerpts]


def documents_in_prompt(
    tokenizer: Any, history: Sequence[Mapping[str, Any]], system_prompt: str, context_length: int, max_new_tokens: int
) -> tuple[list[Message], tuple[Excerpt, ...]]:
    """`place_documents` in the room the model's prompt leaves: the history is fitted first without its documents
    (the oldest exchanges dropped as usual); the documents of what is kept then share what is left."""
    if not any(m.get(DOCUMENTS) for m in history):
        return [{"role": m["role"], "content": m["content"]} for m in history], ()
    plain = build_prompt(tokenizer, history, system_prompt, context_length, max_new_tokens)
    kept = [{**m, DOCUMENTS: ()} if i < plain.dropped_messages else m for i, m in enumerate(history)]
    room = context_length - max_new_tokens - len(plain.ids)
    return place_documents(kept, lambda text: len(encode_text(tokenizer, text)), room)


def documents_estimated(
    history: Sequence[Mapping[str, Any]], system_prompt: str, context_length: int, max_new_tokens: int
) -> tuple[list[Message], tuple[Excerpt, ...]]:
    """`place_documents` by estimated counts, for a server whose tokenizer is not here (it has the last word on
    what fits)."""
    used = sum(approx_tokens(m["content"]) + TURN_TOKENS for m in [{"content": system_prompt}, *history])
    return place_documents(history, approx_tokens, context_length - max_new_tokens - used)
