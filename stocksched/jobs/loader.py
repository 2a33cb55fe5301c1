"""Reading jobs.yaml: its bytes, YAML 1.2 with positions, and every error at once.

- The YAML is read with PyYAML's safe loader (no tags that build objects), with YAML 1.2
  style plain scalars: ``yes``/``no``/``on``/``off``, ``17:30`` and ``2025-01-01`` stay
  strings and the field that wants a bool, a time or a date converts them. So a ticker
  ``ON`` is not read as ``true`` and an unquoted ``schedule: 17:30`` is not the number 1050.
- Every problem in a file is reported at once, as ``FILE:LINE:COL: jobs[2].schedule: msg``
  (see ``stocksched.jobs.check``). Problems with the file as a whole (missing, empty,
  over 5 MB, not UTF-8, not YAML, not a mapping) give one line.
- A valid file can still carry warnings (``LoadedJobs.warnings``, same position format):
  see ``stocksched.jobs.clashes``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from stocksched.jobs.check import FileChecker
from stocksched.jobs.clashes import latest_pointer_clashes
from stocksched.jobs.fields import show_value
from stocksched.jobs.gcpause import paused_gc
from stocksched.jobs.reuse import (
    JobsFileCache,
    SplitFile,
    chunk_key,
    load_in_groups,
    split_jobs,
)
from stocksched.jobs.spec import DEFAULTABLE_FIELDS, JobSpec, merge_defaults
from stocksched.jobs.yamltree import JobsLoader, construct, duplicate_keys, scan

MAX_FILE_BYTES = 5 * 1024 * 1024


class JobsFileError(Exception):
    """A jobs file that cannot be used; ``errors`` holds every problem found."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class LoadedJobs:
    """A validated jobs file: where it came from, its content hash, and its jobs in file order.

    ``warnings`` are problems that do not make the file invalid, each formatted like an
    error (``FILE:LINE:COL: path: message``): ``validate`` prints them, the daemon logs them.
    """

    path: Path
    sha256: str
    jobs: tuple[JobSpec, ...]
    warnings: tuple[str, ...] = ()


def load_jobs_file(
    path: str | Path,
    *,
    today: date | None = None,
    data: bytes | None = None,
    cache: JobsFileCache | None = None,
) -> LoadedJobs:
    """Load and validate; raise JobsFileError listing every error as FILE:LINE:COL: path: msg.

    ``today`` (default: today in UTC) is what absolute start dates are checked against.
    ``data``: the file's bytes already read with ``read_jobs_bytes`` (the reloader reads
    once, with a time limit, and hashes and validates the same bytes). ``cache``: the
    last clean load of the same file; jobs whose text did not change are not parsed or
    validated again (``stocksched.jobs.reuse``), the result is the same.
    """
    p = Path(path)
    raw = read_jobs_bytes(p) if data is None else data
    with paused_gc():
        return _load_bytes(raw, str(path), p, today or datetime.now(UTC).date(), cache)


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def _not_regular(name: str, mode: int) -> str | None:
    """The error for a path that is not a regular file, else None."""
    if stat.S_ISREG(mode):
        return None
    kind = next((k for test, k in _FILE_KINDS if test(mode)), "an unknown kind")
    return f"{name}: not a regular file ({kind})"


def read_jobs_bytes(path: str | Path) -> bytes:
    """The jobs file's bytes (at most ``MAX_FILE_BYTES + 1``), never blocking on the path.

    The type is checked with ``stat`` (following symlinks) before opening, so a FIFO,
    socket, device or directory is refused without being opened; the open itself is
    ``O_NONBLOCK`` and the type is checked again on the open descriptor, so a file
    swapped for a FIFO between the two cannot block either. Raises JobsFileError.
    """
    name = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise JobsFileError([f"{name}: file not found"]) from None
    except OSError as exc:
        raise JobsFileError([f"{name}: cannot read the file: {exc.strerror or exc}"]) from None
    problem = _not_regular(name, st.st_mode)
    if problem:
        raise JobsFileError([problem])
    if st.st_size > MAX_FILE_BYTES:
        raise JobsFileError([_too_big(name, st.st_size)])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise JobsFileError([f"{name}: file not found"]) from None
    except OSError as exc:
        raise JobsFileError([f"{name}: cannot read the file: {exc.strerror or exc}"]) from None
    try:
        problem = _not_regular(name, os.fstat(fd).st_mode)
        if problem:
            raise JobsFileError([problem])
        os.set_blocking(fd, True)  # a regular file: reads never wait anyway
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise JobsFileError([f"{name}: cannot read the file: {exc.strerror or exc}"]) from None
    finally:
        os.close(fd)


def _too_big(name: str, size: int) -> str:
    return f"{name}: file is {size} bytes; the limit is {MAX_FILE_BYTES} bytes (5 MB)"


