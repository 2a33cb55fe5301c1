"""The bytes of one bar series: fixed-width binary bars in base64 chunks, actions beside them.

A series (``storage.series``) is cut into chunks of a fixed time span per interval
(``chunk_span_s``): a year of daily bars, a month of hourly ones, a day of minute bars.
Each chunk is one string, the base64 of a packed array of bars sorted by time:

    ts int64 (UTC epoch seconds of the bar's start), Open, High, Low, Close,
    Adj Close float64, Volume int64                                  -- 56 bytes a bar

Binary because it is exact (a float64 reads back bit for bit, NaN included) and small
(75 bytes of base64 a bar, against ~140 for the window JSON); base64 because every
client of the daemon decodes replies as text. Dividends and splits are rare, so they are
not columns of every bar but entries of the series' actions hash (``ts`` -> ``div,split``).

Merging is by timestamp: a bar given again replaces the stored one, so storing the same
bars twice changes nothing and bars never duplicate.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from stocksched.sources.base import BAR_COLUMNS

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: Columns of a series frame: every source's (yfinance's ``history(auto_adjust=False,
#: actions=True)`` order).
SERIES_COLUMNS: tuple[str, ...] = BAR_COLUMNS
PRICE_COLUMNS: tuple[str, ...] = ("Open", "High", "Low", "Close", "Adj Close")
ACTION_COLUMNS: tuple[str, ...] = ("Dividends", "Stock Splits")
BAR_BYTES = 56

_DAY_S = 86400
#: Chunk span per interval: about 250 daily bars, 150 hourly or 390 one-minute bars each,
#: so a range read touches few strings and a run's write rewrites one or two.
_SPANS_S: dict[str, int] = {
    "1m": _DAY_S,
    "2m": 2 * _DAY_S,
    "5m": 7 * _DAY_S,
    "15m": 14 * _DAY_S,
    "30m": 28 * _DAY_S,
    "60m": 28 * _DAY_S,
    "90m": 28 * _DAY_S,
    "1h": 28 * _DAY_S,
    "1d": 365 * _DAY_S,
    "5d": 5 * 365 * _DAY_S,
    "1wk": 5 * 365 * _DAY_S,
    "1mo": 20 * 365 * _DAY_S,
    "3mo": 60 * 365 * _DAY_S,
}


def chunk_span_s(interval: str) -> int:
    """Seconds of bars one chunk holds at ``interval``."""
    try:
        return _SPANS_S[interval]
    except KeyError:
        raise ValueError(f"no series layout for interval {interval!r}") from None


def chunk_start(ts: int, interval: str) -> int:
    """The start (epoch seconds, a multiple of the span) of the chunk holding ``ts``."""
    span = chunk_span_s(interval)
    return ts - ts % span


@cache
def _dtype() -> np.dtype:
    import numpy as np

    return np.dtype(
        [
            ("ts", "<i8"),
            ("open", "<f8"),
            ("high", "<f8"),
            ("low", "<f8"),
            ("close", "<f8"),
            ("adj", "<f8"),
            ("volume", "<i8"),
        ]
    )


_FIELDS = ("open", "high", "low", "close", "adj")
#: A bar's corporate actions: (dividend, split ratio), 0.0 for none.
Action = tuple[float, float]
_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


@dataclass(frozen=True)
class Bars:
    """Bars sorted by ``ts`` (a numpy structured array) and their actions by ``ts``."""

    rows: np.ndarray
    actions: Mapping[int, tuple[float, float]]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def first_ts(self) -> int:
        return int(self.rows["ts"][0])

    @property
    def last_ts(self) -> int:
        return int(self.rows["ts"][-1])


def empty_rows() -> np.ndarray:
    import numpy as np

    return np.empty(0, dtype=_dtype())


def bars_from_frame(frame: pd.DataFrame) -> Bars:
    """The bars of a source frame (tz-aware index, ``SERIES_COLUMNS``; ``Adj Close`` may be
    missing: then it equals ``Close``). Raises ValueError for a frame that cannot be
    stored exactly (no tz-aware index, NaT, duplicate timestamps, a fractional Volume)."""
    import numpy as np
    import pandas as pd

    index = frame.index
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        raise ValueError("bars need a time-zone-aware DatetimeIndex")
    if index.hasnans:
        raise ValueError("the index holds NaT")
    ts = index.asi8 if index.unit == "s" else index.asi8 // _PER_SECOND[index.unit]
    # One conversion of the whole frame (pandas' per-column access costs more than the
    # copying it saves), laid out as the packed bars: float64 holds every Volume exactly
    # (below 2**53); the two int64 fields are written through an int64 view. Every step
    # is one numpy call over all bars: this runs once per ticker and run.
    cols: list[str] = frame.columns.tolist()
    values = frame.to_numpy(dtype="float64", na_value=np.nan)
    packed = np.empty((len(frame), 7), dtype="<f8")
    picks = [cols.index(c if c in cols else "Close") for c in PRICE_COLUMNS]
    packed[:, 1:6] = values[:, _columns(picks)]
    volume = values[:, cols.index("Volume")]
    ints = packed.view("<i8")
    ints[:, 0] = ts
    if np.isnan(volume).any():
        volume = np.nan_to_num(volume, nan=0.0)  # NaN (no volume) as 0
    ints[:, 6] = volume  # truncates: a fractional Volume is refused below
    if not (ints[:, 6] == volume).all():
        raise ValueError("Volume holds fractional values")
    rows = packed.view(_dtype()).reshape(len(frame))
    found = _actions_of(values, cols, ts)
    if len(rows) > 1 and not (ts[1:] > ts[:-1]).all():
        rows = rows[np.argsort(rows["ts"], kind="stable")]
        if np.any(np.diff(rows["ts"]) == 0):
            raise ValueError("two bars share one timestamp")
    return Bars(rows, found)


def _actions_of(values: np.ndarray, cols: list[str], ts: np.ndarray) -> dict[int, Action]:
    """ts -> (dividend, split) of the bars with either, from the frame's values."""
    import numpy as np

    present = [cols.index(c) for c in ACTION_COLUMNS if c in cols]
    if not present:
        return {}
    block = values[:, _columns(present)]
    if not np.count_nonzero(block):  # the usual case: no action at all (NaN counts)
        return {}
    if len(present) < 2:
        at = ACTION_COLUMNS.index(cols[present[0]])
        full = np.zeros((len(values), 2))
        full[:, at] = block[:, 0]
        block = full
    dividend, split = block[:, 0], block[:, 1]
    where = np.flatnonzero(
        (dividend != 0.0) & (dividend == dividend) | (split != 0.0) & (split == split)
    )
    return {int(ts[i]): (float(dividend[i]), float(split[i])) for i in where}


