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

import hashlib
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import yaml
from pydantic import ValidationError

from stocksched.jobs.check import FileChecker
from stocksched.jobs.clashes import latest_pointer_clashes
from stocksched.jobs.spec import DEFAULTABLE_FIELDS, JobSpec, merge_defaults
from stocksched.jobs.yamltree import JobsLoader, construct, scan

_OTHER_BREAKS = ("\r", "\x85", "\u2028", "\u2029")
_ITEM = re.compile(r"( *)- ")
_TOP_LEVEL = re.compile(r"^[^ #\n].*", re.M)  # a line that starts at column 0, not a comment
_CONTENT = re.compile(r"^(?! *(?:#|$))", re.M)  # the start of a line not blank or a comment


@dataclass(frozen=True)
class SplitFile:
    """``header``: the text before ``jobs:``; ``chunks``: (first line, text) per job item."""

    header: str
    chunks: tuple[tuple[int, str], ...]


def _jobs_line(text: str) -> int | None:
    """Offset just past the ``jobs:`` line if it is the last top-level key; else None."""
    at = None
    for m in _TOP_LEVEL.finditer(text):
        line = m.group()
        if at is not None and line.startswith("- "):
            continue  # items at column 0
        if at is not None:
            return None  # a top-level line after jobs:
        if line.split("#", 1)[0].rstrip() == "jobs:":
            at = m.end()
    return at


def split_jobs(text: str) -> SplitFile | None:
    """The file cut into header and per-job chunks, or None when the layout is not plain.

    Regular expressions over the whole text (a line-by-line loop took 0.1 s at 10,000
    jobs): items are the lines at the first item's indent starting ``- ``; every other
    line after ``jobs:`` must be deeper, blank or a comment. A job's chunk runs from its
    item line to the next item line; the last one to the end of the file.
    """
    if any(b in text for b in _OTHER_BREAKS) or "\t" in text:
        return None
    at = _jobs_line(text)
    if at is None or at >= len(text):
        return None
    body = at + 1  # past the newline ending the jobs: line
    first = _CONTENT.search(text, body)
    item = _ITEM.match(text, first.start()) if first is not None else None
    if item is None:
        return None
    indent = item.group(1)
    if re.compile(rf"^(?! *(?:#|$))(?!{indent}(?:- | ))", re.M).search(text, body) is not None:
        return None  # a line neither an item, deeper, blank nor a comment
    starts = [m.start() for m in re.compile(rf"^{indent}- ", re.M).finditer(text, body)]
    line = text.count("\n", 0, starts[0])
    chunks = []
    for begin, end in zip(starts, [*starts[1:], None], strict=True):
        chunks.append((line, text[begin:end] if end is not None else text[begin:] + "\n"))
        if end is not None:
            line += text.count("\n", begin, end)
    return SplitFile(text[:at], tuple(chunks))


def chunk_key(text: str) -> bytes:
    """What a chunk is known by: a 128-bit BLAKE2b digest of its text (33 bytes of key
    instead of the ~100-byte text, for as long as the daemon runs; 10,000 chunks hash
    in ~10 ms)."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


@dataclass
class JobsFileCache:
    """Validated specs of the last file loaded cleanly, by their chunk's text (its
    ``chunk_key``).

    Held by whoever reloads the same file again (the daemon's ``JobsReloader``); only
    the last file's chunks are kept, so its size follows the file's.
    """

    header: str | None = None
    today: date | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    specs: dict[bytes, JobSpec] = field(default_factory=dict)
    fast_loads: int = 0  # loads that took the fast path (for tests and benchmarks)
    full_loads: int = 0

    def matches(self, split: SplitFile, today: date) -> bool:
        return bool(self.specs) and self.header == split.header and self.today == today

    def remember(
        self, split: SplitFile, today: date, defaults: dict[str, Any], specs: list[JobSpec]
    ) -> None:
        """Keep ``specs`` (one per chunk of ``split``, in order) for the next load."""
        self.header, self.today, self.defaults = split.header, today, defaults
        self.specs = {
            chunk_key(text): spec for (_, text), spec in zip(split.chunks, specs, strict=True)
        }

    def forget(self) -> None:
        self.header, self.today, self.defaults, self.specs = None, None, {}, {}


# ---------------------------------------------------------------- a first load in groups

GROUP = 256  # job items composed, built and validated at a time


def load_in_groups(
    split: SplitFile, name: str, today: date
) -> tuple[list[JobSpec], dict[str, Any]] | None:
    """The specs of a plain-layout file and its defaults, built ``GROUP`` items at a time.

    Only one group's YAML node tree is alive at once (the whole file's tree, ~58 MiB at
    10,000 jobs, set the daemon's RSS). None -- take the full parse, which gives every
    error and warning its position -- on anything unusual: a directive, an alias, a
    duplicate key, items not where ``split`` put them, an invalid header or job, a
    duplicate id or a ``:latest`` clash.
    """
    if any(line.startswith("%") for line in split.header.splitlines()):
        return None
    header = _compose_plain(split.header)
    if header is None or not isinstance(header[1], dict) or header[1].get("jobs") is not None:
        return None
    checker = FileChecker(name, header[0], today)
    checker.check({**header[1], "jobs": []})
    if checker.errors:
        return None
    given = header[1].get("defaults") or {}
    defaults = {k: v for k, v in given.items() if k in DEFAULTABLE_FIELDS}
    specs: list[JobSpec] = []
    for at in range(0, len(split.chunks), GROUP):
        items = _group_items(split.chunks[at : at + GROUP])
        if items is None:
            return None
        try:
            specs.extend(
                JobSpec.model_validate(merge_defaults(defaults, item), context={"today": today})
                for item in items
            )
        except ValidationError:
            return None
    if len({s.id for s in specs}) != len(specs) or latest_pointer_clashes(specs, today):
        return None
    return specs, defaults


def _compose_plain(text: str) -> tuple[yaml.Node, Any] | None:
    """(root node, document) of ``text``; None if it is empty, has an error, a duplicate
    key or an alias."""
    loader = JobsLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        duplicates, aliased = scan(root)
        if duplicates or aliased:
            return None
        return root, construct(loader, root)
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()


def _group_items(group: tuple[tuple[int, str], ...]) -> list[dict[str, Any]] | None:
    """The job mappings of consecutive chunks parsed together, or None unless there is
    exactly one mapping per chunk, each starting in its own chunk."""
    parsed = _compose_plain("".join(text for _, text in group))
    if parsed is None or not isinstance(parsed[0], yaml.SequenceNode):
        return None
    nodes, items = parsed[0].value, parsed[1]
    if len(nodes) != len(group) or not all(isinstance(item, dict) for item in items):
        return None
    base = group[0][0]
    ends = [line for line, _ in group[1:]] + [group[-1][0] + group[-1][1].count("\n")]
    for node, (first, _), end in zip(nodes, group, ends, strict=True):
        if not first <= base + node.start_mark.line < end:
            return None
    return list(items)
