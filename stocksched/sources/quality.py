"""Data-quality checks on a source's bars, run by the executor before anything is stored.

One pure function, ``check_bars``, over the frame a source returned (any source: Yahoo,
demo). It never touches the network or Redis, and it does not change the bars it keeps.

- **Cap.** More than ``MAX_BARS_PER_TICKER`` bars from one fetch is a broken answer (the
  biggest legitimate ones: an index's daily bars since 1927, about 25,000; 1m bars, which
  Yahoo serves for 7 days only, about 10,000 for a market open round the clock). None of it
  is kept: the ticker fails.
- **Window.** A bar whose start falls outside the requested window (``start`` and ``end``
  inclusive, compared as the exchange's local dates, the dates the storage key is named
  after) is dropped. A multi-day bar (5d, 1wk, 1mo, 3mo) may start up to its length
  minus one day before ``start``, since it covers ``start``.
- **Prices.** A bar with a price <= 0 (any of Open, High, Low, Close) is dropped; so is a
  bar whose range is inconsistent: High < Low, or Open or Close outside Low..High.
  Differences within ``RANGE_TOLERANCE`` (relative; float rounding in the source's data)
  are not flagged. NaN prices are not judged: yfinance already drops the bars without any
  trade (every column NaN or 0) and a bar with a missing price is stored, as NaN (null),
  as it always was.

Each dropped bar is counted once, under the first problem found in the order above; the
``reason`` of each problem is a bounded metric label (``DROP_REASONS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from enum import Enum

import numpy as np
import pandas as pd

#: More bars than this from one fetch of one ticker fails the ticker and stores nothing.
MAX_BARS_PER_TICKER = 50_000
#: Relative difference below which two prices are taken as equal in the range checks.
RANGE_TOLERANCE = 1e-6
#: Dates named per problem in a warning; the rest are counted ("+N more").
LISTED_DATES = 5

OUT_OF_WINDOW = "out_of_window"
BAD_PRICE = "bad_price"
INCONSISTENT_RANGE = "inconsistent_range"
#: The metric label values (``stocksched_bars_dropped_total{reason}``).
DROP_REASONS: tuple[str, ...] = (OUT_OF_WINDOW, BAD_PRICE, INCONSISTENT_RANGE)

_PRICES = ("Open", "High", "Low", "Close")
#: How long before its bar's start a multi-day bar may begin and still cover the window.
_LEAD_DAYS = {"5d": 4, "1wk": 6, "1mo": 30, "3mo": 91}


class Problem(Enum):
    """Why a bar is dropped: (metric reason, phrase for the warning)."""

    OUTSIDE_WINDOW = (OUT_OF_WINDOW, "outside the window")
    BAD_PRICE = (BAD_PRICE, "with a price <= 0")
    HIGH_BELOW_LOW = (INCONSISTENT_RANGE, "with High < Low")
    OUTSIDE_RANGE = (INCONSISTENT_RANGE, "with Open or Close outside Low..High")

    @property
    def reason(self) -> str:
        return self.value[0]

    @property
    def phrase(self) -> str:
        return self.value[1]


@dataclass(frozen=True)
class Dropped:
    """The bars dropped for one problem: how many, and the first ``LISTED_DATES`` of them."""

    problem: Problem
    count: int
    dates: tuple[str, ...]

    def describe(self, window: str) -> str:
        phrase = self.problem.phrase
        if self.problem is Problem.OUTSIDE_WINDOW:
            phrase = f"{phrase} {window}"
        listed = ", ".join(self.dates)
        more = self.count - len(self.dates)
        if more > 0:
            listed += f", +{more} more"
        return f"{self.count} {phrase} ({listed})"


@dataclass(frozen=True)
class QualityReport:
    """What ``check_bars`` found in one ticker's answer."""

    received: int
    kept: int
    window: str  # "2025-01-02..2025-01-10"
    dropped: tuple[Dropped, ...] = ()
    #: Non-empty when nothing may be stored: over the cap, or no good bar left.
    failure: str = ""

    @property
    def by_reason(self) -> dict[str, int]:
        """Dropped bars per metric reason (``DROP_REASONS``); reasons without any left out."""
        counts: dict[str, int] = {}
        for d in self.dropped:
            counts[d.problem.reason] = counts.get(d.problem.reason, 0) + d.count
        return counts

    @property
    def dropped_total(self) -> int:
        return sum(d.count for d in self.dropped)

    @property
    def warning(self) -> str:
        """One line naming the dropped bars ("" when none was): for the run's record."""
        if not self.dropped:
            return ""
        total = self.dropped_total
        parts = ", ".join(d.describe(self.window) for d in self.dropped)
        return f"dropped {total} bar{'s' if total != 1 else ''}: {parts}"


