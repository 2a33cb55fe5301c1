"""Reusing the last good load of a jobs file: its jobs split by text, each validated once.

A hot reload of a big file usually changes one job. ``split_jobs`` cuts the text into a
header (everything before ``jobs:``) and one text chunk per list item; ``JobsFileCache``
keeps, for the last file that loaded cleanly, each chunk's validated ``JobSpec``. The
loader's fast path (``stocksched.jobs.loader``) parses and validates only the chunks it
has not seen, each on its own, and falls back to the full parse -- which finds every
error with its exact position -- whenever it cannot be sure:

- the layout is not the plain one (``jobs:`` last at the top level, items ``- `` at one
  indent, every other line deeper, blank or a comment; no other line breaks than ``\\n``);
- the header changed, or the day (absolute start dates are checked against today);
- a new chunk does not parse on its own into one mapping (an alias to another job's
  anchor, a quote or bracket left open), has a duplicate key or is invalid;
- two jobs share an id, or a warning (``:latest`` clashes) needs positions;
- the full parse used aliases anywhere (a job's text then does not decide its value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from stocksched.jobs.spec import JobSpec

_ITEM = re.compile(r"( *)- ")
_OTHER_BREAKS = ("\r", "\x85", "\u2028", "\u2029")


@dataclass(frozen=True)
class SplitFile:
    """``header``: the text before ``jobs:``; ``chunks``: (first line, text) per job item."""

    header: str
    chunks: tuple[tuple[int, str], ...]


def _is_comment_or_blank(line: str) -> bool:
    stripped = line.lstrip(" ")
    return not stripped or stripped.startswith("#")


def _jobs_line(lines: list[str]) -> int | None:
    """Index of the ``jobs:`` line, if it is the last top-level key; else None."""
    at = None
    for n, line in enumerate(lines):
        if line[:1] not in ("", " ", "#"):
            if at is not None and line.startswith("- "):
                continue  # items at column 0
            if at is not None:
                return None  # a top-level line after jobs:
            if line.split("#", 1)[0].rstrip() == "jobs:":
                at = n
    return at


def split_jobs(text: str) -> SplitFile | None:
    """The file cut into header and per-job chunks, or None when the layout is not plain."""
    if any(b in text for b in _OTHER_BREAKS) or "\t" in text:
        return None
    lines = text.split("\n")
    at = _jobs_line(lines)
    if at is None:
        return None
    indent: str | None = None
    chunks: list[tuple[int, list[str]]] = []
    for n in range(at + 1, len(lines)):
        line = lines[n]
        m = _ITEM.match(line)
        if indent is None and m is not None:
            indent = m.group(1)
        if m is not None and m.group(1) == indent:
            chunks.append((n, [line]))
        elif _is_comment_or_blank(line) and chunks:
            chunks[-1][1].append(line)
        elif _is_comment_or_blank(line):
            continue
        elif indent is None or not line.startswith(indent + " ") or not chunks:
            return None
        else:
            chunks[-1][1].append(line)
    if not chunks:
        return None
    header = "\n".join(lines[: at + 1])
    return SplitFile(header, tuple((n, "\n".join(body) + "\n") for n, body in chunks))


@dataclass
class JobsFileCache:
    """Validated specs of the last file loaded cleanly, by their chunk's text.

    Held by whoever reloads the same file again (the daemon's ``JobsReloader``); only
    the last file's chunks are kept, so its size follows the file's.
    """

    header: str | None = None
    today: date | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    specs: dict[str, JobSpec] = field(default_factory=dict)
    fast_loads: int = 0  # loads that took the fast path (for tests and benchmarks)
    full_loads: int = 0

    def matches(self, split: SplitFile, today: date) -> bool:
        return bool(self.specs) and self.header == split.header and self.today == today

    def remember(
        self, split: SplitFile, today: date, defaults: dict[str, Any], specs: list[JobSpec]
    ) -> None:
        """Keep ``specs`` (one per chunk of ``split``, in order) for the next load."""
        self.header, self.today, self.defaults = split.header, today, defaults
        self.specs = {text: spec for (_, text), spec in zip(split.chunks, specs, strict=True)}

    def forget(self) -> None:
        self.header, self.today, self.defaults, self.specs = None, None, {}, {}
