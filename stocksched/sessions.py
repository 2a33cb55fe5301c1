"""Exchange sessions for the series: which exchange a ticker trades on, which sessions have
closed, and which of them a stored series lacks.

The exchange comes from the job's ``calendar:`` or from the exchange Yahoo names in its
chart answer (``exchangeName``), mapped to an ``exchange_calendars`` code by
``YAHOO_EXCHANGES``; an exchange not in the table has no calendar, and then a series is
always fetched and never checked for gaps (guessing would be worse than asking).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from stocksched.calendars import MarketCalendars

if TYPE_CHECKING:
    import numpy as np

#: Yahoo's ``exchangeName`` -> ``exchange_calendars`` code, for the exchanges whose
#: calendars exchange_calendars keeps.
YAHOO_EXCHANGES: dict[str, str] = {
    "NMS": "XNAS",
    "NGM": "XNAS",
    "NCM": "XNAS",
    "NAS": "XNAS",
    "NYQ": "XNYS",
    "NYS": "XNYS",
    "ASE": "XASE",
    "PCX": "XNYS",
    "BTS": "XNYS",
    "GER": "XETR",
    "ETR": "XETR",
    "FRA": "XFRA",
    "STU": "XSTU",
    "DUS": "XDUS",
    "HAM": "XHAM",
    "LSE": "XLON",
    "IOB": "XLON",
    "PAR": "XPAR",
    "AMS": "XAMS",
    "BRU": "XBRU",
    "LIS": "XLIS",
    "MIL": "XMIL",
    "MCE": "XMAD",
    "EBS": "XSWX",
    "VIE": "XWBO",
    "STO": "XSTO",
    "CPH": "XCSE",
    "HEL": "XHEL",
    "OSL": "XOSL",
    "ISE": "XDUB",
    "WSE": "XWAR",
    "TOR": "XTSE",
    "VAN": "XTSX",
    "JPX": "XTKS",
    "TYO": "XTKS",
    "HKG": "XHKG",
    "ASX": "XASX",
    "NZE": "XNZE",
    "KSC": "XKRX",
    "TAI": "XTAI",
    "SES": "XSES",
    "BSE": "XBOM",
    "SAO": "BVMF",
    "MEX": "XMEX",
    "JNB": "XJSE",
}


def calendar_code(job_calendar: str | None, yahoo_exchange: str | None) -> str | None:
    """The calendar a series is judged by: the job's, else the one Yahoo's exchange maps to."""
    if job_calendar:
        return job_calendar
    return YAHOO_EXCHANGES.get(yahoo_exchange or "")


class Sessions:
    """Session questions about one exchange calendar, answered within its bounds."""

    def __init__(self, calendars: MarketCalendars, code: str) -> None:
        self.code = code
        self._cal = calendars.calendar(code)

    def _clip(self, start: date, end: date) -> tuple[date, date] | None:
        first = self._cal.first_session.date()
        last = self._cal.last_session.date()
        start, end = max(start, first), min(end, last)
        return (start, end) if start <= end else None

    def between(self, start: date, end: date) -> list[date]:
        """The sessions from ``start`` to ``end`` inclusive (those the calendar knows)."""
        span = self._clip(start, end)
        if span is None:
            return []
        return [d.date() for d in self._cal.sessions_in_range(*map(str, span))]

    def last_close(self, now: datetime) -> datetime | None:
        """The close of the latest session that has closed by ``now`` (None: none known)."""
        today = now.date()
        span = self._clip(today - timedelta(days=14), today + timedelta(days=1))
        if span is None:
            return None
        closes = self._cal.schedule.loc[str(span[0]) : str(span[1]), "close"]
        closed = closes[closes <= now]
        return closed.iloc[-1].to_pydatetime() if len(closed) else None

    def missing(self, ts: np.ndarray, tz: str, intraday: bool) -> list[date]:
        """Sessions between the first and last bar (epoch seconds ``ts``, sorted) without a
        bar: for daily bars, no bar on the session's local date; for intraday bars, no bar
        within the session's hours."""
        import numpy as np
        import pandas as pd

        if len(ts) == 0:
            return []
        local = pd.to_datetime(ts, unit="s", utc=True).tz_convert(tz)
        sessions = self.between(local[0].date(), local[-1].date())
        if not intraday:
            have = {d.date() for d in local}
            return [d for d in sessions if d not in have]
        if not sessions:
            return []
        hours = self._cal.schedule.loc[str(sessions[0]) : str(sessions[-1])]
        opens = hours["open"].to_numpy(dtype="datetime64[s]").astype("int64")
        closes = hours["close"].to_numpy(dtype="datetime64[s]").astype("int64")
        found = np.searchsorted(ts, opens, side="left") < np.searchsorted(ts, closes, side="left")
        return [d.date() for d, hit in zip(hours.index, found, strict=True) if not hit]


def dates_text(days: Sequence[date]) -> list[str]:
    return [d.isoformat() for d in days]


def sessions_for(calendars: MarketCalendars, code: str | None) -> Sessions | None:
    """A ``Sessions`` for ``code``, or None when there is no calendar to judge by."""
    return Sessions(calendars, code) if code else None
