"""Attached files to text: real PDFs (fpdf2, pypdf's writer), DOCX files (python-docx) and text files, built here."""

from __future__ import annotations

import contextlib
import inspect
import io
import random
import zipfile
from pathlib import Path

import docx
import pytest
from docx.oxml import OxmlElement
from fpdf import FPDF

from gptq_chat.chat import documents
from gptq_chat.chat.documents import DEFAULT_MAX_BYTES, SUPPORTED_EXTENSIONS, UnreadableFile, extract
from tests.support.files import PAGES, bad_files, docx_bytes, encrypted, pdf_bytes

NOTO_CJK = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")


def test_pdf_text_comes_page_by_page() -> None:
    document = extract("report.pdf", pdf_bytes(PAGES))
    assert (document.name, document.kind, document.page_count) == ("report.pdf", "pdf", 4)
    assert "installed on 4 March by Jensen Ovens Ltd." in document.pages[2]
    assert "Jensen" not in document.pages[1] + document.pages[3]
    assert document.text.index("rye bread") < document.text.index("Jensen") < document.text.index("Mill Lane")
    assert document.chars == len(document.text)


def test_chinese_pdf_text_comes_without_the_nuls_pypdf_reads_between_characters() -> None:
    if not NOTO_CJK.is_file():
        pytest.skip(f"needs {NOTO_CJK} (Debian's fonts-noto-cjk, which env/test.sh installs)")
    pdf = FPDF()
    pdf.add_font("noto", fname=str(NOTO_CJK), collection_font_number=2)  # Simplified Chinese
    pdf.set_font("noto", size=11)
    pdf.add_page()
    pdf.multi_cell(0, 6, "员工每年享有十五天带薪年假。")
    assert extract("年假.pdf", bytes(pdf.output())).pages == ("员工每年享有十五天带薪年假。",)


def test_a_pdf_with_only_an_owner_password_opens_as_viewers_open_it() -> None:
    document = extract("report.pdf", encrypted(pdf_bytes(PAGES), user_password=""))
    assert "Jensen Ovens" in document.pages[2]


def test_docx_text_comes_with_its_tables_in_order() -> None:
    def build(document: docx.document.Document) -> None:
        document.add_heading("Opening hours", level=1)
        document.add_paragraph("The shop opens at seven.")
        table = document.add_table(rows=2, cols=2)
        for row, (day, hours) in zip(table.rows, [("Monday", "7-18"), ("Sunday", "closed")], strict=True):
            row.cells[0].text, row.cells[1].text = day, hours
        document.add_paragraph("Holidays are announced on the door.")

    document = extract("hours.docx", docx_bytes(build))
    assert (document.kind, document.pages) == (
        "docx",
        ("Opening hours\nThe shop opens at seven.\nMonday\t7-18\nSunday\tclosed\nHolidays are announced on the door.",),
    )


def test_docx_pages_follow_the_page_breaks_word_rendered() -> None:
    def build(document: docx.document.Document) -> None:
        document.add_paragraph("First page.")
        run = document.add_paragraph().add_run("Second page.")
        run._r.insert(0, OxmlElement("w:lastRenderedPageBreak"))  # what Word writes where it started a page

    assert extract("two.docx", docx_bytes(build)).pages == ("First page.", "Second page.")


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ("年假为十五天，须提前两周申请。\n".encode("gb18030"), "年假为十五天，须提前两周申请。\n"),
        ("\ufeffnaïve café, 年假".encode(), "naïve café, 年假"),
        ("résumé\r\n".encode("utf-16"), "résumé\r\n"),
    ],
    ids=["gb18030", "utf-8 with a BOM", "utf-16 with a BOM"],
)
def test_text_files_decode_in_their_encoding(data: bytes, text: str) -> None:
    assert extract("notes.txt", data).pages == (text,)


def test_the_size_limit_is_50_mib_by_default_and_applies_to_every_kind() -> None:
    assert DEFAULT_MAX_BYTES == 50 * 2**20
    assert inspect.signature(extract).parameters["max_bytes"].default == DEFAULT_MAX_BYTES
    for name in ("big.txt", "big.pdf", "big.docx", "big.exe"):
        with pytest.raises(UnreadableFile) as refused:
            extract(name, b"a" * 1001, max_bytes=1000)
        assert refused.value.reason == "too_large"
    assert extract("small.txt", b"a" * 1000, max_bytes=1000).chars == 1000


BAD_FILES = bad_files()


@pytest.mark.parametrize(("name", "data", "reason"), BAD_FILES, ids=[name for name, _, _ in BAD_FILES])
def test_a_bad_file_raises_one_error_with_its_reason(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(UnreadableFile) as refused:
        extract(name, data)
    assert refused.value.reason == reason
    assert str(refused.value).startswith(name)


def test_a_docx_that_unpacks_past_the_limit_is_refused_before_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Incompressible members (photos) pass the ratio check; their total is checked too."""
    real = docx_bytes(lambda document: document.add_paragraph("Hello."))
    monkeypatch.setattr(documents, "MAX_DOCX_UNPACKED_BYTES", len(real) + 2**16)
    photos = io.BytesIO(real)
    with zipfile.ZipFile(photos, "a") as archive:
        archive.writestr("word/media/image1.png", random.Random(1).randbytes(2**17))
    with pytest.raises(UnreadableFile) as refused:
        extract("album.docx", photos.getvalue())
    assert refused.value.reason == "zip_bomb"


def test_damaged_files_give_text_or_unreadable_file_and_nothing_else() -> None:
    """Cuts and overwritten bytes in a real PDF and DOCX: pypdf alone raises NotImplementedError, AttributeError,
    TypeError and its own errors for these, zipfile and zlib theirs."""
    pdf = pdf_bytes(PAGES)
    word = docx_bytes(lambda document: document.add_paragraph("Hello."))
    rng = random.Random(7)
    for name, data in [("report.pdf", pdf)] * 40 + [("report.docx", word)] * 20:
        damaged = bytearray(data[: rng.randrange(len(data))] if rng.random() < 0.2 else data)
        for _ in range(rng.randrange(1, 6)):
            damaged[rng.randrange(len(damaged))] = rng.choice(b"0123456789 /<>[]()Robj")
        with contextlib.suppress(UnreadableFile):
            extract(name, bytes(damaged))


def test_supported_extensions_are_lowercase_with_a_dot_and_cover_each_kind() -> None:
    assert all(extension.startswith(".") and extension == extension.lower() for extension in SUPPORTED_EXTENSIONS)
    assert {".pdf", ".docx", ".txt", ".md", ".py", ".csv", ".json"} <= set(SUPPORTED_EXTENSIONS)
    assert extract("SCRIPT.PY", b"print('hi')\n").kind == "text"
