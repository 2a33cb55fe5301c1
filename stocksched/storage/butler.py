"""DataIOButler: OHLCV DataFrames to and from the original design's JSON record format in Redis.

Record format (the original design's, kept so existing consumers keep working): the key
``{prefix}:{TICKER}:{start}:{end}`` (daily bars; any other interval names itself after the
ticker, ``{prefix}:{TICKER}:{interval}:{start}:{end}``, see ``keys.data_key``) holds a JSON
list with one object per bar, ``{"Date": ..., <every column of the frame, in order>}``:

- ``Date`` is ``YYYY-MM-DD`` (the exchange-local date) for daily and longer
  bars, and full ISO 8601 with the UTC offset (``2025-10-21T09:30:00-04:00``)
  for intraday bars.
- Floats are written with Python's shortest round-trip repr, so they read back
  bit for bit; NaN is written as ``null`` (JSON has no NaN) and reads back as
  NaN. Infinite values are refused. ``Volume`` is written as integers.

``{prefix}:{TICKER}:latest`` (``{prefix}:{TICKER}:{interval}:latest`` for intervals other
than ``1d``) holds the name of the newest window key at that interval, so a consumer can
find the latest bars without knowing dates.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import redis

from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, StorageError, storage_errors, ttl_to_ms
from stocksched.storage.cluster import is_cluster
from stocksched.storage.fence import Fence
from stocksched.storage.series import SeriesStore
from stocksched.storage.windows import moves_forward, window_end, write_window_apart

if TYPE_CHECKING:  # pandas is imported by the first frame stored or read, not at start
    import pandas as pd

logger = logging.getLogger(__name__)

DATE_FIELD = "Date"
#: The columns of a window record, as they always were (the series keeps Adj Close too).
WINDOW_COLUMNS: tuple[str, ...] = (
    "Open",
    "High",
    "Low",
    "Close",
    "Volume",
    "Dividends",
    "Stock Splits",
)
VOLUME_COLUMN = "Volume"
#: WATCH conflicts tolerated before a save gives up (each means another writer
#: moved the same ticker's latest pointer in between; a handful is plenty).
MAX_WATCH_ATTEMPTS = 5


class CorruptRecordError(StorageError):
    """A stored value is not a bar record in the original design's format."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__("decode", key, reason)


