"""Text out of the files a user attaches to a message: PDF (pypdf), DOCX (python-docx) and plain text.

`extract` is the one entry point. It either returns a `Document` or raises `UnreadableFile`, whose `reason` is a
stable code (for a translated message) and whose text is an English message for the user; nothing else escapes,
whatever the bytes, so a bad file changes nothing but the message shown.
"""

from __future__ import annotations

import codecs
import io
import logging
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
TEXT_EXTENSIONS = (
    ".txt", ".md", ".markdown", ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".xml", ".html",
    ".py", ".js", ".ts", ".java", ".c", ".cpp", ".h", ".go", ".rs", ".sh", ".sql", ".log", ".ini", ".cfg",
)  # fmt: skip
# What the attach widget accepts (st.chat_input's file types take these as they are).
SUPPORTED_EXTENSIONS = (".pdf", ".docx", *TEXT_EXTENSIONS)

# A DOCX is a zip of XML; python-docx reads its parts whole into memory. A real one with 50 MB of text or images
# unpacks to a few hundred MB at most and its XML packs 5-20 times smaller; a zip bomb packs gigabytes of
# repeated bytes a thousand times smaller. zipfile never unpacks a member past its declared size, so checking
# the declared sizes before python-docx opens the file is enough.
MAX_DOCX_UNPACKED_BYTES = 256 * 1024 * 1024
MAX_DOCX_RATIO = 100  # unpacked / packed, for members over 1 MiB (small ones cannot hurt)
# Text files: more than this share of control characters (tabs, newlines and form feeds aside) means binary.
MAX_CONTROL_SHARE = 0.01
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
TEXT_ENCODINGS = ("utf-8-sig", "gb18030")  # UTF-8 (a BOM or not), then what Chinese Windows saves

Reason = Literal["too_large", "unsupported", "encrypted", "corrupt", "no_text_layer", "empty", "binary", "zip_bomb"]
Kind = Literal["pdf", "docx", "text"]


class UnreadableFile(ValueError):
    """A file that gives no text: `reason` is a stable code, the message says what to do, in English."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Document:
    """An attached file's text, page by page (one page for text files, and for DOCX files Word never paged)."""

    name: str
    kind: Kind
    pages: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(self.pages)

    @property
    def page_count(self) -> int:
        return len(self.pages)

    @property
    def chars(self) -> int:
        return len(self.text)


def extract(name: str, data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Document:
    """The text of the file `name` holding `data`; raises `UnreadableFile` (only) for a file that gives none."""
    if len(data) > max_bytes:
        raise UnreadableFile(
            "too_large",
            f"{name} is {len(data) / 2**20:,.1f} MB; files up to {max_bytes / 2**20:,.0f} MB can be attached.",
        )
    extension = PurePath(name).suffix.lower()
    if extension == ".pdf":
        return Document(name, "pdf", _pdf_pages(name, data))
    if extension == ".docx":
        return Document(name, "docx", _docx_pages(name, data))
    if extension in TEXT_EXTENSIONS:
        return Document(name, "text", (_decode_text(name, data),))
    raise UnreadableFile(
        "unsupported",
        f"{name}: {extension or 'files without an extension'} cannot be attached. "
        f"Attach PDF, DOCX or text files ({', '.join(SUPPORTED_EXTENSIONS)}).",
    )


def _corrupt(name: str, what: str) -> UnreadableFile:
    return UnreadableFile("corrupt", f"{name} is not a readable {what} (damaged, or not really a {what}).")


def _pdf_pages(name: str, data: bytes) -> tuple[str, ...]:
    """Each page's text. An encrypted PDF is opened with the empty password first, as PDF viewers do."""
    from pypdf import PasswordType, PdfReader  # on first use: `python app.py` reads only the limits here

    started = time.perf_counter()
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise UnreadableFile(
                "encrypted",
                f"{name} is protected by a password. Save a copy without the password and attach that.",
            )
        # pypdf reads the two-byte codes of some CID fonts (fpdf2's, for one) as a NUL and a character.
        pages = tuple(page.extract_text().replace("\0", "") for page in reader.pages)
    except UnreadableFile:
        raise
    except Exception as error:  # pypdf meets damaged files with errors of many types, its own and Python's
        raise _corrupt(name, "PDF") from error
    log.info("Read %s: %d pages in %.2f s", name, len(pages), time.perf_counter() - started)
    if not any(page.strip() for page in pages):
        raise UnreadableFile(
            "no_text_layer",
            f"{name} has no text layer: its pages are probably scanned images. Run OCR on it first "
            "(e.g. ocrmypdf) and attach the result.",
        )
    return pages


def _docx_pages(name: str, data: bytes) -> tuple[str, ...]:
    """Paragraphs and tables in order, split into pages where Word last laid the document out (if it did)."""
    import docx  # on first use, as pypdf
    from docx.table import Table

    _refuse_zip_bomb(name, data)
    try:
        document = docx.Document(io.BytesIO(data))
        pages: list[list[str]] = [[]]
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                pages[-1] += ["\t".join(cell.text for cell in row.cells) for row in block.rows]
                continue
            if block.contains_page_break and pages[-1]:  # a paragraph a page break splits counts on its new page
                pages.append([])
            pages[-1].append(block.text)
    except Exception as error:  # python-docx and lxml meet damaged parts with errors of many types
        raise _corrupt(name, "DOCX file") from error
    texts = tuple("\n".join(page) for page in pages)
    if not any(text.strip() for text in texts):
        raise UnreadableFile("empty", f"{name} has no text.")
    return texts


def _refuse_zip_bomb(name: str, data: bytes) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise _corrupt(name, "DOCX file") from error
    unpacked = sum(member.file_size for member in members)
    ratios = [member.file_size / max(member.compress_size, 1) for member in members if member.file_size > 2**20]
    if unpacked > MAX_DOCX_UNPACKED_BYTES or max(ratios, default=0) > MAX_DOCX_RATIO:
        raise UnreadableFile(
            "zip_bomb",
            f"{name} would unpack from {len(data) / 2**20:,.1f} MB to {unpacked / 2**20:,.1f} MB, "
            "more than a real document does: it was not opened (a zip bomb?).",
        )


def _decode_text(name: str, data: bytes) -> str:
    """UTF-8, UTF-16 with a BOM or GB18030 text; bytes that are none of those, or hold NULs, are binary."""
    encodings = ("utf-16",) if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else TEXT_ENCODINGS
    text = next((decoded for encoding in encodings if (decoded := _decoded(data, encoding)) is not None), None)
    if text is None or "\0" in text or _control_share(text) > MAX_CONTROL_SHARE:
        raise UnreadableFile("binary", f"{name} is not a text file (it holds binary data).")
    if not text.strip():
        raise UnreadableFile("empty", f"{name} has no text.")
    return text


def _decoded(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return None


def _control_share(text: str) -> float:
    return len(_CONTROL.findall(text)) / max(len(text), 1)
