"""Code blocks of README.md, so tests can run the examples users copy."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)


def code_blocks(section: str, language: str = "python") -> list[str]:
    """The ``language`` blocks under the ``## section`` heading of README.md."""
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else None]
    return [code for lang, code in _BLOCK.findall(body) if lang == language]


def doc_blocks(page: str, language: str = "python") -> list[str]:
    """The ``language`` blocks of ``docs/<page>``, in order."""
    text = (README.parent / "docs" / page).read_text()
    return [code for lang, code in _BLOCK.findall(text) if lang == language]
