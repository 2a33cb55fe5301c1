"""Reading the stored bar series back: ``read_bars`` and ``list_series``.

``read_bars("AAPL")`` returns a ticker's stored bars as the DataFrame yfinance's
``Ticker.history(auto_adjust=False, actions=True)`` returns: an exchange-local,
tz-aware ``Date`` index and the columns Open, High, Low, Close, Adj Close, Volume (int64),
Dividends and Stock Splits, equal value for value to what Yahoo served. It reads Redis
directly (no daemon needed), meta, bars and actions in one consistent snapshot.

Where Redis is: ``client=`` (any redis-py client, with or without ``decode_responses``),
else ``redis_url=``, else ``$STOCKSCHED_REDIS_URL`` (with ``$STOCKSCHED_REDIS_PASSWORD_FILE``).

Errors: ``SeriesNotFound`` (a ``LookupError``) for a ticker or interval with nothing
stored, naming what is stored for the ticker; ``ValueError`` for a date that does not
parse, a start after the end, or no Redis given; ``StorageError`` when Redis fails.
The CLI (``stocksched bars``, ``tickers``) and the HTTP API (``GET /data``) use these.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stocksched.storage import seriescodec
from stocksched.storage.adapter import EMBEDDED_URLS, RedisAdapter, connect
from stocksched.storage.series import SeriesId, SeriesStore

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_PREFIX",
    "SeriesInfo",
    "SeriesNotFound",
    "bars_json",
    "list_series",
    "read_bars",
]

DEFAULT_PREFIX = "scheduled_stock_data"
#: The unit of yfinance's index: seconds for daily and longer bars, microseconds intraday
#: (yfinance 1.7 on pandas 3), so a frame read back compares equal to yfinance's own.
_INTRADAY_UNIT, _DAILY_UNIT = "us", "s"
_DAY = timedelta(days=1)

DateLike = date | datetime | str  # a pandas Timestamp is a datetime


class SeriesNotFound(LookupError):
    """Nothing is stored for this (prefix, ticker, interval); ``stored`` lists what is
    stored for the ticker under any prefix or interval."""

    def __init__(self, series: SeriesId, stored: Sequence[SeriesId] = ()) -> None:
        super().__init__(series.ticker)
        self.series = series
        self.stored = list(stored)

    def __str__(self) -> str:
        s = self.series
        head = f"no {s.interval} bars of {s.ticker} stored under prefix {s.prefix!r}"
        if not self.stored:
            return f"{head}; nothing is stored for {s.ticker}"
        others = ", ".join(f"{o.interval} (prefix {o.prefix!r})" for o in self.stored)
        return f"{head}; stored for {s.ticker}: {others}"


@dataclass(frozen=True)
class SeriesInfo:
    """One stored series as ``stocksched tickers`` and ``GET /data`` show it.

    ``first``/``last``: the first and last bar, an exchange-local date (``2025-01-02``) for
    daily and longer bars, an ISO timestamp with offset for intraday ones; ``missing``:
    the count of sessions missing from the series, ``missing_dates`` the sessions;
    ``fetched``: the last fetch (ISO UTC); ``last_action``: the newest dividend or split,
    ``{"date", "dividend", "split"}``.
    """

    prefix: str
    ticker: str
    interval: str
    tz: str | None
    first: str | None
    last: str | None
    bars: int
    missing: int
    missing_dates: list[str]
    fetched: str | None
    exchange: str | None
    last_action: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def store_for(
    redis_url: str | None = None, client: Any = None, password_file: Path | None = None
) -> SeriesStore:
    """The series store on ``client``, else on a new client for ``redis_url`` (else
    ``$STOCKSCHED_REDIS_URL``). ValueError for no URL, the embedded store (it holds
    nothing outside the daemon's process) or a URL ``connect`` refuses."""
    if client is None:
        url = (redis_url or os.environ.get("STOCKSCHED_REDIS_URL") or "").strip()
        if url in EMBEDDED_URLS:
            raise ValueError(
                "no Redis to read from: give redis_url= (--redis-url) or set "
                "STOCKSCHED_REDIS_URL (the embedded memory:// store holds nothing "
                "outside the daemon's process)"
            )
        if password_file is None and os.environ.get("STOCKSCHED_REDIS_PASSWORD_FILE"):
            password_file = Path(os.environ["STOCKSCHED_REDIS_PASSWORD_FILE"])
        client = connect(url, password_file)
    return SeriesStore(RedisAdapter(client))


def read_bars(
    ticker: str,
    interval: str = "1d",
    start: DateLike | None = None,
    end: DateLike | None = None,
    redis_url: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    client: Any = None,
) -> pd.DataFrame:
    """The stored bars of ``ticker`` at ``interval`` from ``start`` to ``end`` (inclusive,
    exchange-local dates; None: unbounded), as yfinance's ``history(auto_adjust=False,
    actions=True)`` frame. Raises SeriesNotFound, ValueError, StorageError."""
    return read_series(store_for(redis_url, client), ticker, interval, start, end, prefix)


def read_series(
    store: SeriesStore,
    ticker: str,
    interval: str = "1d",
    start: DateLike | None = None,
    end: DateLike | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> pd.DataFrame:
    """``read_bars`` on a given store (the HTTP API's and the CLI's way in)."""
    lo, hi = parse_day(start, "start"), parse_day(end, "end")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"start {lo} is after end {hi}")
    series = SeriesId(prefix, ticker.strip().upper(), interval)
    # A day either side covers every UTC offset; the exact cut is by local date below.
    stored = store.read(
        series, _epoch(lo - _DAY) if lo else None, _epoch(hi + 2 * _DAY) if hi else None
    )
    if not stored.exists:
        raise SeriesNotFound(series, [s for s in store.listed() if s.ticker == series.ticker])
    tz = stored.meta.get("tz") or "UTC"
    frame = seriescodec.frame_of(stored.rows, stored.actions, tz)
    frame.index = frame.index.as_unit(_INTRADAY_UNIT if is_intraday(interval) else _DAILY_UNIT)
    if lo is not None or hi is not None:
        days = frame.index.date
        keep = (days >= lo if lo else True) & (days <= hi if hi else True)
        frame = frame[keep]
    return frame


def list_series(
    redis_url: str | None = None, prefix: str | None = None, client: Any = None
) -> list[SeriesInfo]:
    """Every stored series (of ``prefix``, if given), sorted by prefix, ticker, interval."""
    return series_infos(store_for(redis_url, client), prefix)


def series_infos(store: SeriesStore, prefix: str | None = None) -> list[SeriesInfo]:
    """``list_series`` on a given store: the index and every series' meta, two round trips."""
    listed = [s for s in store.listed() if prefix is None or s.prefix == prefix]
    metas = store.meta_many(listed)
    return [_info(s, m) for s, m in zip(listed, metas, strict=True) if m]


def _info(series: SeriesId, meta: Mapping[str, str]) -> SeriesInfo:
    tz = meta.get("tz") or None
    missing = _json(meta.get("missing"), [])
    return SeriesInfo(
        prefix=series.prefix,
        ticker=series.ticker,
        interval=series.interval,
        tz=tz,
        first=_bar_time(meta.get("first"), tz, series.interval),
        last=_bar_time(meta.get("last"), tz, series.interval),
        bars=int(meta.get("bars") or 0),
        missing=len(missing),
        missing_dates=[str(d) for d in missing],
        fetched=meta.get("fetched") or None,
        exchange=meta.get("exchange") or None,
        last_action=_json(meta.get("last_action"), None),
    )


def bars_json(frame: pd.DataFrame, series: SeriesId) -> dict[str, Any]:
    """The JSON form of a ``read_bars`` frame (``bars --format json``, ``GET /data/{t}``):
    ``{"ticker", "interval", "prefix", "tz", "bars": [{"Date": ISO 8601 with offset,
    "Open", ..., "Stock Splits"}]}``, NaN as null."""
    records = []
    for when, row in zip(frame.index, frame.itertuples(index=False, name=None), strict=True):
        record: dict[str, Any] = {"Date": when.isoformat()}
        for column, value in zip(frame.columns, row, strict=True):
            record[column] = int(value) if column == "Volume" else _finite(float(value))
        records.append(record)
    return {
        "ticker": series.ticker,
        "interval": series.interval,
        "prefix": series.prefix,
        "tz": str(frame.index.tz),
        "bars": records,
    }


def parse_day(value: DateLike | None, name: str) -> date | None:
    """A ``start``/``end`` argument as a date: a date, an ISO string (``2024-01-31``, or a
    timestamp: its date) or a datetime / pandas Timestamp (its own date). ValueError else."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip()).date()
        except ValueError:
            raise ValueError(f"{name}: expected a date like 2024-01-31, got {value!r}") from None
    raise ValueError(f"{name}: expected a date, got {type(value).__name__}")


def _epoch(day: date) -> int:
    return (day - date(1970, 1, 1)).days * 86400


def is_intraday(interval: str) -> bool:
    """Bars shorter than a day (``1m`` .. ``90m``, ``1h``), not ``1mo``."""
    return interval[-1:] in ("m", "h") and not interval.endswith("mo")


def _bar_time(ts: str | None, tz: str | None, interval: str) -> str | None:
    if not ts or not tz:
        return None
    if is_intraday(interval):
        from zoneinfo import ZoneInfo

        return datetime.fromtimestamp(int(ts), ZoneInfo(tz)).isoformat()
    return seriescodec.local_date(int(ts), tz).isoformat()


def _json(raw: str | None, default: Any) -> Any:
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return default


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
