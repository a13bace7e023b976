"""Attached documents into the user's message: whole when they fit, else the chunks BM25 ranks highest.

`fit_documents` is the one entry point: given the documents, the question, the model's token counter and the room
the chat leaves, it returns the message to send (documents in marked blocks, then the question) and, per document,
which pages and chunks went in, for the reply's statistics. Chunks are ranked with `bm25s` over words (English and
other space-separated languages) and Chinese characters and character pairs, so that a Chinese question finds
Chinese text.
"""

from __future__ import annotations

import bisect
import html
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_CHINESE, STOPWORDS_EN

from gptq_chat.chat.documents import Document

log = logging.getLogger(__name__)

TokenCounter = Callable[[str], int]

CHUNK_TOKENS = 128
OVERLAP_TOKENS = 16
# Qwen's tokenizer spends about one token on 4-5 characters of English and on 1.5 characters of Chinese; chunk
# sizes are set in tokens through these, so that a chunk of Chinese holds about as many tokens as one of English.
CHARS_PER_TOKEN = 4.5
CJK_CHARS_PER_TOKEN = 1.5
# Counting a long text takes seconds (5 MB: 6 s), so documents are counted whole only where their estimate is within
# this many times the room. That changes nothing in the message: the chunks of documents that fit all fit, and they
# go in as the whole text.
WHOLE_COUNT_LIMIT = 2
_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_IDEOGRAPH = re.compile(f"[{_IDEOGRAPHS}]")
# Runs of ideographs, or words of letters and digits (\w less "_" and ideographs).
_TERM = re.compile(f"[{_IDEOGRAPHS}]+|[^\\W_{_IDEOGRAPHS}]+")
# Where a chunk may end, best first: a paragraph, a line, a sentence, a space.
_BREAKS = tuple(re.compile(pattern) for pattern in (r"\n\s*\n", r"\n", r"[.!?;。！？；]\s*", r"\s"))
_STOPWORDS = frozenset(STOPWORDS_EN) | frozenset(STOPWORDS_CHINESE)
ELISION = "[…]"  # between passages that are not contiguous in the document
_DOCUMENT_TAG = re.compile(r"<(/?document)", re.IGNORECASE)


@dataclass(frozen=True)
class Chunk:
    """A stretch of one document's text (`document.text[start:end]`) and the pages it covers (1-based)."""

    document: int  # the document's position in the list given to `fit_documents`
    index: int  # the chunk's position in its document
    start: int
    end: int
    pages: tuple[int, ...]
    text: str


@dataclass(frozen=True)
class Excerpt:
    """What of one document goes into the message: the whole text, or passages of the chosen chunks."""

    name: str
    page_count: int
    pages: tuple[int, ...]  # the pages used (1-based), every page when whole
    chunks: tuple[int, ...]  # the chunks used, by position in the document (empty when it went in whole unchunked)
    chunk_count: int  # the chunks the document was cut into (0 when it went in whole unchunked)
    passages: tuple[str, ...]
    document: int = 0  # the document's position in the list given to `fit_documents`

    @property
    def whole(self) -> bool:
        return len(self.pages) == self.page_count and self.chunk_count == len(self.chunks)


@dataclass(frozen=True)
class Fitted:
    """The user message to send, its token count, and what of each document it holds (documents left out: none)."""

    message: str
    tokens: int
    excerpts: tuple[Excerpt, ...]


