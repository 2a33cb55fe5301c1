"""jobs.yaml: pydantic models of the desired state, and loading with file:line:col errors.

SKELETON written by the lead to fix the interface; the config helper owns this file
and fills in validation and loading. Public names below must keep their signatures.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

Interval = Literal["1m", "2m", "5m", "15m", "30m", "60m", "90m", "1h", "1d", "5d", "1wk", "1mo", "3mo"]


class JobSpec(BaseModel):
    """One entry of ``jobs:`` after ``defaults:`` are merged in. Frozen: specs are values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str | None = None
    tickers: tuple[str, ...]
    schedule: str
    timezone: str = "UTC"
    window: timedelta | None = None  # serialised back as the duration string, e.g. "30d"
    start: date | None = None
    end: date | None = None
    interval: Interval = "1d"
    enabled: bool = True
    prefix: str = "scheduled_stock_data"
    source: Literal["yahoo", "demo"] = "yahoo"
    ttl: timedelta | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.id

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (durations as strings) that ``model_validate`` reads back."""
        raise NotImplementedError

    def window_dates(self, today: date) -> tuple[date, date]:
        """(start, end) of the fetch window; ``today`` is in the job's time zone."""
        raise NotImplementedError

    def next_fire(self, after: datetime) -> datetime:
        """First slot strictly after ``after`` (aware), in the job's time zone."""
        raise NotImplementedError


class JobsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    jobs: tuple[JobSpec, ...]


class ConfigError(Exception):
    """A jobs file that cannot be used; ``errors`` holds every problem found."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load_jobs_file(path: str | Path) -> JobsFile:
    """Load and validate; raise ConfigError listing every error as FILE:LINE:COL: path: msg."""
    raise NotImplementedError
