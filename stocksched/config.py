"""jobs.yaml: pydantic models of the desired state, and loading with FILE:LINE:COL errors.

The file (``jobs_file_json_schema()`` gives its JSON Schema)::

    version: 1            # optional; 1 is the only version
    defaults: {...}       # optional; any job field except id
    jobs: [...]           # required; may be empty

Decisions a user relies on:

- Durations (``window``, ``ttl``, ``catchup``, ``timeout``, ``retry_backoff``, ``jitter``) are
  strings such as ``30d``, ``1h30m``, ``90s`` (see ``durations``); a bare integer is seconds.
  They are written back in canonical form (``to_json``), so a spec read from Redis
  compares equal to the one loaded from the file.
- The fetch window is either ``window`` (a whole number of days ending today, in the job's
  time zone) or absolute ``start``/``end`` dates. ``start`` alone means "from start up to
  today". ``end`` without ``start`` and ``end`` before ``start`` are errors. With none of
  the three, the window is 30 days.
- ``defaults`` are merged under each job, key by key, except that ``window``/``start``/``end``
  are one group: a job that sets any of them takes none of them from the defaults (so a
  default ``window: 30d`` does not clash with a job's ``start:``). An explicit ``null`` in a
  job clears a default (``ttl: null``).
- The YAML is read with PyYAML's safe loader (no tags that build objects), with YAML 1.2
  style plain scalars: ``yes``/``no``/``on``/``off``, ``17:30`` and ``2025-01-01`` stay
  strings and the field that wants a bool, a time or a date converts them. So a ticker
  ``ON`` is not read as ``true`` and an unquoted ``schedule: 17:30`` is not the number 1050.
- Yahoo's limits on intraday history are enforced: 1m bars reach back at most 7 days,
  2m-90m bars 60 days, 60m/1h bars 730 days. For a relative window this checks its length;
  for absolute dates it checks ``start`` against today (only when loading a file, so a
  stored spec never becomes invalid merely because time passed).
- Every problem in a file is reported at once, as ``FILE:LINE:COL: jobs[2].schedule: msg``,
  pointing at the offending value (at the job for a missing field, at the ``defaults``
  entry for a value that came from there). Problems with the file as a whole (missing,
  empty, over 5 MB, not UTF-8, not YAML, not a mapping) give one line.
- A valid file can still carry warnings (``LoadedJobs.warnings``, same position format):
  two jobs that write the same ticker, prefix and interval with different windows whose
  ends can fall on the same day move one ``:latest`` pointer back and forth between their
  windows (see ``latest_pointer_clashes``). One line per pair of jobs, not per ticker.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import stat
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from stocksched.durations import DURATION_PATTERN, format_duration, parse_duration
from stocksched.schedule import Schedule, parse_schedule

Interval = Literal[
    "1m", "2m", "5m", "15m", "30m", "60m", "90m", "1h", "1d", "5d", "1wk", "1mo", "3mo"
]

MAX_FILE_BYTES = 5 * 1024 * 1024
DEFAULT_WINDOW = timedelta(days=30)
# How far back Yahoo serves intraday bars, in days (its documented chart-API limits).
INTRADAY_LIMIT_DAYS: dict[str, int] = {
    "1m": 7,
    "2m": 60,
    "5m": 60,
    "15m": 60,
    "30m": 60,
    "90m": 60,
    "60m": 730,
    "1h": 730,
}
_WINDOW_GROUP = frozenset({"window", "start", "end"})
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Yahoo symbols: AAPL, BRK-B, ^GSPC, EURUSD=X, GC=F, 7203.T, BTC-USD.
_TICKER_RE = re.compile(r"^\^?[A-Z0-9](?:[A-Z0-9.=-]{0,18}[A-Z0-9])?$")


# ---------------------------------------------------------------- field types


def _duration_in(value: object) -> timedelta:
    """Durations come from YAML as strings (``30d``) or integers of seconds."""
    if isinstance(value, timedelta):
        td = value
    elif isinstance(value, bool):
        raise ValueError(f"must be a duration like '90s' or '1h30m', got {value!r}")
    elif isinstance(value, int):
        td = timedelta(seconds=value)
    elif isinstance(value, str):
        td = parse_duration(value)
    else:
        raise ValueError(f"must be a duration like '90s' or '1h30m', got {_show(value)}")
    if td < timedelta(0):
        raise ValueError(f"must not be negative, got {value!r}")
    return td


_DURATION_JSON = {
    "anyOf": [
        {"type": "string", "pattern": DURATION_PATTERN},
        {"type": "integer", "minimum": 0, "description": "seconds"},
    ],
    "description": "Duration: 500ms, 90s, 15m, 1h30m, 30d, 2w (or an integer of seconds)",
}

Duration = Annotated[
    timedelta,
    BeforeValidator(_duration_in),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(_DURATION_JSON),
]


def _ticker_in(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"ticker must be a string, got {_show(value)}")
    symbol = value.strip().upper()
    if not _TICKER_RE.match(symbol):
        raise ValueError(
            f"invalid ticker {value!r}: Yahoo symbols are 1-20 letters, digits and . - = "
            "(optionally starting with ^), e.g. AAPL, BRK-B, ^GSPC, EURUSD=X"
        )
    return symbol


Ticker = Annotated[
    str,
    BeforeValidator(_ticker_in),
    WithJsonSchema({"type": "string", "pattern": _TICKER_RE.pattern.replace("A-Z", "A-Za-z")}),
]


def _show(value: object) -> str:
    """A short description of a bad input for messages (never the whole document)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@lru_cache(maxsize=1)
