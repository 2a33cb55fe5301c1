"""The contract every market-data source meets, and the two ways a fetch can fail.

The executor only sees this module: it retries a ``TransientFetchError`` (later work)
and records a ``PermanentFetchError`` as the ticker's final error for the run.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import pandas as pd

#: Column order of every frame a source returns: yfinance's for ``history(auto_adjust=False,
#: actions=True)``, so storage and consumers see one schema whatever the source.
BAR_COLUMNS: tuple[str, ...] = (
    "Open",
    "High",
    "Low",
    "Close",
    "Adj Close",
    "Volume",
    "Dividends",
    "Stock Splits",
)


class FetchError(Exception):
    """A ticker could not be fetched; ``str(err)`` is one line fit for a run's error map."""

    def __init__(self, ticker: str, message: str) -> None:
        super().__init__(message)
        self.ticker = ticker
        self.message = message


class PermanentFetchError(FetchError):
    """Asking again will not help: unknown or delisted symbol, or no data for the window."""


class TransientFetchError(FetchError):
    """Asking again later may help: timeout, connection error, HTTP 5xx or 429.

    ``retry_after`` is the delay in seconds the server asked for (``Retry-After``),
    or None when it gave none; a retry policy should wait at least that long.
    """

    def __init__(self, ticker: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(ticker, message)
        self.retry_after = retry_after


class Fetcher(Protocol):
    """A source of OHLCV bars for one ticker.

    ``start`` and ``end`` are both INCLUSIVE calendar dates, in the exchange's (the job's)
    local sense. The result is shaped like yfinance ``history()``: a DatetimeIndex named
    "Date", time-zone aware in the exchange's time zone, and the columns ``BAR_COLUMNS``
    (Volume int64, the rest float64). ``frame.attrs["exchange"]``, when the source knows
    it, is the exchange's code as the source names it (Yahoo's ``exchangeName``, "NMS").
    A window without data raises ``PermanentFetchError``; an empty frame is never
    returned. Implementations must be safe to call from several threads at once.
    """

    def fetch_from_source(
        self, ticker: str, start: date, end: date, interval: str
    ) -> pd.DataFrame: ...
