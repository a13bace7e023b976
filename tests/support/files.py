"""Files for the attachment tests, built from scratch: real PDFs (fpdf2, pypdf's writer), DOCX files (python-docx),
zips, and one file of each kind that gives no text."""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Callable, Sequence

import docx
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

PAGES = (
    "Quarterly report of the Harbour Street bakery.",
    "Sales of rye bread rose by a fifth over the winter.",
    "The new oven in the back room was installed on 4 March by Jensen Ovens Ltd.",
    "Next quarter we open a second shop on Mill Lane.",
)


def pdf_bytes(pages: Sequence[str]) -> bytes:
    """A PDF with one page per text (a blank page for an empty one)."""
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def encrypted(data: bytes, user_password: str) -> bytes:
    """`data` (a PDF) encrypted with AES-256 by pypdf's writer; an empty user password opens it without asking."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password="owner secret", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx_bytes(build: Callable[[docx.document.Document], None]) -> bytes:
    document = docx.Document()
    build(document)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def bad_files() -> list[tuple[str, bytes, str]]:
    """(name, data, reason) for each kind of file that gives no text."""
    noise = random.Random(19).randbytes(4096)
    good_pdf = pdf_bytes(PAGES)
    zeros = io.BytesIO()
    with zipfile.ZipFile(zeros, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("word/document.xml", "w") as f:
        for _ in range(8):  # 8 MiB that pack into 8 KiB
            f.write(bytes(2**20))
    return [
        ("locked.pdf", encrypted(good_pdf, user_password="secret"), "encrypted"),
        ("cut.pdf", good_pdf[: len(good_pdf) // 2], "corrupt"),
        ("noise.pdf", noise, "corrupt"),
        ("scan.pdf", pdf_bytes(["", "", ""]), "no_text_layer"),
        ("noise.txt", noise, "binary"),
        ("program.txt", b"\x7fELF\x02\x01\x01\x00" + bytes(56) + b"some strings", "binary"),
        ("nul.txt", b"plain words " * 100 + b"\0", "binary"),
        ("controls.txt", b"text with a bell\x07 " * 4 + b"x" * 100, "binary"),
        ("blank.md", b" \n\t\n", "empty"),
        ("bomb.docx", zeros.getvalue(), "zip_bomb"),
        ("noise.docx", noise, "corrupt"),
        ("not-word.docx", zip_bytes({"readme.txt": b"just a zip"}), "corrupt"),
        ("blank.docx", docx_bytes(lambda document: None), "empty"),
        ("photo.jpeg", b"\xff\xd8\xff\xe0", "unsupported"),
        ("Makefile", b"all:\n", "unsupported"),
    ]