def _calendar_names() -> frozenset[str]:
    import exchange_calendars  # lazy: 0.3 s import, only when a job names a calendar

    return frozenset(exchange_calendars.get_calendar_names())


# ---------------------------------------------------------------- the job model


class JobSpec(BaseModel):
    """One entry of ``jobs:`` after ``defaults:`` are merged in. Frozen: specs are values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        description="Unique id: [a-z0-9][a-z0-9_-]{0,63}",
        json_schema_extra={"pattern": _ID_RE.pattern},
    )
    name: str | None = Field(default=None, min_length=1, description="Display name")
    tickers: tuple[Ticker, ...] = Field(description="Yahoo symbols, e.g. [AAPL, BRK-B, ^GSPC]")
    schedule: str = Field(
        description="5-field cron, 6-field cron with leading seconds, @hourly/@daily/@weekly/"
        "@monthly/@yearly, '@every 90s', or 'HH:MM'"
    )
    timezone: str = Field(default="UTC", description="IANA time zone of the schedule")
    window: Duration | None = Field(
        default=None, description="Lookback ending today, whole days (e.g. 30d); default 30d"
    )
    start: date | None = Field(default=None, description="Absolute start date (YYYY-MM-DD)")
    end: date | None = Field(default=None, description="Absolute end date; default today")
    interval: Interval = Field(default="1d", description="Bar interval")
    enabled: bool = Field(default=True, description="The original design's is_active")
    prefix: str = Field(default="scheduled_stock_data", description="Storage key prefix")
    source: Literal["yahoo", "demo"] = Field(
        default="yahoo", description="yahoo, or demo (synthetic daily bars, offline)"
    )
    ttl: Duration | None = Field(default=None, description="Expiry of the keys this job writes")
    catchup: Duration = Field(
        default=timedelta(hours=1),
        description="After downtime, run a slot missed less than this long ago; 0 disables",
    )
    overlap: Literal["skip", "queue"] = Field(
        default="skip", description="A slot due while the previous run is going: skip or queue"
    )
    timeout: Duration | None = Field(default=None, description="End a run after this long")
    retries: int = Field(default=0, ge=0, le=10, strict=True, description="Retries per ticker")
    retry_backoff: Duration = Field(
        default=timedelta(seconds=1), description="Base of the exponential retry backoff"
    )
    jitter: Duration = Field(
        default=timedelta(0), description="Random delay up to this before each scheduled run"
    )
    calendar: str | None = Field(
        default=None, description="exchange_calendars code (e.g. XNYS): skip closed days"
    )

    # ---- field rules (each reported at its own field)

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError(
                f"invalid id {v!r}: use 1-64 characters a-z 0-9 _ - starting with a letter or digit"
            )
        return v

    @field_validator("tickers")
    @classmethod
    def _check_tickers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one ticker is required")
        dups = [t for t, n in Counter(v).items() if n > 1]
        if dups:
            raise ValueError(f"duplicate ticker(s): {', '.join(dups)}")
        return v

    @field_validator("schedule", mode="before")
    @classmethod
    def _check_schedule(cls, v: object) -> object:
        if isinstance(v, int | float) and not isinstance(v, bool):
            raise ValueError(
                f'schedule must be a string; quote it, e.g. "0 17 * * 1-5" (got {v!r})'
            )
        if isinstance(v, str):
            parse_schedule(v)  # ScheduleError is a ValueError with a clear message
        return v

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r}: use an IANA name such as America/New_York or UTC"
            ) from None
        return v

    @field_validator("window")
    @classmethod
    def _check_window(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and (v <= timedelta(0) or v % timedelta(days=1)):
            raise ValueError(
                "window must be a positive whole number of days (e.g. 30d), "
                f"got {format_duration(v)}"
            )
        return v

    @field_validator("ttl", "timeout")
    @classmethod
    def _check_positive(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v <= timedelta(0):
            raise ValueError("must be longer than 0 (leave it out for none)")
        return v

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError(f"prefix must be non-empty with no whitespace, got {v!r}")
        return v

    @field_validator("calendar")
    @classmethod
    def _check_calendar(cls, v: str | None) -> str | None:
        if v is not None and v not in _calendar_names():
            close = difflib.get_close_matches(v.upper(), sorted(_calendar_names()), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else " (e.g. XNYS, XLON)"
            raise ValueError(f"unknown exchange calendar {v!r}{hint}")
        return v

    # ---- rules across fields

    @model_validator(mode="before")
    @classmethod
    def _default_window(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and all(data.get(k) is None for k in _WINDOW_GROUP):
            return {**data, "window": DEFAULT_WINDOW}
        return data

    @model_validator(mode="after")
    def _check_rules(self, info: ValidationInfo) -> Self:
        today = info.context.get("today") if isinstance(info.context, dict) else None
        problems = list(self._rule_problems(today))
        if problems:
            raise PydanticCustomError(
                "job_rule",
                "{message}",
                {"message": "; ".join(f"{f}: {m}" for f, m in problems), "problems": problems},
            )
        return self

    def _rule_problems(self, today: date | None) -> Iterator[tuple[str, str]]:
        """(field, message) for each rule that combines fields; ``today`` enables date checks."""
        if self.window is not None and (self.start is not None or self.end is not None):
            yield ("window", "give either window or start/end dates, not both")
        if self.end is not None and self.start is None:
            yield ("end", "end needs a start date")
        if self.start is not None and self.end is not None and self.end < self.start:
            yield ("end", f"end {self.end} is before start {self.start}")
        if self.source == "demo" and self.interval != "1d":
            yield (
                "source",
                f"source demo makes daily bars only; use interval 1d, not {self.interval}",
            )
        limit = INTRADAY_LIMIT_DAYS.get(self.interval)
        # A window of exactly `limit` days starts before Yahoo's cut-off (now - limit days):
        # the longest accepted window is one day shorter.
        if limit is not None and self.window is not None and self.window.days >= limit:
            yield (
                "window",
                f"window {format_duration(self.window)} is too long for interval {self.interval}: "
                f"Yahoo serves {self.interval} bars for the last {limit} days only",
            )
        if today is not None and self.start is not None:
            yield from self._date_problems(today, limit)

    def _date_problems(self, today: date, limit: int | None) -> Iterator[tuple[str, str]]:
        assert self.start is not None
        if self.start > today:
            yield ("start", f"start {self.start} is in the future (today is {today})")
        elif limit is not None and (today - self.start).days >= limit:
            yield (
                "start",
                f"start {self.start} is {(today - self.start).days} days ago: Yahoo serves "
                f"{self.interval} bars for the last {limit} days only",
            )

    # ---- behaviour

    @property
    def display_name(self) -> str:
        return self.name or self.id

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # ZoneInfo keeps its own cache of instances

    @property
    def parsed_schedule(self) -> Schedule:
        """The parsed schedule (cached per expression); use it for prev/slots_between."""
        return parse_schedule(self.schedule)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (durations as strings) that ``model_validate`` reads back."""
        return self.model_dump(mode="json")

    def window_dates(self, today: date) -> tuple[date, date]:
        """(start, end) of the fetch window; ``today`` is in the job's time zone."""
        if self.window is not None:
            return today - timedelta(days=self.window.days), today
        assert self.start is not None  # guaranteed by validation
        return self.start, self.end or today

    def next_fire(self, after: datetime) -> datetime:
        """First slot strictly after ``after`` (aware), in the job's time zone."""
        return self.parsed_schedule.next_after(after, self.zone)


