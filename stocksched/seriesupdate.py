"""SeriesUpdater: one run brings one ticker's series up to date, fetching as little as it can.

Per ticker and run (issue 12):

1. Read the stored series (``SeriesStore.read``: meta, bars, actions in one snapshot).
2. Plan the request (``plan``): the job's whole window when nothing is stored or the window
   reaches before what was ever fetched (``covered_from``); otherwise from ``revise`` stored
   sessions back (Yahoo revises recent bars, whole days can arrive late), or from the
   earliest missing session not yet asked for again, to the window's end. A daily series
   of a known exchange with no session closed since the last fetch asks nothing: ``fresh``.
3. Fetch (the executor's retries, rate limit and quality checks) and merge by timestamp.
   A split or dividend Yahoo reports that the series did not know (or one it no longer
   reports) means Yahoo's prices are now on another basis: the whole stored range is
   fetched again and replaces the series in the same atomic write (``rebased``).
4. Check the merged series against the exchange's sessions (``sessions.Sessions.missing``);
   a missing session is asked for again by the next run, once, then reported.
5. Write the series (fenced by the run's lease) and, unless ``windows: false``, the original
   design's window key and ``:latest`` pointer from the series, so a window is complete
   even when only its tail was fetched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from stocksched.calendars import MarketCalendars
from stocksched.clock import iso_utc
from stocksched.jobs.spec import INTRADAY_INTERVALS, INTRADAY_LIMIT_DAYS, JobSpec
from stocksched.sessions import Sessions, calendar_code
from stocksched.storage import seriescodec
from stocksched.storage.butler import WINDOW_COLUMNS, DataIOButler
from stocksched.storage.fence import Fence
from stocksched.storage.series import SeriesId, SeriesStore, SeriesWrite, Stored

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: ``fetch(start, end)``: the checked bars of one ticker, both dates inclusive.
FetchFn = Callable[[date, date], "pd.DataFrame"]


@dataclass(frozen=True)
class Plan:
    """What to ask Yahoo for: ``start`` .. the window's end, or nothing (``start`` None)."""

    start: date | None
    whole: bool = False  # nothing stored (or the window reaches before it): no merge base


@dataclass(frozen=True)
class Update:
    """What one ticker's update did: bars written, asked nothing, re-fetched whole,
    sessions still missing from its series."""

    rows: int
    fresh: bool = False
    rebased: bool = False
    missing: int = 0


@dataclass(frozen=True)
class Target:
    """One ticker's series in one run: the job, its window and the run's fence."""

    job: JobSpec
    ticker: str
    start: date
    end: date
    now: datetime
    fence: Fence | None

    @property
    def series(self) -> SeriesId:
        return SeriesId(self.job.prefix, self.ticker.upper(), self.job.interval)

    @property
    def intraday(self) -> bool:
        return self.job.interval in INTRADAY_INTERVALS


class SeriesUpdater:
    def __init__(
        self, store: SeriesStore, butler: DataIOButler, calendars: MarketCalendars
    ) -> None:
        self._store = store
        self._butler = butler
        self._calendars = calendars

    def update(self, target: Target, fetch: FetchFn) -> Update:
        """Bring the series up to date (see the module doc); raises what ``fetch`` and the
        store raise (FetchError, StorageError, FenceLostError, ValueError)."""
        stored = self._store.read(target.series, None, None)
        sessions = self._sessions(target, stored.meta.get("exchange"))
        plan = self.plan(target, stored, sessions)
        if plan.start is None:
            self._windows(target, stored.rows, stored.actions, stored.meta.get("tz", ""))
            return Update(0, fresh=True, missing=len(_json_list(stored.meta, "missing")))
        frame = fetch(plan.start, target.end)
        bars = seriescodec.bars_from_frame(frame)
        rebased = False
        if len(stored.rows) and not plan.whole and _basis_changed(stored, bars):
            start = min(plan.start, _date(stored.meta.get("covered_from")) or plan.start)
            frame, rebased = fetch(start, target.end), True
            bars = seriescodec.bars_from_frame(frame)
            plan = Plan(start, whole=True)
        tz = str(frame.index.tz)
        exchange = calendar_code(target.job.calendar, frame.attrs.get("exchange"))
        sessions = sessions or self._sessions(target, exchange)
        replace = rebased or not len(stored.rows)
        rows = bars.rows if replace else seriescodec.merge(stored.rows, bars.rows)
        actions = dict(bars.actions) if replace else {**stored.actions, **bars.actions}
        meta = _meta(target, stored, plan, tz, exchange, rows, sessions, actions)
        self._store.write(
            SeriesWrite(
                target.series, bars, tz, meta, replace=replace, fence=target.fence, base=stored
            )
        )
        self._windows(target, rows, actions, tz)
        return Update(len(bars), rebased=rebased, missing=len(json.loads(meta["missing"])))

    def plan(self, target: Target, stored: Stored, sessions: Sessions | None) -> Plan:
        """Where this run's request starts (see the module doc); ``start`` None: ask nothing."""
        covered = _date(stored.meta.get("covered_from"))
        if not len(stored.rows) or covered is None or target.start < covered:
            return Plan(target.start, whole=True)
        tz = stored.meta["tz"]
        days = _local_days(stored.rows, tz)
        revise = target.job.revise
        start = days[max(0, len(days) - revise)] if revise else days[-1] + timedelta(days=1)
        pending = [d for d in _dates(stored.meta, "pending") if d >= _reach(target)]
        if pending:
            start = min(start, *pending)
        start = max(start, target.start, _reach(target))
        if start > target.end:
            return Plan(None)
        if not pending and self._fresh(target, stored, sessions):
            return Plan(None)
        return Plan(start)

    @staticmethod
    def _fresh(target: Target, stored: Stored, sessions: Sessions | None) -> bool:
        """A daily series of a known exchange fetched after its latest session closed."""
        fetched = stored.meta.get("fetched")
        if target.job.interval != "1d" or sessions is None or not fetched:
            return False
        closed = sessions.last_close(target.now)
        return closed is not None and closed <= datetime.fromisoformat(fetched)

    def _sessions(self, target: Target, exchange: str | None) -> Sessions | None:
        code = target.job.calendar or exchange
        return Sessions(self._calendars, code) if code else None

    def _windows(
        self,
        target: Target,
        rows: np.ndarray,
        actions: Mapping[int, tuple[float, float]],
        tz: str,
    ) -> None:
        """The original design's window key and latest pointer, written from the series."""
        if not target.job.windows or not len(rows) or not tz:
            return
        frame = seriescodec.frame_of(rows, actions, tz)
        days = frame.index.tz_localize(None).normalize()
        inside = frame[(days >= str(target.start)) & (days <= str(target.end))]
        if not len(inside):
            return
        job = target.job
        self._butler.save_data(
            data=inside[list(WINDOW_COLUMNS)],
            prefix=job.prefix,
            stock_id=target.ticker,
            start_date=target.start.isoformat(),
            end_date=target.end.isoformat(),
            ttl=job.ttl,
            intraday=target.intraday,
            interval=job.interval,
            fence=target.fence,
        )


