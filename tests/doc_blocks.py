"""The fenced code blocks of the project's Markdown, for the tests that run what the docs show.

Owns: finding ```` ```lang ```` blocks in a Markdown file (their text, the line of the opening fence,
and the ``<!-- snippet: ... -->`` mark on the line before, if any). Does not own: running them
(tests/test_doc_snippets.py runs the Python blocks, tests/nginx_proxy.py builds nginx's configuration
from the nginx block of docs/deploying.md).

A mark is an HTML comment, invisible on the rendered page, on the last non-blank line before the
fence: ``<!-- snippet: continues -->`` or ``<!-- snippet: not-run (why) -->``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parent.parent

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_MARK = re.compile(r"^\s*<!--\s*snippet:\s*(?P<mark>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: ``line`` is the 1-based line of its opening fence."""

    path: Path
    line: int
    lang: str
    code: str
    mark: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path, lang: str | None = None) -> list[Block]:
    """Every fenced block of ``path`` (of language ``lang`` only, if given), in order."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        info = opening["info"].strip().split()
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not _closes(lines[end], fence):
            body.append(lines[end][len(indent) :] if lines[end].startswith(indent) else lines[end].lstrip())
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{index + 1}: the fence is never closed")
        block_lang = info[0] if info else ""
        if lang is None or block_lang == lang:
            blocks.append(Block(path, index + 1, block_lang, "\n".join(body) + "\n", _mark_before(lines, index)))
        index = end + 1
    return blocks


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(fence) and set(stripped) == {fence[0]}


def _mark_before(lines: list[str], index: int) -> str | None:
    before = index - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    found = _MARK.match(lines[before]) if before >= 0 else None
    return found["mark"] if found else None