def fit_documents(
    documents: Sequence[Document],
    question: str,
    count: TokenCounter,
    room: int,
    chunk_tokens: int = CHUNK_TOKENS,
) -> Fitted:
    """The message for `question` with as much of `documents` as `room` tokens hold, never more.

    `room` is what the chat leaves for this message, its question included (a question that alone needs more comes
    back alone); `count` is the model's token count of message text. Documents that all fit go in whole; else
    they are cut into chunks of about `chunk_tokens`, and the chunks BM25 ranks highest for the question go in, in
    document order, up to the first in rank order that would not fit.
    """
    whole = tuple(_whole_excerpt(document, position) for position, document in enumerate(documents))
    message = render_message(question, whole)
    if approx_tokens(message) <= WHOLE_COUNT_LIMIT * room and (tokens := count(message)) <= room:
        return Fitted(message, tokens, whole)
    started = time.perf_counter()
    chunks = [piece for position, document in enumerate(documents) for piece in chunk(document, position, chunk_tokens)]
    ranked = rank(chunks, question)

    def fitted(taken: int) -> Fitted:
        excerpts = _excerpts(documents, ranked[:taken], chunks)
        message = render_message(question, excerpts)
        return Fitted(message, count(message), excerpts)

    # The estimate adds up counts (chunks overlap, the markup grows): the message's own count settles it.
    taken = _estimate_taken(ranked, question, documents, count, room)
    best = fitted(taken)
    while best.tokens > room and taken > 0:
        taken -= 1
        best = fitted(taken)
    while taken < len(ranked) and (more := fitted(taken + 1)).tokens <= room:
        taken += 1
        best = more
    log.info(
        "Chose %d of %d chunks (%d tokens) in %.2f s", taken, len(chunks), best.tokens, time.perf_counter() - started
    )
    return best


def _estimate_taken(
    ranked: Sequence[Chunk], question: str, documents: Sequence[Document], count: TokenCounter, room: int
) -> int:
    """How many of the best chunks fit, adding up their counts and their documents' markup."""
    used = count(render_message(question, ()))
    chunk_counts = Counter(piece.document for piece in ranked)
    opened: set[int] = set()
    for taken, piece in enumerate(ranked):
        used += count(piece.text)
        if piece.document not in opened:  # the block around the document's first chunk, with no text in it
            document = documents[piece.document]
            block = Excerpt(
                document.name, document.page_count, piece.pages, (piece.index,), chunk_counts[piece.document], ("",)
            )
            used += count(render_block(block))
            opened.add(piece.document)
        if used > room:
            return taken
    return len(ranked)


def _whole_excerpt(document: Document, position: int) -> Excerpt:
    pages = tuple(range(1, document.page_count + 1))
    return Excerpt(document.name, document.page_count, pages, (), 0, (document.text.strip(),), position)


def _excerpts(documents: Sequence[Document], chosen: Sequence[Chunk], chunks: Sequence[Chunk]) -> tuple[Excerpt, ...]:
    """Per document with chosen chunks, in document order: its passages, overlapping chunks merged into one."""
    excerpts = []
    for position, document in enumerate(documents):
        mine = sorted((piece for piece in chosen if piece.document == position), key=lambda piece: piece.start)
        if not mine:
            continue
        spans: list[list[int]] = []
        for piece in mine:
            if spans and piece.start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], piece.end)
            else:
                spans.append([piece.start, piece.end])
        excerpts.append(
            Excerpt(
                name=document.name,
                page_count=document.page_count,
                pages=tuple(sorted({page for piece in mine for page in piece.pages})),
                chunks=tuple(piece.index for piece in mine),
                chunk_count=sum(1 for piece in chunks if piece.document == position),
                passages=tuple(document.text[start:end].strip() for start, end in spans),
                document=position,
            )
        )
    return tuple(excerpts)


def chunk(document: Document, position: int = 0, chunk_tokens: int = CHUNK_TOKENS) -> list[Chunk]:
    """`document` cut into chunks of about `chunk_tokens` that overlap a little, ending at a break where one is near."""
    text = document.text
    size = max(1, round(chunk_tokens * len(text) / max(approx_tokens(text), 1)))
    overlap = size * OVERLAP_TOKENS // chunk_tokens
    page_starts = _page_starts(document.pages)
    chunks: list[Chunk] = []
    start = _skip_space(text, 0)
    while start < len(text):
        end = _break_before(text, start, start + size)
        pages = tuple(range(bisect.bisect_right(page_starts, start), bisect.bisect_right(page_starts, end - 1) + 1))
        chunks.append(Chunk(position, len(chunks), start, end, pages, text[start:end]))
        if end >= len(text):
            break
        start = _skip_space(text, max(_break_after(text, end - overlap, end), start + 1))
    return chunks


