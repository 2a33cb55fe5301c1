"""Market-data sources: Yahoo Finance through yfinance, and a synthetic offline source.

Daemon start-up wires them once::

    fetchers = lazy_fetchers(lambda: yahoo_fetcher(cache_dir, limiter))
    # {"yahoo": LazyFetcher (built on the first Yahoo fetch), "demo": DemoFetcher}

yfinance and curl_cffi (about 0.3 s and 30 MiB to import) are imported by the first Yahoo
fetch, not at start: a daemon whose jobs are all ``source: demo`` never imports them.
The Yahoo names below (``YFinanceFetcher``, ``new_session``, ...) are loaded on first use.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stocksched.sources.base import (
    BAR_COLUMNS,
    Fetcher,
    FetchError,
    PermanentFetchError,
    TransientFetchError,
)
from stocksched.sources.demo import DemoFetcher

if TYPE_CHECKING:
    import pandas as pd
    from curl_cffi import requests as curl_requests

    from stocksched.ratelimit import RateLimiter
    from stocksched.sources.yahoo import (
        YahooSession,
        YFinanceFetcher,
        configure_yfinance,
        new_session,
    )

__all__ = [
    "BAR_COLUMNS",
    "DemoFetcher",
    "FetchError",
    "Fetcher",
    "LazyFetcher",
    "PermanentFetchError",
    "TransientFetchError",
    "YFinanceFetcher",
    "YahooSession",
    "build_fetchers",
    "configure_yfinance",
    "lazy_fetchers",
    "new_session",
    "yahoo_fetcher",
]

_YAHOO_NAMES = frozenset({"YFinanceFetcher", "YahooSession", "configure_yfinance", "new_session"})


def __getattr__(name: str) -> Any:
    """The Yahoo names, imported (with yfinance) when first asked for."""
    if name in _YAHOO_NAMES:
        return getattr(importlib.import_module("stocksched.sources.yahoo"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LazyFetcher:
    """A ``Fetcher`` built by ``build()`` on its first fetch (once, whichever thread asks)."""

    def __init__(self, build: Callable[[], Fetcher]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._fetcher: Fetcher | None = None

    @property
    def built(self) -> bool:
        return self._fetcher is not None

    def fetcher(self) -> Fetcher:
        fetcher = self._fetcher
        if fetcher is None:
            with self._lock:
                if self._fetcher is None:
                    self._fetcher = self._build()
                fetcher = self._fetcher
        return fetcher

    def fetch_from_source(self, ticker: str, start: date, end: date, interval: str) -> pd.DataFrame:
        return self.fetcher().fetch_from_source(ticker, start, end, interval)


def warm_up() -> None:
    """Import now what every run needs (pandas, numpy, the data-quality checks), so the
    first slot after start does not pay ~0.3 s for it; for a thread of its own once the
    daemon is ready. Yahoo's fetcher (yfinance, curl_cffi: ~27 MiB) stays lazy: a Yahoo
    run waits on the network far longer than on that import."""
    import stocksched.sources.quality  # noqa: F401  # pandas and numpy with it


def yahoo_fetcher(
    cache_dir: Path | None, limiter: RateLimiter | None = None, timeout: float = 30.0
) -> Fetcher:
    """The production Yahoo fetcher: one session (rate limited by ``limiter``) shared with
    yfinance, whose caches go to ``cache_dir`` (None: a private temp directory)."""
    from stocksched.sources.yahoo import YFinanceFetcher, configure_yfinance, new_session

    session = new_session(limiter=limiter)
    configure_yfinance(cache_dir, session=session)
    return YFinanceFetcher(session=session, timeout=timeout)


def build_fetchers(
    session: curl_requests.Session | None = None,
    timeout: float = 30.0,
    demo_latency_s: float = 0.0,
) -> dict[str, Fetcher]:
    """The fetcher for each ``source:`` name a job may use, the Yahoo one built now.

    Pass the same ``session`` that was given to ``configure_yfinance`` so that yfinance's
    process-wide session is not swapped by the first fetch. (The daemon uses
    ``lazy_fetchers`` instead, which imports yfinance only on the first Yahoo fetch.)
    """
    from stocksched.sources.yahoo import YFinanceFetcher

    return {
        "yahoo": YFinanceFetcher(session=session, timeout=timeout),
        "demo": DemoFetcher(latency_s=demo_latency_s),
    }


def lazy_fetchers(yahoo: Callable[[], Fetcher]) -> dict[str, Fetcher]:
    """The fetcher for each ``source:`` name, ``yahoo()`` called on the first Yahoo fetch."""
    return {"yahoo": LazyFetcher(yahoo), "demo": DemoFetcher()}
