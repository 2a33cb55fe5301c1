"""The jobs file's job model: ``JobSpec`` and the interval table (field types: ``fields``).

Decisions a user relies on (the file as a whole: ``stocksched.jobs.loader``):

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
- Yahoo's limits on intraday history are enforced: 1m bars reach back at most 7 days,
  2m-90m bars 60 days, 60m/1h bars 730 days. For a relative window this checks its length;
  for absolute dates it checks ``start`` against today (only when loading a file, so a
  stored spec never becomes invalid merely because time passed).
"""

from __future__ import annotations

import difflib
import re
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from stocksched.durations import format_duration
from stocksched.jobs.fields import DumpedOnce, Duration, Ticker, share_fields_set
from stocksched.schedule import Schedule, parse_schedule

Interval = Literal[
    "1m", "2m", "5m", "15m", "30m", "60m", "90m", "1h", "1d", "5d", "1wk", "1mo", "3mo"
]

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
#: The intervals whose bars are intraday (the keys of the table above).
INTRADAY_INTERVALS: frozenset[str] = frozenset(INTRADAY_LIMIT_DAYS)
_WINDOW_GROUP = frozenset({"window", "start", "end"})
#: The rule for job ids, in jobs.yaml and in the API's paths.
JOB_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
JOB_ID_PATTERN = JOB_ID_RE.pattern


@lru_cache(maxsize=1)
def _calendar_names() -> frozenset[str]:
    import exchange_calendars  # lazy: 0.3 s import, only when a job names a calendar

    return frozenset(exchange_calendars.get_calendar_names())


# ---------------------------------------------------------------- the job model


class JobSpec(DumpedOnce):
    """One entry of ``jobs:`` after ``defaults:`` are merged in. Frozen: specs are values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        description="Unique id: [a-z0-9][a-z0-9_-]{0,63}",
        json_schema_extra={"pattern": JOB_ID_PATTERN},
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
    enabled: bool = Field(
        default=True,
        description="false: never scheduled (the record's is_active is enabled and not paused)",
    )
    prefix: str = Field(default="scheduled_stock_data", description="Storage key prefix")
    source: Literal["yahoo", "demo"] = Field(
        default="yahoo", description="yahoo, or demo (synthetic daily bars, offline)"
    )
    ttl: Duration | None = Field(
        default=None, description="Expiry of the window keys this job writes (series keep)"
    )
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
    revise: int = Field(
        default=3,
        ge=0,
        le=100,
        strict=True,
        description="Stored sessions fetched again each run, for Yahoo's late revisions",
    )
    windows: bool = Field(
        default=True,
        description="Also write the original design's window keys and latest pointer",
    )
    fanout: bool = Field(
        default=False,
        description="Spread each run's tickers over every live replica (a Redis stream)",
    )

    # ---- field rules (each reported at its own field)

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not JOB_ID_RE.match(v):
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
            return sys.intern(v)  # thousands of jobs share a few expressions: one copy each
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
        return sys.intern(v)  # one copy per zone, not per job

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
        return sys.intern(v)

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
        share_fields_set(self)
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


def merge_defaults(defaults: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    """Job values over defaults; window/start/end are taken from one side only (see module doc)."""
    job_sets_window = any(k in job for k in _WINDOW_GROUP)
    merged = {k: v for k, v in defaults.items() if not (job_sets_window and k in _WINDOW_GROUP)}
    merged.update(job)
    return merged
