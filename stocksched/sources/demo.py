"""Synthetic daily bars for trying the daemon offline and for load tests. NOT market data.

Every value is a pure function of (ticker, date), computed with hashlib, so any window
of any ticker gives the same bars in every process and on every machine, whatever
windows were asked before. No network, no state.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from datetime import date
from typing import TYPE_CHECKING

from stocksched.sources.base import BAR_COLUMNS, PermanentFetchError

if TYPE_CHECKING:
    import pandas as pd

DEMO_TIMEZONE = "America/New_York"
#: Test-only: seconds every demo fetch of a daemon sleeps (see DemoFetcher).
LATENCY_ENV = "STOCKSCHED_TEST_DEMO_LATENCY_S"

# Value-noise octaves of the log price: (period in days, amplitude). Longer periods move
# more, which gives trends, swings and day-to-day noise like a random walk, while each
# day stays computable on its own.
_OCTAVES: tuple[tuple[int, float], ...] = ((5, 0.015), (21, 0.04), (89, 0.09), (377, 0.2))


def _unit(ticker: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by (ticker, key); stable across processes."""
    digest = hashlib.blake2b(f"{ticker}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _signed(ticker: str, key: str) -> float:
    return 2.0 * _unit(ticker, key) - 1.0


def _smooth_noise(ticker: str, day: int, period: int) -> float:
    """Smoothly interpolated noise in [-1, 1] with knots every ``period`` days."""
    knot, offset = divmod(day, period)
    t = offset / period
    t = t * t * (3.0 - 2.0 * t)
    left = _signed(ticker, f"knot:{period}:{knot}")
    right = _signed(ticker, f"knot:{period}:{knot + 1}")
    return left + (right - left) * t


def _close(ticker: str, day: date) -> float:
    base = 10.0 + 490.0 * _unit(ticker, "base")
    n = day.toordinal()
    level = sum(amp * _smooth_noise(ticker, n, period) for period, amp in _OCTAVES)
    daily = 0.01 * _signed(ticker, f"close:{n}")
    return base * math.exp(level + daily)


def demo_bar(ticker: str, day: date) -> tuple[float, float, float, float, int]:
    """(open, high, low, close, volume) of ``ticker`` on ``day``; Low <= Open, Close <= High."""
    n = day.toordinal()
    close = _close(ticker, day)
    open_ = close * math.exp(0.012 * _signed(ticker, f"open:{n}"))
    high = max(open_, close) * (1.0 + 0.015 * _unit(ticker, f"high:{n}"))
    low = min(open_, close) * (1.0 - 0.015 * _unit(ticker, f"low:{n}"))
    volume = int(200_000 + 9_800_000 * _unit(ticker, "volume") * (0.5 + _unit(ticker, f"vol:{n}")))
    # Rounding is monotonic, so rounding all four keeps the OHLC ordering.
    return round(open_, 2), round(high, 2), round(low, 2), round(close, 2), volume


class DemoFetcher:
    """Deterministic synthetic daily bars, Monday to Friday (no exchange holidays).

    For trying the daemon offline and for load tests only: the numbers look like prices
    but are not market data. Only ``interval="1d"`` is served. ``latency_s`` makes every
    fetch sleep that long, to stand in for a slow network in load and timeout tests; by
    default it is ``$STOCKSCHED_TEST_DEMO_LATENCY_S`` (unset: none), a test-only knob so
    end-to-end tests can give a daemon's demo source a per-ticker delay.
    """

    def __init__(self, latency_s: float | None = None) -> None:
        if latency_s is None:
            latency_s = float(os.environ.get(LATENCY_ENV) or 0.0)
        self._latency_s = latency_s

    def fetch_from_source(self, ticker: str, start: date, end: date, interval: str) -> pd.DataFrame:
        import pandas as pd  # imported by the first run, not at start

        if interval != "1d":
            raise PermanentFetchError(ticker, f"demo source serves only 1d bars, not {interval}")
        if self._latency_s > 0:
            time.sleep(self._latency_s)
        days = pd.bdate_range(start, end) if start <= end else pd.DatetimeIndex([])
        if len(days) == 0:
            raise PermanentFetchError(ticker, f"no data for {start}..{end} (no weekdays)")
        symbol = ticker.upper()
        rows = [demo_bar(symbol, d.date()) for d in days]
        frame = pd.DataFrame(
            {
                "Open": [r[0] for r in rows],
                "High": [r[1] for r in rows],
                "Low": [r[2] for r in rows],
                "Close": [r[3] for r in rows],
                "Adj Close": [r[3] for r in rows],  # no dividends: equal to Close
                "Volume": pd.array([r[4] for r in rows], dtype="int64"),
                "Dividends": 0.0,
                "Stock Splits": 0.0,
            },
            index=pd.DatetimeIndex(  # second resolution, like yfinance's index
                days.tz_localize(DEMO_TIMEZONE).as_unit("s"), freq=None, name="Date"
            ),
        )
        return frame[list(BAR_COLUMNS)]
