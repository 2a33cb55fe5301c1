"""The clock is injected everywhere so scheduler tests run in milliseconds, never sleeping.

Times shown to operators follow one rule: the API and the logs give UTC with an explicit
offset (ISO 8601, ``2026-03-02T10:05:00+00:00``), whatever zone a job's schedule is in.
``to_utc`` and ``iso_utc`` are the one place that rule is applied.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, time-zone aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never stepped: the scheduler compares it with
        ``now()`` to tell a wall clock that jumped (NTP, ``date -s``) from time passing."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


def to_utc(dt: datetime) -> datetime:
    """The same instant in UTC; a naive datetime is taken to be UTC already."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def iso_utc(dt: datetime | None, timespec: str = "auto") -> str:
    """ISO 8601 in UTC with an explicit ``+00:00`` offset, for the API and log messages.

    ``None`` gives ``"-"`` (a log line still reads well when a time is unknown).
    """
    if dt is None:
        return "-"
    return to_utc(dt).isoformat(timespec=timespec)