def _load_bytes(
    data: bytes, name: str, path: Path, today: date, cache: JobsFileCache | None
) -> LoadedJobs:
    if len(data) > MAX_FILE_BYTES:
        raise JobsFileError([_too_big(name, len(data))])
    text = _decode(data, name)
    split = split_jobs(text)
    if cache is not None and split is not None and cache.matches(split, today):
        specs = _reuse(split, cache, today)
        if specs is not None:
            cache.fast_loads += 1
            sha = hashlib.sha256(data).hexdigest()
            return LoadedJobs(path=path, sha256=sha, jobs=tuple(specs))
    if cache is not None:
        cache.forget()  # refilled below only if this file loads cleanly
        cache.full_loads += 1
    grouped = load_in_groups(split, name, today) if split is not None else None
    if grouped is not None:
        if cache is not None and split is not None:
            cache.remember(split, today, grouped[1], grouped[0])
        sha = hashlib.sha256(data).hexdigest()
        return LoadedJobs(path=path, sha256=sha, jobs=tuple(grouped[0]))
    root, doc, duplicates, aliased = _parse_yaml(text, name)
    if not isinstance(doc, dict):
        mark = root.start_mark
        raise JobsFileError(
            [
                f"{name}:{mark.line + 1}:{mark.column + 1}: "
                f"the top level must be a mapping with a 'jobs' list, got {show_value(doc)}"
            ]
        )
    checker = FileChecker(name, root, today)
    checker.errors.extend(duplicates)
    jobs = checker.check(doc)
    if checker.errors:
        raise JobsFileError(checker.formatted())
    if cache is not None and split is not None and not aliased and _chunks_align(root, split):
        defaults = {k: v for k, v in (doc.get("defaults") or {}).items() if k in DEFAULTABLE_FIELDS}
        cache.remember(split, today, defaults, jobs)
    return LoadedJobs(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        jobs=tuple(jobs),
        warnings=tuple(checker.warnings(jobs)),
    )


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise JobsFileError(
            [
                f"{name}:{line}:{col}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); "
                "save the file as UTF-8"
            ]
        ) from None


# ---------------------------------------------------------------- YAML with positions

_JobsLoader = JobsLoader


def _parse_yaml(text: str, name: str) -> tuple[yaml.Node, Any, list[tuple[int, int, str]], bool]:
    """(root node, constructed document, duplicate-key errors as (line, col, message),
    whether any alias is used)."""
    loader = _JobsLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise JobsFileError([f"{name}: file is empty; it needs at least 'jobs:'"])
        duplicates, aliased = scan(root)
        doc = construct(loader, root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
        what = _yaml_problem(exc, text)
        raise JobsFileError([f"{name}:{where}invalid YAML: {what}"]) from None
    except yaml.YAMLError as exc:
        raise JobsFileError([f"{name}: invalid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    return root, doc, duplicates, aliased


def _yaml_problem(exc: yaml.MarkedYAMLError, text: str) -> str:
    """PyYAML splits a message into context and problem; join them into one phrase.

    A tab where YAML wants indentation is the commonest such mistake and PyYAML's words
    for it ("found character that cannot start any token") do not say so: it is named.
    """
    mark = exc.problem_mark
    lines = text.splitlines()
    if mark is not None and mark.line < len(lines) and "\t" in lines[mark.line][: mark.column + 1]:
        return "a tab character: YAML indents with spaces only, never tabs (replace it)"
    if exc.context and exc.problem:
        sep = " " if exc.problem.startswith("but ") else ": "
        return f"{exc.context}{sep}{exc.problem}"
    return exc.problem or exc.context or "syntax error"


# ---------------------------------------------------------------- the fast path (reuse)

FRESH_LIMIT = 200  # more new or changed jobs than this: one full parse is cheaper


def _reuse(split: SplitFile, cache: JobsFileCache, today: date) -> list[JobSpec] | None:
    """The file's specs from the cache plus its new chunks, or None to take the full path."""
    specs: list[JobSpec] = []
    fresh = 0
    for _line, text in split.chunks:
        spec = cache.specs.get(chunk_key(text))
        if spec is None:
            fresh += 1
            spec = _one_job(text, cache.defaults, today) if fresh <= FRESH_LIMIT else None
            if spec is None:
                return None
        specs.append(spec)
    if len({s.id for s in specs}) != len(specs) or latest_pointer_clashes(specs, today):
        return None  # the full path reports these with their positions
    cache.remember(split, today, cache.defaults, specs)
    return specs


def _one_job(text: str, defaults: dict[str, Any], today: date) -> JobSpec | None:
    """One job item parsed on its own and validated, or None if anything is wrong."""
    loader = _JobsLoader(text)
    try:
        node = loader.get_single_node()
        if node is None or next(duplicate_keys(node), None) is not None:
            return None
        doc = loader.construct_document(node)
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    if not (isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], dict)):
        return None
    try:
        return JobSpec.model_validate(merge_defaults(defaults, doc[0]), context={"today": today})
    except ValidationError:
        return None


def _chunks_align(root: yaml.Node, split: SplitFile) -> bool:
    """Whether job ``i`` of the parsed file starts in chunk ``i`` (aliases: ``scan``)."""
    jobs_node = next(
        (v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "jobs"), None
    )
    if not isinstance(jobs_node, yaml.SequenceNode) or len(jobs_node.value) != len(split.chunks):
        return False
    bounds = [line for line, _ in split.chunks[1:]] + [1 << 62]
    for item, (first, _), end in zip(jobs_node.value, split.chunks, bounds, strict=True):
        if not first <= item.start_mark.line < end:
            return False
    return True