def approx_tokens(text: str) -> int:
    """About how many tokens Qwen's tokenizer makes of `text`, counted in a fraction of the time (for a chip)."""
    ideographs = len(_IDEOGRAPH.findall(text))
    return round(ideographs / CJK_CHARS_PER_TOKEN + (len(text) - ideographs) / CHARS_PER_TOKEN)


def _page_starts(pages: Sequence[str]) -> list[int]:
    """Where each page begins in `Document.text`, which joins the pages with a blank line."""
    starts, offset = [], 0
    for page in pages:
        starts.append(offset)
        offset += len(page) + 2
    return starts


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _break_before(text: str, start: int, limit: int) -> int:
    """The end of the best break in the last third of `text[start:limit]`, or `limit` (the text's end, if sooner)."""
    if limit >= len(text):
        return len(text)
    window_start = start + (limit - start) * 2 // 3
    for pattern in _BREAKS:
        ends = [match.end() for match in pattern.finditer(text, window_start, limit)]
        if ends:
            return ends[-1]
    return limit


def _break_after(text: str, position: int, limit: int) -> int:
    """The end of the first break in `text[position:limit]`, so an overlap starts at a word, or `position`."""
    for pattern in _BREAKS:
        match = pattern.search(text, position, limit)
        if match:
            return match.end()
    return position


def rank(chunks: Sequence[Chunk], question: str) -> list[Chunk]:
    """`chunks`, the most relevant to `question` first by BM25 (ties, unrelated chunks among them: in order)."""
    if not chunks:
        return []
    index = bm25s.BM25()
    index.index([terms(piece.text) for piece in chunks], show_progress=False)
    query = terms(question)
    scores = index.get_scores(query) if query else np.zeros(len(chunks))
    order = sorted(range(len(chunks)), key=lambda i: -scores[i])  # a stable sort: ties stay in order
    return [chunks[i] for i in order]


def terms(text: str) -> list[str]:
    """The terms BM25 matches: lowercase words, and for Chinese each character and each pair of characters.

    Characters and their pairs rank the chunk that holds the answer higher than jieba's words do (the Chinese
    handbook of the tests, chunks of 128 tokens: mean reciprocal rank 0.92, against 0.86 for jieba's search mode
    and 0.81 for its plain mode), need no dictionary (jieba's takes a second to load), and cannot cut a name wrongly.
    """
    words: list[str] = []
    for run in _TERM.findall(text.lower()):
        words += [*run, *(run[i : i + 2] for i in range(len(run) - 1))] if _IDEOGRAPH.match(run) else [run]
    return [word for word in words if word not in _STOPWORDS]


def render_message(question: str, excerpts: Sequence[Excerpt]) -> str:
    """The user message: each excerpt in a marked block, then the question."""
    return "".join(f"{render_block(excerpt)}\n\n" for excerpt in excerpts) + question


def render_block(excerpt: Excerpt) -> str:
    """`<document name="…" pages="…">text</document>`; pages only for part of a document.

    Markup inside the text is left as it is, except `<document` and `</document`, written `&lt;document` and
    `&lt;/document`: a document that spells the closing tag cannot end its block early and pass what follows off
    as the user's own words. (Control tokens cannot come from document text at all: the prompt builder encodes
    message text as plain text.)
    """
    name = html.escape(excerpt.name, quote=True)
    pages = "" if excerpt.whole else f' pages="{page_list(excerpt.pages)}"'
    body = f"\n{ELISION}\n".join(_DOCUMENT_TAG.sub(r"&lt;\1", passage) for passage in excerpt.passages)
    return f'<document name="{name}"{pages}>\n{body}\n</document>'


def page_list(pages: Sequence[int]) -> str:
    """`1-3, 7` for pages 1, 2, 3 and 7."""
    ranges: list[list[int]] = []
    for page in pages:
        if ranges and page == ranges[-1][1] + 1:
            ranges[-1][1] = page
        else:
            ranges.append([page, page])
    return ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges)