def check_bars(
    frame: pd.DataFrame,
    start: date,
    end: date,
    interval: str = "1d",
    *,
    max_bars: int = MAX_BARS_PER_TICKER,
) -> tuple[pd.DataFrame, QualityReport]:
    """The bars fit to store, and a report of the others (see the module docstring).

    ``frame`` is shaped like a ``Fetcher`` result (a DatetimeIndex in the exchange's zone,
    the price columns). The returned frame holds the good bars unchanged, in their order;
    it is empty exactly when ``report.failure`` is set.
    """
    window = f"{start.isoformat()}..{end.isoformat()}"
    received = len(frame)
    if received > max_bars:
        failure = (
            f"source returned {received} bars, more than the cap of {max_bars} "
            "for one ticker; not stored"
        )
        return frame.iloc[:0], QualityReport(received, 0, window, failure=failure)
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise TypeError(f"bars need a DatetimeIndex, got {type(frame.index).__name__}")
    masks = _problem_masks(frame, start, end, interval)
    taken = np.zeros(received, dtype=bool)
    dropped: list[Dropped] = []
    labels = _DateLabels(frame.index)
    for problem, mask in masks:
        hits = mask & ~taken  # each bar counted once, under its first problem
        taken |= hits
        count = int(hits.sum())
        if count:
            positions = np.flatnonzero(hits)[:LISTED_DATES]
            dropped.append(Dropped(problem, count, tuple(labels[int(p)] for p in positions)))
    clean = frame[~taken] if taken.any() else frame
    report = QualityReport(received, len(clean), window, tuple(dropped))
    if received and clean.empty:
        failure = f"no usable bars left ({report.warning}); not stored"
        report = QualityReport(received, 0, window, tuple(dropped), failure=failure)
    return clean, report


def _problem_masks(
    frame: pd.DataFrame, start: date, end: date, interval: str
) -> list[tuple[Problem, np.ndarray]]:
    index = frame.index
    assert isinstance(index, pd.DatetimeIndex)
    # The exchange-local calendar day each bar starts on (wall time, zone dropped).
    days = (index.tz_localize(None) if index.tz is not None else index).normalize()
    first = pd.Timestamp(start - timedelta(days=_LEAD_DAYS.get(interval, 0)))
    outside = np.asarray((days < first) | (days > pd.Timestamp(end)), dtype=bool)
    prices = {c: frame[c].to_numpy(dtype="float64") for c in _PRICES if c in frame.columns}
    n = len(frame)
    none = np.zeros(n, dtype=bool)
    with np.errstate(invalid="ignore"):  # NaN compares False: a missing price is not judged
        bad_price = np.logical_or.reduce([v <= 0 for v in prices.values()]) if prices else none
        high, low = prices.get("High"), prices.get("Low")
        high_below_low = _below(high, low) if high is not None and low is not None else none
        outside_range = none.copy()
        for column in ("Open", "Close"):
            value = prices.get(column)
            if value is None:
                continue
            if high is not None:
                outside_range |= _below(high, value)
            if low is not None:
                outside_range |= _below(value, low)
    return [
        (Problem.OUTSIDE_WINDOW, outside),
        (Problem.BAD_PRICE, np.asarray(bad_price, dtype=bool)),
        (Problem.HIGH_BELOW_LOW, high_below_low),
        (Problem.OUTSIDE_RANGE, outside_range),
    ]


def _below(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a < b`` by more than ``RANGE_TOLERANCE`` of their size (False where either is NaN)."""
    return np.asarray(a < b - RANGE_TOLERANCE * np.maximum(np.abs(a), np.abs(b)), dtype=bool)


class _DateLabels:
    """A bar's date as stored: ``YYYY-MM-DD`` for daily bars, ISO time for intraday ones."""

    def __init__(self, index: pd.DatetimeIndex) -> None:
        self._index = index
        self._daily = bool((index == index.normalize()).all()) if len(index) else True

    def __getitem__(self, position: int) -> str:
        ts = self._index[position]
        return str(ts.strftime("%Y-%m-%d") if self._daily else ts.isoformat())
