"""The Markdown docs render as written: every code fence closes where it is meant to.

A fence opened and never closed, or closed with text glued onto the closing backticks
(which CommonMark does not accept as a close), swallows the rest of the page into a code
block: headings, links and all. Fences are parsed as CommonMark reads them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

# Any indentation: fences inside list items are indented like the item's text.
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def parse_fences(text: str, name: str = "<text>") -> tuple[list[str], set[int]]:
    """(problems as ``name:LINE: message``, numbers of the lines inside code blocks)."""
    errors: list[str] = []
    inside: set[int] = set()
    open_at: tuple[int, str] | None = None  # (line, fence) of the block we are in
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if open_at is not None:
            inside.add(n)
        if m is None:
            continue
        fence, info = m["fence"], m["info"]
        if open_at is None:
            if fence[0] == "`" and "`" in info:
                errors.append(f"{name}:{n}: not a fence (backticks after it): {line.strip()!r}")
            else:
                open_at = (n, fence)
            continue
        opened, opener = open_at
        if fence[0] != opener[0] or len(fence) < len(opener):
            continue  # a shorter or other fence is content of this block
        if info.strip():
            errors.append(
                f"{name}:{n}: text after the closing fence of the block opened on line "
                f"{opened} (it does not close it): {line.strip()!r}"
            )
            continue
        open_at = None
    if open_at is not None:
        errors.append(f"{name}:{open_at[0]}: code fence never closed")
    return errors, inside


def fence_errors(text: str, name: str = "<text>") -> list[str]:
    return parse_fences(text, name)[0]


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_code_fence_is_closed(path: Path) -> None:
    assert fence_errors(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))) == []


def test_the_docs_are_all_checked() -> None:
    assert ROOT / "README.md" in DOCS and ROOT / "docs" / "deploying.md" in DOCS


def test_deploying_headings_are_outside_code_blocks() -> None:
    """The defect of issue 8 item 13: the "Logs" heading was inside a runaway block."""
    lines = (ROOT / "docs" / "deploying.md").read_text(encoding="utf-8").splitlines()
    _, inside = parse_fences("\n".join(lines))
    headings = {n: line for n, line in enumerate(lines, 1) if line.startswith("### ")}
    assert "### Logs" in headings.values()
    assert [line for n, line in headings.items() if n in inside] == []


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("```sh\necho hi\n", "<text>:1: code fence never closed"),
        (
            "```sh\necho hi\n``` More text.\n\n### Heading\n",
            "<text>:3: text after the closing fence of the block opened on line 1",
        ),
        ("``` `x` ```\n", "<text>:1: not a fence (backticks after it)"),
    ],
)
def test_fence_errors_finds_the_mistakes(text: str, error: str) -> None:
    errors = fence_errors(text)
    assert errors and errors[0].startswith(error), errors


def test_fence_errors_accepts_what_commonmark_accepts() -> None:
    ok = "````md\n```sh\ninner\n```\n````\n\n   ```ini\n   [Unit]\n   ```\n~~~\n```\n~~~\n"
    assert fence_errors(ok) == []