def _meta(
    target: Target,
    stored: Stored,
    plan: Plan,
    tz: str,
    exchange: str | None,
    rows: np.ndarray,
    sessions: Sessions | None,
    actions: Mapping[int, tuple[float, float]],
) -> dict[str, str]:
    """The meta fields the updater keeps (the store adds version, first, last, bars)."""
    start = plan.start
    assert start is not None
    covered = _date(stored.meta.get("covered_from"))
    covered_from = start if plan.whole or covered is None else min(covered, start)
    missing = sessions.missing(rows["ts"], tz, target.intraday) if sessions else []
    old_missing = set(_dates(stored.meta, "missing"))
    old_pending = set(_dates(stored.meta, "pending"))

    def settled(d: date) -> bool:
        """Asked for again since it was found missing: reported, not asked again."""
        was_settled = d in old_missing and d not in old_pending
        return was_settled or (d in old_pending and start <= d <= target.end)

    meta = {
        "fetched": iso_utc(target.now),
        "exchange": exchange or "",
        "covered_from": covered_from.isoformat(),
        "missing": json.dumps([d.isoformat() for d in missing]),
        "pending": json.dumps([d.isoformat() for d in missing if not settled(d)]),
    }
    if actions:
        ts = max(actions)
        dividend, split = actions[ts]
        day = seriescodec.local_date(ts, tz)
        meta["last_action"] = json.dumps(
            {"date": day.isoformat(), "dividend": dividend, "split": split}
        )
    if plan.whole and len(stored.rows):
        meta["rebased"] = iso_utc(target.now)
    return meta


def _basis_changed(stored: Stored, bars: seriescodec.Bars) -> bool:
    """Whether the splits and dividends Yahoo reports over the fetched bars differ from
    those stored over the same span (a new one, a changed one, or one withdrawn)."""
    if not len(bars):
        return False
    lo, hi = bars.first_ts, bars.last_ts
    known = {ts: v for ts, v in stored.actions.items() if lo <= ts <= hi}
    return known != dict(bars.actions)


def _reach(target: Target) -> date:
    """The oldest date Yahoo serves at the job's interval (intraday bars are kept briefly)."""
    limit = INTRADAY_LIMIT_DAYS.get(target.job.interval)
    if limit is None:
        return date.min
    return target.now.date() - timedelta(days=limit - 1)


def _local_days(rows: np.ndarray, tz: str) -> list[date]:
    """The distinct exchange-local dates of ``rows``, in order."""
    import pandas as pd

    local = pd.to_datetime(rows["ts"], unit="s", utc=True).tz_convert(tz)
    return sorted({d.date() for d in local})


def _json_list(meta: Mapping[str, str], name: str) -> list[str]:
    raw = meta.get(name)
    return list(json.loads(raw)) if raw else []


def _dates(meta: Mapping[str, str], name: str) -> list[date]:
    return [date.fromisoformat(d) for d in _json_list(meta, name)]


def _date(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None
