"""Whitespace and unicode cleanup of raw documents (the first step of the CPT preprocessing)."""

import re
import unicodedata

_KEPT_CONTROL_CHARACTERS = {"\n", "\t"}
_SPACES = re.compile(r"[^\S\n]+")  # any run of whitespace except newlines (tabs, NBSP, ...)
_SPACES_AROUND_NEWLINE = re.compile(r" *\n *")
_BLANK_LINE_RUNS = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFC-normalize `text`, drop control characters, collapse runs of spaces and of blank lines.

    Newlines become "\\n"; paragraphs stay separated by one blank line; lines lose their edge spaces.
    """
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "".join(char for char in text if char in _KEPT_CONTROL_CHARACTERS or unicodedata.category(char) != "Cc")
    text = _SPACES.sub(" ", text)
    text = _SPACES_AROUND_NEWLINE.sub("\n", text)
    return _BLANK_LINE_RUNS.sub("\n\n", text).strip()