class DataIOButler:
    """Stores and loads one ticker's bars per fetch window and bar interval.

    ``interval`` (keyword, default ``1d``) is part of every key but the daily ones, so
    daily and hourly bars of the same prefix and ticker live side by side, each interval
    with its own latest pointer; a reader passes the interval the bars were stored with.

    ``save_data`` writes the window and moves the latest pointer in one
    MULTI/EXEC transaction, so no reader ever sees the pointer name a window
    that is not there. The pointer only moves forward: a window whose end date
    is before that of the window it points to (a backfill, a manual run with
    old dates) is stored but does not become "latest". Both keys get the same
    ttl, so the pointer expires together with the window it names instead of
    dangling.
    """

    def __init__(self, adapter: RedisAdapter) -> None:
        self._adapter = adapter
        #: The bar series the windows are derived from (one per prefix, ticker, interval).
        self.series = SeriesStore(adapter)

    def save_data(
        self,
        data: pd.DataFrame,
        prefix: str,
        stock_id: str,
        start_date: str,
        end_date: str,
        ttl: timedelta | None = None,
        intraday: bool | None = None,
        *,
        interval: str = keys.DAILY_INTERVAL,
        fence: Fence | None = None,
    ) -> str:
        """Store ``data`` (bars indexed by time) for one window; returns the key written.

        With ``fence`` (the storing run's lease) nothing is written once the run has lost
        its lease: FenceLostError.

        ``intraday`` None detects the bar size: all timestamps at local midnight
        means daily bars. Raises ValueError for a frame that cannot be stored
        faithfully (empty, no DatetimeIndex, a naive intraday index, non-string
        or clashing column names, infinite values) or for key parts containing
        ``:`` or whitespace, StorageError when Redis fails.
        """
        ticker = _key_part(stock_id, "stock_id").upper()
        key = keys.data_key(
            _prefix(prefix),
            ticker,
            _key_part(start_date, "start_date"),
            _key_part(end_date, "end_date"),
            interval=_key_part(interval, "interval"),
        )
        payload = encode_frame(data, intraday)
        self._write_window(key, prefix, ticker, interval, payload, ttl_to_ms(ttl), fence)
        logger.debug("stored %d bars under %s (%d bytes)", len(data), key, len(payload))
        return key

    def update_data(
        self,
        data: pd.DataFrame,
        prefix: str,
        stock_id: str,
        start_date: str,
        end_date: str,
        ttl: timedelta | None = None,
        intraday: bool | None = None,
        *,
        interval: str = keys.DAILY_INTERVAL,
    ) -> str:
        """Re-store a window (the original design's name): the same overwrite as ``save_data``."""
        return self.save_data(
            data, prefix, stock_id, start_date, end_date, ttl, intraday, interval=interval
        )

    def get_data(
        self,
        prefix: str,
        stock_id: str,
        start_date: str,
        end_date: str,
        tz: str | None = None,
        *,
        interval: str = keys.DAILY_INTERVAL,
    ) -> pd.DataFrame | None:
        """The bars stored for one window at ``interval``, or None when the key is absent
        (or expired).

        The frame has the stored columns in order (``Volume`` int64, or float64
        with NaN where bars had no volume; prices float64) and an index named
        ``Date``:

        - daily bars: tz-naive midnights of the stored dates; with ``tz``, those
          midnights localized to ``tz`` (pass the exchange zone to get back
          exactly what yfinance returned);
        - intraday bars: tz-aware. Without ``tz``, the stored fixed UTC offset
          when all bars share one, or UTC when the window spans a DST change (an
          index has a single zone); with ``tz``, converted to ``tz``.

        Raises CorruptRecordError (a StorageError) for a value not in the
        record format, StorageError when Redis fails.
        """
        ticker = _key_part(stock_id, "stock_id").upper()
        key = keys.data_key(
            _prefix(prefix),
            ticker,
            _key_part(start_date, "start_date"),
            _key_part(end_date, "end_date"),
            interval=_key_part(interval, "interval"),
        )
        return self._load(key, tz)

    def get_latest(
        self,
        prefix: str,
        stock_id: str,
        tz: str | None = None,
        *,
        interval: str = keys.DAILY_INTERVAL,
    ) -> pd.DataFrame | None:
        """The newest stored window of a ticker at ``interval`` (see ``get_data``), or None
        if there is none.

        Also None in the rare race where the window expires between reading the
        pointer and reading the window.
        """
        ticker = _key_part(stock_id, "stock_id").upper()
        pointer_key = keys.latest_key(
            _prefix(prefix), ticker, interval=_key_part(interval, "interval")
        )
        window_key = self._adapter.get_data(pointer_key)
        if window_key is None:
            return None
        if window_end(window_key, prefix, ticker, interval) is None:
            what = ticker if interval == keys.DAILY_INTERVAL else f"{ticker} {interval}"
            raise CorruptRecordError(pointer_key, f"names no {what} window: {window_key!r}")
        return self._load(window_key, tz)

    def _load(self, key: str, tz: str | None) -> pd.DataFrame | None:
        raw = self._adapter.get_data(key)
        if raw is None:
            return None
        try:
            return decode_frame(raw, tz)
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptRecordError(key, str(exc)) from exc

    def _write_window(
        self,
        key: str,
        prefix: str,
        ticker: str,
        interval: str,
        payload: str,
        px: int | None,
        fence: Fence | None,
    ) -> None:
        """SET the window and, unless it is older than the current latest, the pointer: atomically.

        Optimistic locking (WATCH the pointer, MULTI/EXEC) rather than a Lua
        script keeps the commands plain and visible in MONITOR; a concurrent
        writer of the same ticker only costs a retry.
        """
        latest = keys.latest_key(prefix, ticker, interval=interval)
        client = self._adapter.client
        if is_cluster(client):  # window, pointer and lease in three slots: three steps
            with storage_errors("SET", key):
                return write_window_apart(
                    client, key, (prefix, ticker, interval), payload, px, fence
                )
        with storage_errors("MULTI/EXEC", key), client.pipeline(transaction=True) as pipe:
            for _ in range(MAX_WATCH_ATTEMPTS):
                try:
                    pipe.watch(latest, *(fence.watched if fence is not None else ()))
                    if fence is not None:
                        fence.check(pipe)
                    current = pipe.get(latest)
                    pipe.multi()
                    pipe.set(key, payload, px=px)
                    if moves_forward(key, current, prefix, ticker, interval):
                        pipe.set(latest, key, px=px)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue
            raise StorageError("MULTI/EXEC", key, "latest pointer kept changing under us (WATCH)")


def _prefix(prefix: str) -> str:
    if not prefix or prefix != prefix.strip():
        raise ValueError(f"prefix must be non-empty without surrounding whitespace: {prefix!r}")
    return prefix


def _key_part(value: str, what: str) -> str:
    """Refuse parts that would make keys ambiguous to split (``:``) or hard to type."""
    if not value or ":" in value or any(ch.isspace() for ch in value):
        raise ValueError(f"{what} must be non-empty without ':' or whitespace: {value!r}")
    return value


