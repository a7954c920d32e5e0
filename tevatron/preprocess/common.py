"""Helpers every preprocessing step shares: TSV-safe text and ids.

(Whether an output may be reused is decided by :mod:`tevatron.provenance`, like every other stage's.)
"""
from __future__ import annotations

from tevatron.files import InputError


# --------------------------------------------------------------------------- text fields
def tsv_safe(text: str) -> str:
    """``text`` with tabs and line breaks turned into spaces, so it fits one TSV field."""
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ").strip()


def real_title(title: str | None) -> str:
    """RocketQA marks a missing title with '-'; downstream, no title is the empty string."""
    title = (title or "").strip()
    return "" if title == "-" else title


def check_id(path, number: int | None, value: str, what: str) -> str:
    """An id that can be written into a TSV column (no tabs or line breaks)."""
    if any(ch in value for ch in "\t\r\n"):
        raise InputError(path, f"{what} {value!r} contains a tab or line break", number)
    return value
