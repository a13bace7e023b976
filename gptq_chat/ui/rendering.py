"""Reply text → the Markdown Streamlit renders: LaTeX delimiters it understands, closed code fences.

Qwen writes formulas as `\\( … \\)` and `\\[ … \\]`; Streamlit's Markdown (KaTeX) reads `$ … $` and
`$$ … $$`. Code is never touched, so a backslash in a code block stays a backslash.
"""

from __future__ import annotations

import re

FENCE = re.compile(r"^[ \t]*(```|~~~)", re.MULTILINE)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
DISPLAY_MATH = re.compile(r"\\\[(.+?)\\\]", re.DOTALL)
INLINE_MATH = re.compile(r"\\\((.+?)\\\)", re.DOTALL)


def _math(prose: str) -> str:
    """Convert delimiters in text that holds no code."""
    prose = DISPLAY_MATH.sub(lambda m: f"\n$$\n{m.group(1).strip()}\n$$\n", prose)
    return INLINE_MATH.sub(lambda m: f"${m.group(1).strip()}$", prose)


def _prose(text: str) -> str:
    """Convert math outside inline code spans."""
    out, position = [], 0
    for match in INLINE_CODE.finditer(text):
        out += [_math(text[position : match.start()]), match.group(0)]
        position = match.end()
    return "".join([*out, _math(text[position:])])


def to_markdown(text: str, streaming: bool = False) -> str:
    """Markdown for `st.markdown`; while streaming, an open code fence is closed so the code shows as code."""
    out: list[str] = []
    position, fence = 0, None
    for match in FENCE.finditer(text):
        marker = match.group(1)
        if fence is None:
            out.append(_prose(text[position : match.start()]))
            position, fence = match.start(), marker
        elif marker == fence:
            line_end = text.find("\n", match.end())
            end = len(text) if line_end < 0 else line_end
            out.append(text[position:end])
            position, fence = end, None
    if fence is None:
        out.append(_prose(text[position:]))
    else:
        out.append(text[position:])
        if streaming:
            out.append(f"\n{fence}")
    return "".join(out)