def _columns(picks: list[int]) -> slice | list[int]:
    """``picks`` as a slice when they are consecutive (the usual column order): numpy
    copies a slice of columns at half the cost of picking them one by one."""
    if picks == list(range(picks[0], picks[0] + len(picks))):
        return slice(picks[0], picks[0] + len(picks))
    return picks


def merge(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``old`` with ``new`` upserted by ``ts`` (a bar of ``new`` replaces ``old``'s), sorted."""
    import numpy as np

    if len(old) == 0:
        return new
    keep = old[~np.isin(old["ts"], new["ts"])]
    both = np.concatenate([keep, new])
    return both[np.argsort(both["ts"], kind="stable")]


def split_chunks(rows: np.ndarray, interval: str) -> dict[int, np.ndarray]:
    """``rows`` (sorted) cut at chunk boundaries: chunk start -> its rows (views)."""
    import numpy as np

    if len(rows) == 0:
        return {}
    span = chunk_span_s(interval)
    ts = rows["ts"]
    first, last = int(ts[0]) - int(ts[0]) % span, int(ts[-1]) - int(ts[-1]) % span
    if first == last:  # a run's tail, or a year of daily bars: one or two chunks
        return {first: rows}
    bounds = np.arange(first + span, last + 1, span)
    cuts = np.searchsorted(ts, bounds).tolist()
    starts = range(first, last + 1, span)
    out = {}
    for start, lo, hi in zip(starts, [0, *cuts], [*cuts, len(rows)], strict=True):
        if hi > lo:
            out[start] = rows[lo:hi]
    return out


def encode_chunk(rows: np.ndarray) -> bytes:
    """The stored text of a chunk, as ASCII bytes (redis-py sends bytes as they are)."""
    return base64.b64encode(rows.data)


def decode_chunks(blobs: Iterable[str | bytes]) -> np.ndarray:
    """The rows of stored chunks, concatenated in the order given (chunk order = time)."""
    import numpy as np

    dtype = _dtype()
    parts = []
    for blob in blobs:
        try:
            raw = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"a chunk is not base64: {exc}") from exc
        if len(raw) % BAR_BYTES:
            raise ValueError(f"a chunk of {len(raw)} bytes is not whole bars of {BAR_BYTES}")
        parts.append(np.frombuffer(raw, dtype=dtype))
    return np.concatenate(parts) if parts else empty_rows()


def local_date(ts: int, tz: str) -> date:
    """The exchange-local date of the bar starting at ``ts``."""
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).date()


def encode_action(dividend: float, split: float) -> str:
    return f"{dividend!r},{split!r}"


def decode_actions(raw: Mapping[str, str] | Mapping[bytes, bytes]) -> dict[int, Action]:
    """The actions hash as read from Redis: ts -> (dividend, split ratio)."""
    out = {}
    for key, value in raw.items():
        text = value.decode() if isinstance(value, bytes) else value
        dividend, _, split = text.partition(",")
        out[int(key)] = (float(dividend), float(split or 0.0))
    return out


def frame_of(rows: np.ndarray, actions: Mapping[int, tuple[float, float]], tz: str) -> pd.DataFrame:
    """The yfinance-shaped frame of ``rows``: ``Date`` index in ``tz``, ``SERIES_COLUMNS``."""
    import numpy as np
    import pandas as pd

    # Second resolution, as yfinance builds its index from Yahoo's epoch seconds.
    utc = pd.DatetimeIndex(rows["ts"].astype("datetime64[s]"), name="Date").tz_localize("UTC")
    index = utc.tz_convert(tz)
    data: dict[str, object] = {
        column: rows[field].astype("float64", copy=True)
        for field, column in zip(_FIELDS, PRICE_COLUMNS, strict=True)
    }
    dividends = np.zeros(len(rows))
    splits = np.zeros(len(rows))
    if actions:
        position = {int(t): i for i, t in enumerate(rows["ts"])}
        for ts, (dividend, split) in actions.items():
            i = position.get(ts)
            if i is not None:
                dividends[i], splits[i] = dividend, split
    data["Volume"] = rows["volume"].astype("int64", copy=True)
    data["Dividends"] = dividends
    data["Stock Splits"] = splits
    return pd.DataFrame(data, index=index, columns=list(SERIES_COLUMNS))
