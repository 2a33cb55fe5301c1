"""Exchange trading calendars (exchange_calendars), imported only when a job names one.

``exchange_calendars.get_calendar`` caches each calendar it builds, so no cache here.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

log = logging.getLogger(__name__)


class MarketCalendars:
    def __init__(self) -> None:
        self._warned: set[tuple[str, int]] = set()

    def _get(self, code: str) -> Any:
        import exchange_calendars  # 0.3 s import: only for jobs that name a calendar

        return exchange_calendars.get_calendar(code)

    def calendar(self, code: str) -> Any:
        """The ``exchange_calendars`` calendar of ``code`` (e.g. XNYS)."""
        return self._get(code)

    def is_session(self, code: str, day: date) -> bool:
        """True if ``code`` trades on ``day``; days outside the calendar's range count as open.

        Skipping a slot is the riskier mistake (data silently not fetched), so a day the
        calendar cannot judge runs, with a warning once per calendar and year.
        """
        cal = self._get(code)
        try:
            return bool(cal.is_session(day.isoformat()))
        except Exception as exc:  # exchange_calendars raises DateOutOfBounds and friends
            if (code, day.year) not in self._warned:
                self._warned.add((code, day.year))
                log.warning("calendar %s cannot judge %s (%s); treating it as open", code, day, exc)
            return True

    def tz(self, code: str) -> Any:
        return self._get(code).tz
