"""Market-data sources: Yahoo Finance through yfinance, and a synthetic offline source.

Daemon start-up wires them once::

    session = new_session()
    configure_yfinance(state_dir / "yfinance", session)
    fetchers = build_fetchers(session=session)   # {"yahoo": ..., "demo": ...}
"""

from __future__ import annotations

from curl_cffi import requests as curl_requests

from stocksched.sources.base import (
    BAR_COLUMNS,
    Fetcher,
    FetchError,
    PermanentFetchError,
    TransientFetchError,
)
from stocksched.sources.demo import DemoFetcher
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
    "PermanentFetchError",
    "TransientFetchError",
    "YFinanceFetcher",
    "YahooSession",
    "build_fetchers",
    "configure_yfinance",
    "new_session",
]


def build_fetchers(
    session: curl_requests.Session | None = None,
    timeout: float = 30.0,
    demo_latency_s: float = 0.0,
) -> dict[str, Fetcher]:
    """The fetcher for each ``source:`` name a job may use.

    Pass the same ``session`` that was given to ``configure_yfinance`` so that yfinance's
    process-wide session is not swapped by the first fetch.
    """
    return {
        "yahoo": YFinanceFetcher(session=session, timeout=timeout),
        "demo": DemoFetcher(latency_s=demo_latency_s),
    }