# --- encoding ---------------------------------------------------------------------------


def encode_frame(data: pd.DataFrame, intraday: bool | None = None) -> str:
    """The JSON record list for ``data`` (see the module docstring for the format)."""
    index = _checked_index(data)
    if intraday is None:
        intraday = not bool((index == index.normalize()).all())
    dates = _encode_dates(index, intraday)
    columns = [str(c) for c in data.columns]
    values = [_encode_column(data.iloc[:, i]) for i in range(len(columns))]
    records = (
        [
            {DATE_FIELD: date, **dict(zip(columns, row, strict=True))}
            for date, row in zip(dates, zip(*values, strict=True), strict=True)
        ]
        if columns
        else [{DATE_FIELD: date} for date in dates]
    )
    try:
        return json.dumps(records, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        raise ValueError(f"frame holds infinite values, which JSON cannot carry: {exc}") from exc
    except TypeError as exc:
        raise ValueError(f"frame holds values JSON cannot carry: {exc}") from exc


def _checked_index(data: pd.DataFrame) -> pd.DatetimeIndex:
    import pandas as pd

    if len(data.index) == 0:
        raise ValueError("refusing to store an empty frame (it would replace real data with none)")
    if not isinstance(data.index, pd.DatetimeIndex):
        raise ValueError(f"bars need a DatetimeIndex, got {type(data.index).__name__}")
    names = list(data.columns)
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError(f"column names must be unique strings: {names!r}")
    if DATE_FIELD in names:
        raise ValueError(f"a {DATE_FIELD!r} column clashes with the record's date field")
    if data.index.hasnans:
        raise ValueError("the index holds NaT")
    return data.index


def _encode_dates(index: pd.DatetimeIndex, intraday: bool) -> list[str]:
    if not intraday:
        return [str(d) for d in index.strftime("%Y-%m-%d")]
    if index.tz is None:
        raise ValueError("intraday bars need a tz-aware index (their offset is part of the record)")
    return [ts.isoformat() for ts in index]


def _encode_column(column: pd.Series) -> list[Any]:
    """Python natives for one column: floats exact, missing values as None, Volume integral."""
    import pandas as pd

    na, nat = pd.NA, pd.NaT
    values = [None if _is_missing(v, na, nat) else v for v in column.tolist()]
    if column.name == VOLUME_COLUMN and all(
        v is None or (isinstance(v, float) and v.is_integer()) for v in values
    ):
        values = [None if v is None else int(v) for v in values]
    return values


def _is_missing(value: Any, na: Any, nat: Any) -> bool:
    return (
        value is None
        or value is na
        or value is nat
        or (isinstance(value, float) and math.isnan(value))
    )


# --- decoding ---------------------------------------------------------------------------


def decode_frame(raw: str, tz: str | None = None) -> pd.DataFrame:
    """The DataFrame for one stored record list (see ``DataIOButler.get_data``)."""
    import pandas as pd

    records = json.loads(raw)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("not a JSON list of objects")
    columns = [name for name in records[0] if name != DATE_FIELD] if records else []
    index = _decode_dates([r[DATE_FIELD] for r in records], tz)
    data = {
        name: _decode_column([r.get(name) for r in records]).set_axis(index) for name in columns
    }
    return pd.DataFrame(data, index=index, columns=columns)


def _decode_dates(dates: Sequence[Any], tz: str | None) -> pd.DatetimeIndex:
    import pandas as pd

    if not all(isinstance(d, str) for d in dates):
        raise ValueError("a Date field is not a string")
    if all(len(d) == 10 for d in dates):
        index = pd.DatetimeIndex(pd.to_datetime(list(dates), format="%Y-%m-%d"), name=DATE_FIELD)
        return index if tz is None else index.tz_localize(tz)
    try:
        index = pd.DatetimeIndex(pd.to_datetime(list(dates), format="ISO8601"), name=DATE_FIELD)
    except ValueError:  # mixed offsets (the window spans a DST change): one zone, UTC
        index = pd.DatetimeIndex(
            pd.to_datetime(list(dates), format="ISO8601", utc=True), name=DATE_FIELD
        )
    return index if tz is None else index.tz_convert(tz)


def _decode_column(values: list[Any]) -> pd.Series:
    """Dtype from the JSON types: ints -> int64, numbers (or nulls) -> float64, bools -> bool."""
    import pandas as pd

    present = [v for v in values if v is not None]
    has_null = len(present) != len(values)
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean" if has_null else bool)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)
    if not numbers:
        return pd.Series(values)
    if present and not has_null and all(isinstance(v, int) for v in present):
        return pd.Series(values, dtype="int64")
    return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
