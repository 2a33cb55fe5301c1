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
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml

from stocksched.jobs.check import FileChecker
from stocksched.jobs.spec import JobSpec, show_value

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
    path: str | Path, *, today: date | None = None, data: bytes | None = None
) -> LoadedJobs:
    """Load and validate; raise JobsFileError listing every error as FILE:LINE:COL: path: msg.

    ``today`` (default: today in UTC) is what absolute start dates are checked against.
    ``data``: the file's bytes already read with ``read_jobs_bytes`` (the reloader reads
    once, with a time limit, and hashes and validates the same bytes).
    """
    p = Path(path)
    return _load_bytes(read_jobs_bytes(p) if data is None else data, str(path), p, today)


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


def _load_bytes(data: bytes, name: str, path: Path, today: date | None) -> LoadedJobs:
    if len(data) > MAX_FILE_BYTES:
        raise JobsFileError([_too_big(name, len(data))])
    text = _decode(data, name)
    root, doc, duplicates = _parse_yaml(text, name)
    if not isinstance(doc, dict):
        mark = root.start_mark
        raise JobsFileError(
            [
                f"{name}:{mark.line + 1}:{mark.column + 1}: "
                f"the top level must be a mapping with a 'jobs' list, got {show_value(doc)}"
            ]
        )
    checker = FileChecker(name, root, today or datetime.now(UTC).date())
    checker.errors.extend(duplicates)
    jobs = checker.check(doc)
    if checker.errors:
        raise JobsFileError(checker.formatted())
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

_YAML_BASE: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _JobsLoader(_YAML_BASE):  # type: ignore[misc]  # a base chosen at import time
    """PyYAML's safe loader (libyaml when present) with YAML 1.2 style plain scalars."""


def _yaml12_resolvers() -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    tag = "tag:yaml.org,2002:"
    replaced = {
        tag + "bool": re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        tag + "int": re.compile(
            r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"
        ),
        tag + "float": re.compile(
            r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
    }
    out: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items():
        kept = [(t, replaced.get(t, rx)) for t, rx in resolvers if t != tag + "timestamp"]
        if kept:
            out[first] = kept
    return out


_JobsLoader.yaml_implicit_resolvers = _yaml12_resolvers()


def _parse_yaml(text: str, name: str) -> tuple[yaml.Node, Any, list[tuple[int, int, str]]]:
    """(root node, constructed document, duplicate-key errors as (line, col, message))."""
    loader = _JobsLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise JobsFileError([f"{name}: file is empty; it needs at least 'jobs:'"])
        duplicates = list(_duplicate_keys(root))
        doc = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
        what = _yaml_problem(exc)
        raise JobsFileError([f"{name}:{where}invalid YAML: {what}"]) from None
    except yaml.YAMLError as exc:
        raise JobsFileError([f"{name}: invalid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    return root, doc, duplicates


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML splits a message into context and problem; join them into one phrase."""
    if exc.context and exc.problem:
        sep = " " if exc.problem.startswith("but ") else ": "
        return f"{exc.context}{sep}{exc.problem}"
    return exc.problem or exc.context or "syntax error"


def _duplicate_keys(node: yaml.Node) -> Iterator[tuple[int, int, str]]:
    """YAML keeps the last of two equal keys silently; a jobs file should not."""
    stack = [node]
    seen_nodes: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen_nodes:  # aliases share nodes
            continue
        seen_nodes.add(id(n))
        if isinstance(n, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in n.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    line = key.start_mark.line + 1
                    if key.value in first:
                        msg = f"duplicate key {key.value!r} (first on line {first[key.value]})"
                        yield (line, key.start_mark.column + 1, msg)
                    else:
                        first[key.value] = line
                stack.append(value)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