JOB_FIELDS: tuple[str, ...] = tuple(JobSpec.model_fields)
DEFAULTABLE_FIELDS: tuple[str, ...] = tuple(f for f in JOB_FIELDS if f != "id")


class JobsFile(BaseModel):
    """The file's shape for Python callers holding already-parsed data (no line numbers).

    ``load_jobs_file`` is the way to read a file: it reports every error with its position.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    defaults: dict[str, Any] | None = None
    jobs: tuple[JobSpec, ...]

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not isinstance(data.get("defaults"), Mapping):
            return data
        defaults = data["defaults"]
        bad = sorted(str(k) for k in defaults if k not in DEFAULTABLE_FIELDS)
        if bad:
            raise ValueError(f"defaults: unknown field(s) {', '.join(bad)}")
        jobs = data.get("jobs")
        if isinstance(jobs, list | tuple):
            jobs = [merge_defaults(defaults, j) if isinstance(j, Mapping) else j for j in jobs]
        return {**data, "jobs": jobs}


def merge_defaults(defaults: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    """Job values over defaults; window/start/end are taken from one side only (see module doc)."""
    job_sets_window = any(k in job for k in _WINDOW_GROUP)
    merged = {k: v for k, v in defaults.items() if not (job_sets_window and k in _WINDOW_GROUP)}
    merged.update(job)
    return merged


# ---------------------------------------------------------------- errors and loading


class ConfigError(Exception):
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


# ---------------------------------------------------------------- warnings

#: Shared tickers a warning names before it says "(+N more)".
CLASH_TICKERS_SHOWN = 2


@dataclass(frozen=True)
class LatestClash:
    """Two jobs (indexes into the job list, ``first < second``) whose runs move the same
    ``:latest`` pointers, those of ``tickers`` (in the second job's order), to different
    windows."""

    first: int
    second: int
    tickers: tuple[str, ...]


_Window = tuple[timedelta | None, date | None, date | None]  # (window, start, end)


def latest_pointer_clashes(jobs: Sequence[JobSpec], today: date | None = None) -> list[LatestClash]:
    """Pairs of jobs whose ``:latest`` pointers fight, ordered by (second, first).

    A ticker's pointer is per prefix and interval (``keys.latest_key``) and moves to each
    window stored whose end is not before that of the window it names. Two jobs writing
    the same ticker, prefix and interval with different windows (``window``/``start``/
    ``end``) therefore flip it between their windows whenever their ends coincide: both
    end today (a ``window``, or ``start`` without ``end``), both end on the same date, or
    one ends today and the other on a date not yet past (``today``; None: assume so).
    A fixed window that ended before ``today`` (a backfill) never takes the pointer back
    from a rolling one, so it is not a clash.
    """
    # Only windows matter to whether two jobs fight, so compare distinct windows first:
    # thousands of jobs sharing one window (or many backfills) cost next to nothing.
    groups: dict[tuple[str, str], dict[_Window, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, job in enumerate(jobs):
        groups[(job.prefix, job.interval)][(job.window, job.start, job.end)].append(i)
    ticker_sets: dict[int, frozenset[str]] = {}
    clashes: list[LatestClash] = []
    for by_window in groups.values():
        windows = list(by_window)
        for n, a in enumerate(windows):
            for b in windows[n + 1 :]:
                if not _windows_fight(a, b, today):
                    continue
                for i in by_window[a]:
                    for j in by_window[b]:
                        first, second = min(i, j), max(i, j)
                        theirs = ticker_sets.setdefault(first, frozenset(jobs[first].tickers))
                        shared = tuple(t for t in jobs[second].tickers if t in theirs)
                        if shared:
                            clashes.append(LatestClash(first, second, shared))
    return sorted(clashes, key=lambda c: (c.second, c.first))


def _windows_fight(a: _Window, b: _Window, today: date | None) -> bool:
    """Whether two different windows can end on the same day (then the last write wins)."""
    end_a, end_b = a[2], b[2]  # None: the window ends today
    if end_a is None and end_b is None:
        return True
    if end_a is not None and end_b is not None:
        return end_a == end_b
    fixed = end_a if end_a is not None else end_b
    assert fixed is not None
    return today is None or fixed >= today


def _describe_window(job: JobSpec) -> str:
    if job.window is not None:
        return f"window {format_duration(job.window)}"
    if job.end is None:
        return f"start {job.start}"
    return f"{job.start}..{job.end}"


def load_jobs_file(
    path: str | Path, *, today: date | None = None, data: bytes | None = None
) -> LoadedJobs:
    """Load and validate; raise ConfigError listing every error as FILE:LINE:COL: path: msg.

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
    """The config error for a path that is not a regular file, else None."""
    if stat.S_ISREG(mode):
        return None
    kind = next((k for test, k in _FILE_KINDS if test(mode)), "an unknown kind")
    return f"{name}: not a regular file ({kind})"


def read_jobs_bytes(path: str | Path) -> bytes:
    """The jobs file's bytes (at most ``MAX_FILE_BYTES + 1``), never blocking on the path.

    The type is checked with ``stat`` (following symlinks) before opening, so a FIFO,
    socket, device or directory is refused without being opened; the open itself is
    ``O_NONBLOCK`` and the type is checked again on the open descriptor, so a file
    swapped for a FIFO between the two cannot block either. Raises ConfigError.
    """
    name = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError([f"{name}: file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read the file: {exc.strerror or exc}"]) from None
    problem = _not_regular(name, st.st_mode)
    if problem:
        raise ConfigError([problem])
    if st.st_size > MAX_FILE_BYTES:
        raise ConfigError([_too_big(name, st.st_size)])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError([f"{name}: file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read the file: {exc.strerror or exc}"]) from None
    try:
        problem = _not_regular(name, os.fstat(fd).st_mode)
        if problem:
            raise ConfigError([problem])
        os.set_blocking(fd, True)  # a regular file: reads never wait anyway
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read the file: {exc.strerror or exc}"]) from None
    finally:
        os.close(fd)


def load_jobs_text(
    text: str, filename: str = "<jobs.yaml>", *, today: date | None = None
) -> LoadedJobs:
    """Like ``load_jobs_file`` for text already in memory (tests, tools, the HTTP API)."""
    return _load_bytes(text.encode("utf-8"), filename, Path(filename), today)


def _too_big(name: str, size: int) -> str:
    return f"{name}: file is {size} bytes; the limit is {MAX_FILE_BYTES} bytes (5 MB)"


def _load_bytes(data: bytes, name: str, path: Path, today: date | None) -> LoadedJobs:
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([_too_big(name, len(data))])
    text = _decode(data, name)
    root, doc, duplicates = _parse_yaml(text, name)
    checker = _FileChecker(name, root, today or datetime.now(UTC).date())
    checker.errors.extend(duplicates)
    jobs = checker.check(doc)
    if checker.errors:
        raise ConfigError(checker.formatted())
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
        raise ConfigError(
            [
                f"{name}:{line}:{col}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); "
                "save the file as UTF-8"
            ]
        ) from None


# ---------------------------------------------------------------- YAML with positions

_YAML_BASE: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _JobsLoader(_YAML_BASE):
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
            raise ConfigError([f"{name}: file is empty; it needs at least 'jobs:'"])
        duplicates = list(_duplicate_keys(root))
        doc = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
        what = _yaml_problem(exc)
        raise ConfigError([f"{name}:{where}invalid YAML: {what}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{name}: invalid YAML: {exc}"]) from None
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


def _child(node: yaml.Node | None, key: str | int, want_key: bool = False) -> yaml.Node | None:
    """The value node (or key node) at ``key`` inside a mapping or sequence node."""
    if isinstance(node, yaml.MappingNode):
        found = None
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                found = k if want_key else v
        return found
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        child: yaml.Node = node.value[key]
        return child
    return None


def _descend(node: yaml.Node | None, keys: Iterable[str | int]) -> yaml.Node | None:
    for k in keys:
        deeper = _child(node, k)
        if deeper is None:
            return node
        node = deeper
    return node


# ---------------------------------------------------------------- whole-file checks

_TOP_KEYS = ("version", "defaults", "jobs")
# Stand-ins for invalid or missing required fields when re-checking cross-field rules.
_PLACEHOLDERS: dict[str, Any] = {"id": "placeholder", "tickers": ["X"], "schedule": "@daily"}


class _FileChecker:
    """Walks the parsed document and collects every error with its position."""

    def __init__(self, name: str, root: yaml.Node, today: date) -> None:
        self.name = name
        self.root = root
        self.context = {"today": today}
        self.errors: list[tuple[int, int, str]] = []
        self._seen: set[tuple[int, int, str]] = set()
        self.defaults_node: yaml.Node | None = None

    def add(self, node: yaml.Node | None, path: str, msg: str) -> None:
        mark = (node or self.root).start_mark
        entry = (mark.line + 1, mark.column + 1, f"{path}: {msg}" if path else msg)
        if entry not in self._seen:  # one bad default would otherwise repeat per job
            self._seen.add(entry)
            self.errors.append(entry)

    def formatted(self) -> list[str]:
        return [f"{self.name}:{ln}:{col}: {msg}" for ln, col, msg in sorted(self.errors)]

    def warnings(self, jobs: list[JobSpec]) -> list[str]:
        """Warning lines for a file without errors (so ``jobs[i]`` is the file's i-th job)."""
        jobs_node = _child(self.root, "jobs")
        out = []
        for clash in latest_pointer_clashes(jobs, self.context["today"]):
            first, second = jobs[clash.first], jobs[clash.second]
            node = _child(jobs_node, clash.second) or self.root
            names = ", ".join(clash.tickers)
            if len(clash.tickers) > CLASH_TICKERS_SHOWN + 1:  # "(+1 more)" saves nothing
                more = len(clash.tickers) - CLASH_TICKERS_SHOWN
                names = f"{', '.join(clash.tickers[:CLASH_TICKERS_SHOWN])} (+{more} more)"
            out.append(
                f"{self.name}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: "
                f"jobs[{clash.second}]: job {second.id!r} writes {names} with interval "
                f"{second.interval} under prefix {second.prefix!r} like jobs[{clash.first}] "
                f"(id {first.id!r}{_line_of(_child(jobs_node, clash.first))}) but with a "
                f"different window ({_describe_window(second)}, not {_describe_window(first)}): "
                "their :latest pointers will alternate between the two windows"
            )
        return out

    def check(self, doc: Any) -> list[JobSpec]:
        if not isinstance(doc, dict):
            mark = self.root.start_mark
            raise ConfigError(
                [
                    f"{self.name}:{mark.line + 1}:{mark.column + 1}: "
                    f"the top level must be a mapping with a 'jobs' list, got {_show(doc)}"
                ]
            )
        self._check_top_keys(doc)
        defaults = self._check_defaults(doc.get("defaults"))
        if "jobs" not in doc:
            self.add(self.root, "jobs", "required key is missing (write 'jobs: []' for no jobs)")
            return []
        jobs = doc["jobs"]
        jobs_node = _child(self.root, "jobs")
        if not isinstance(jobs, list):
            self.add(jobs_node, "jobs", f"must be a list of jobs, got {_show(jobs)}")
            return []
        specs = [
            self._check_job(i, job, defaults, _child(jobs_node, i)) for i, job in enumerate(jobs)
        ]
        self._check_unique_ids(jobs, jobs_node)
        return [s for s in specs if s is not None]

    def _check_top_keys(self, doc: dict[Any, Any]) -> None:
        for key in doc:
            if key not in _TOP_KEYS:
                self.add(
                    _child(self.root, str(key), want_key=True), str(key), _unknown(key, _TOP_KEYS)
                )
        version = doc.get("version", 1)
        if version != 1 or isinstance(version, bool):
            self.add(
                _child(self.root, "version"),
                "version",
                f"unsupported version {_show(version)}; this stocksched reads version 1",
            )

    def _check_defaults(self, defaults: Any) -> dict[str, Any]:
        self.defaults_node = _child(self.root, "defaults")
        if defaults is None:
            return {}
        if not isinstance(defaults, dict):
            self.add(
                self.defaults_node,
                "defaults",
                f"must be a mapping of job fields, got {_show(defaults)}",
            )
            return {}
        good: dict[str, Any] = {}
        for key, value in defaults.items():
            if key in DEFAULTABLE_FIELDS:
                good[key] = value
            elif key == "id":
                self.add(
                    _child(self.defaults_node, "id", want_key=True),
                    "defaults.id",
                    "id cannot have a default; every job needs its own",
                )
            else:
                self.add(
                    _child(self.defaults_node, str(key), want_key=True),
                    f"defaults.{key}",
                    _unknown(key, DEFAULTABLE_FIELDS),
                )
        return good

    def _check_job(
        self, i: int, job: Any, defaults: dict[str, Any], node: yaml.Node | None
    ) -> JobSpec | None:
        if not isinstance(job, dict):
            self.add(node, f"jobs[{i}]", f"each job must be a mapping of fields, got {_show(job)}")
            return None
        merged = merge_defaults(defaults, job)
        try:
            return JobSpec.model_validate(merged, context=self.context)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        for err in errors:
            self._report(i, job, node, err)
        if not any(err["type"] == "job_rule" for err in errors):
            self._check_rules_despite(i, job, node, merged, errors)
        return None

    def _check_rules_despite(
        self,
        i: int,
        job: dict[str, Any],
        node: yaml.Node | None,
        merged: dict[str, Any],
        errors: list[Any],
    ) -> None:
        """pydantic checks cross-field rules only once every field is valid; to report all
        problems at once, re-check the rules with the bad fields left at their defaults."""
        bad = {str(err["loc"][0]) for err in errors if err["loc"]}
        candidate = {k: v for k, v in merged.items() if k not in bad and k in JOB_FIELDS}
        candidate.update({k: v for k, v in _PLACEHOLDERS.items() if k in bad or k not in candidate})
        try:
            JobSpec.model_validate(candidate, context=self.context)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                if err["type"] == "job_rule":
                    for field, msg in err["ctx"]["problems"]:
                        if field not in bad:
                            self._report_field(i, job, node, (field,), msg, rule=True)

    def _report(self, i: int, job: dict[str, Any], node: yaml.Node | None, err: Any) -> None:
        if err["type"] == "job_rule":
            for field, msg in err["ctx"]["problems"]:
                self._report_field(i, job, node, (field,), msg, rule=True)
            return
        loc = tuple(err["loc"])
        if err["type"] == "missing":
            self.add(node, _path(f"jobs[{i}]", loc), "required field is missing")
        elif err["type"] == "extra_forbidden":
            self.add(
                _child(node, str(loc[0]), want_key=True),
                _path(f"jobs[{i}]", loc),
                _unknown(loc[0], JOB_FIELDS),
            )
        elif not loc:
            self.add(node, f"jobs[{i}]", _message(err))
        else:
            self._report_field(i, job, node, loc, _message(err), rule=False)

    def _report_field(
        self,
        i: int,
        job: dict[str, Any],
        node: yaml.Node | None,
        loc: tuple[Any, ...],
        msg: str,
        *,
        rule: bool,
    ) -> None:
        field = str(loc[0])
        if field in job or self.defaults_node is None or _child(self.defaults_node, field) is None:
            self.add(_descend(node, loc), _path(f"jobs[{i}]", loc), msg)
        elif rule:  # depends on this job's other fields: name the job, point at the default
            self.add(
                _descend(self.defaults_node, loc),
                _path(f"jobs[{i}]", loc),
                f"{msg} (value from defaults)",
            )
        else:  # the default alone is bad: report it once, as defaults.<field>
            self.add(_descend(self.defaults_node, loc), _path("defaults", loc), msg)

    def _check_unique_ids(self, jobs: list[Any], jobs_node: yaml.Node | None) -> None:
        """On the raw ids, so a duplicate is reported even when the jobs have other errors."""
        first: dict[str, int] = {}
        for i, job in enumerate(jobs):
            job_id = job.get("id") if isinstance(job, dict) else None
            if not isinstance(job_id, str):
                continue
            if job_id in first:
                id_node = _child(_child(jobs_node, i), "id")
                line = _line_of(_child(_child(jobs_node, first[job_id]), "id"))
                self.add(
                    id_node,
                    f"jobs[{i}].id",
                    f"duplicate id {job_id!r} (first used by jobs[{first[job_id]}]{line})",
                )
            else:
                first[job_id] = i


def _line_of(node: yaml.Node | None) -> str:
    return f" on line {node.start_mark.line + 1}" if node is not None else ""


def _path(prefix: str, loc: Iterable[Any]) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _unknown(key: object, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
    return f"unknown field {str(key)!r} ({hint})"


def _message(err: Any) -> str:
    """pydantic's error as one plain sentence (its own format spans several lines)."""
    kind: str = err["type"]
    ctx = err.get("ctx") or {}
    got = _show(err.get("input"))
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}, got {got}"
    simple = {
        "string_type": f"must be a string, got {got}",
        "string_too_short": "must not be empty",
        "bool_type": f"must be true or false, got {got}",
        "bool_parsing": f"must be true or false, got {got}",
        "int_type": f"must be a whole number, got {got}",
        "int_parsing": f"must be a whole number, got {got}",
        "int_from_float": f"must be a whole number, got {got}",
        "tuple_type": f"must be a list, got {got}",
        "list_type": f"must be a list, got {got}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}, got {got}",
        "less_than_equal": f"must be at most {ctx.get('le')}, got {got}",
    }
    if kind in simple:
        return simple[kind]
    if kind.startswith("date"):
        return f"must be a date written YYYY-MM-DD, got {got}"
    text = str(err["msg"]).splitlines()[0]
    return text[:1].lower() + text[1:]


# ---------------------------------------------------------------- JSON Schema


def jobs_file_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of jobs.yaml as users write it, for editors and CI.

    Cross-field rules (window vs start/end, Yahoo's limits) are left to ``validate``.
    """
    job = JobSpec.model_json_schema(mode="validation")
    job.pop("title", None)
    props = job["properties"]
    for prop in props.values():
        prop.pop("title", None)
        if "default" in prop and prop["default"] is None:
            del prop["default"]
    for name, info in JobSpec.model_fields.items():
        if isinstance(info.default, timedelta):  # pydantic writes ISO 8601 (PT1H) here
            props[name]["default"] = format_duration(info.default)
    job["additionalProperties"] = False
    job["required"] = ["id"]  # everything else may come from defaults
    defaults_schema = {
        "type": "object",
        "description": "Defaults for every job field except id",
        "additionalProperties": False,
        "properties": {k: v for k, v in props.items() if k != "id"},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "stocksched jobs file",
        "type": "object",
        "additionalProperties": False,
        "required": ["jobs"],
        "properties": {
            "version": {"const": 1, "description": "File format version (1)"},
            "defaults": defaults_schema,
            "jobs": {"type": "array", "items": job},
        },
    }
