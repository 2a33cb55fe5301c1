"""Yahoo Finance bars through yfinance's own API, with failures sorted into permanent/transient.

yfinance (1.7) keeps one process-wide HTTP session and a few process-wide settings, so
``configure_yfinance`` sets them once at daemon start-up. Facts this module relies on
(read from yfinance's source):

- ``yf.config.debug.hide_exceptions`` defaults to True, which turns every failure into a
  logged message and an empty frame; it must be False for us to see what went wrong.
- ``yfinance.data.YfData`` is a singleton holding the curl_cffi session; passing
  ``session=`` to any ``Ticker`` replaces it for every caller.
- On any HTTP status >= 400 yfinance repeats the request once (after switching cookie
  strategy); a second 429 becomes ``YFRateLimitError``, which carries no response, and a
  5xx with a JSON error body becomes ``YFPricesMissingError``, which looks exactly like a
  delisted symbol. The HTTP status and ``Retry-After`` are therefore taken from the
  session itself: ``YahooSession`` remembers the last chart-API answer per thread.
- Time-zone lookups and past windows go through ``YfData.cache_get``, an in-memory
  ``lru_cache`` that also keeps error responses; it is cleared after every failed fetch
  so that a retry, or the next run, asks Yahoo again instead of replaying a cached error.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yfinance as yf
import yfinance.cache as yf_cache
from curl_cffi import requests as curl_requests
from yfinance.data import YfData
from yfinance.exceptions import (
    YFDataException,
    YFException,
    YFInvalidPeriodError,
    YFPricesMissingError,
    YFRateLimitError,
    YFTickerMissingError,
)

from stocksched.logs import one_line
from stocksched.ratelimit import (
    NullRateLimiter,
    RateLimiter,
    RateLimitError,
    acquire_in_scope,
)
from stocksched.sources import yahoonotes
from stocksched.sources.base import (
    BAR_COLUMNS,
    FetchError,
    PermanentFetchError,
    TransientFetchError,
)

log = logging.getLogger(__name__)

_CHART_PATH = "/v8/finance/chart/"
_PRICE_COLUMNS = ("Open", "High", "Low", "Close")
_ACTION_COLUMNS = ("Dividends", "Stock Splits")


@dataclass(frozen=True)
class HttpOutcome:
    """What Yahoo's chart API last answered in one thread."""

    url: str
    status: int
    retry_after: float | None


class YahooSession(curl_requests.Session):
    """A curl_cffi session that remembers, per thread, the last chart-API status.

    yfinance drops the HTTP response when it raises, so without this a 429's
    ``Retry-After`` would be lost and a 5xx could not be told from a delisted symbol.
    Tests subclass it to answer locally (tests/yahoo_fake.py).
    """

    def __init__(self, limiter: RateLimiter | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._outcomes = threading.local()
        # Every HTTP request is limited, not each fetch: one fetch is several requests.
        self._limiter: RateLimiter = limiter or NullRateLimiter()

    def request(self, method: Any, url: str, *args: Any, **kwargs: Any) -> Any:
        acquire_in_scope(self._limiter)
        response = super().request(method, url, *args, **kwargs)
        self.observe(url, response)
        return response

    def observe(self, url: str, response: curl_requests.Response) -> None:
        """Record ``response`` if it came from the chart API (other endpoints are noise)."""
        if _CHART_PATH in url:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            self._outcomes.last = HttpOutcome(url, int(response.status_code), retry_after)

    def last_outcome(self) -> HttpOutcome | None:
        outcome: HttpOutcome | None = getattr(self._outcomes, "last", None)
        return outcome

    def forget_outcome(self) -> None:
        self._outcomes.last = None


def new_session(limiter: RateLimiter | None = None) -> YahooSession:
    """The session the daemon shares with yfinance (impersonating Chrome, as yfinance does)."""
    return YahooSession(limiter=limiter, impersonate="chrome")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def configure_yfinance(
    cache_dir: Path | None, session: curl_requests.Session | None = None
) -> None:
    """Set yfinance's process-wide state; call ONCE at daemon start-up, before any fetch.

    ``cache_dir`` receives yfinance's time-zone, cookie and ISIN caches (SQLite files).
    yfinance has no supported switch to disable them, so ``None`` points them at a
    private temporary directory removed at exit: nothing is ever written under $HOME.
    ``session`` (default: ``new_session()``; a ``YahooSession`` keeps Retry-After and 5xx
    detection working) becomes yfinance's shared HTTP session; pass the same one to
    ``build_fetchers``.
    """
    yf.config.debug.hide_exceptions = False
    # Retries belong to our executor's policy (backoff, Retry-After), not to yfinance.
    yf.config.network.retries = 0
    silence_yfinance_warnings()
    yahoonotes.install()
    location = cache_dir if cache_dir is not None else _private_cache_dir()
    location.mkdir(parents=True, exist_ok=True)
    yf.set_tz_cache_location(str(location))
    _open_caches()
    YfData(session=session if session is not None else new_session())
    log.debug("yfinance configured: caches in %s", location)


def silence_yfinance_warnings() -> None:
    """Drop deprecation warnings raised in yfinance's modules (pandas 3 emits many per fetch).

    They concern yfinance's own use of pandas, which we cannot act on; left alone they
    would repeat on every fetch. Warnings from our code are untouched.
    """
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"yfinance(\.|$)")


def clear_response_cache() -> None:
    """Empty yfinance's in-memory response cache (it keeps error responses too)."""
    YfData.cache_get.cache_clear()


def _open_caches() -> None:
    """Create the cache databases now, from this one thread.

    yfinance opens them lazily and unlocked: the first fetches of a thread pool would race
    to switch a fresh SQLite file to WAL mode and fail with "database is locked".
    """
    yf_cache.get_tz_cache().lookup("")
    yf_cache.get_cookie_cache().lookup("basic")


def _private_cache_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="stocksched-yfinance-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


class YFinanceFetcher:
    """Bars from Yahoo through ``yf.Ticker(...).history()`` (never ``yf.download``).

    Prices are as Yahoo serves them (``auto_adjust=False``: OHLC split-adjusted, not
    dividend-adjusted) with Yahoo's "Adj Close" beside them; the Dividends and Stock
    Splits columns let consumers adjust. yfinance's "Capital Gains" column (funds only) is
    dropped to keep one schema (``BAR_COLUMNS``) for every source. The frame's
    ``attrs["exchange"]`` is Yahoo's ``exchangeName`` (e.g. "NMS"). Intraday frames get
    their index renamed from yfinance's "Datetime" to "Date" for the same reason.
    """

    def __init__(self, session: curl_requests.Session | None = None, timeout: float = 30.0) -> None:
        self._session = session if session is not None else new_session()
        self._observer = self._session if isinstance(self._session, YahooSession) else None
        if self._observer is None:
            log.warning(
                "session is a plain curl_cffi Session, not a YahooSession: Retry-After "
                "is lost and an HTTP 5xx may be taken for a delisted symbol"
            )
        self._timeout = timeout

    def fetch_from_source(self, ticker: str, start: date, end: date, interval: str) -> pd.DataFrame:
        if end < start:
            raise PermanentFetchError(ticker, f"no data: window end {end} is before start {start}")
        _require_configured()
        if self._observer is not None:
            self._observer.forget_outcome()
        source = yf.Ticker(ticker, session=self._session)
        with yahoonotes.captured() as notes:
            frame = self._history(source, ticker, start, end, interval, notes)
        yahoonotes.dropped(ticker, notes)
        if frame.empty:
            raise PermanentFetchError(ticker, f"no data for {start}..{end} ({interval})")
        out = normalise_frame(ticker, frame)
        exchange = _exchange_name(source)
        if exchange:
            out.attrs["exchange"] = str(exchange)
        return out

    def _history(
        self,
        source: yf.Ticker,
        ticker: str,
        start: date,
        end: date,
        interval: str,
        notes: list[str],
    ) -> pd.DataFrame:
        """yfinance's ``history()``, its failures sorted (``classify_failure``) and told
        with what yfinance logged meanwhile (``notes``)."""
        try:
            return source.history(
                start=start,
                end=end + timedelta(days=1),
                interval=interval,
                auto_adjust=False,
                actions=True,
                timeout=self._timeout,
            )
        except RateLimitError:
            raise  # our own limiter said no: the caller decides, it is not Yahoo's answer
        except Exception as exc:  # yfinance raises anything from parse errors to curl errors
            # The cache keeps error answers too: drop them so the next attempt asks Yahoo.
            clear_response_cache()
            window = f"{start}..{end} ({interval})"
            outcome = self._observer.last_outcome() if self._observer is not None else None
            error = classify_failure(ticker, exc, outcome, window)
            error.message = yahoonotes.folded(error.message, notes)
            error.args = (error.message,)
            raise error from exc


def _exchange_name(source: yf.Ticker) -> str | None:
    """Yahoo's ``exchangeName`` from the chart answer ``history()`` just parsed.

    Read from yfinance's raw metadata, not ``history_metadata``: that property may send
    requests of its own (a 5-day history, intraday trading periods).
    """
    history = getattr(source, "_price_history", None)
    meta = getattr(history, "_history_metadata", None)
    name = meta.get("exchangeName") if isinstance(meta, dict) else None
    return str(name) if name else None


def _require_configured() -> None:
    if yf.config.debug.hide_exceptions:
        # Without this yfinance would turn timeouts into empty frames, i.e. fake "no data".
        raise RuntimeError("yfinance is not configured: call configure_yfinance() at start-up")


def classify_failure(
    ticker: str, exc: BaseException, outcome: HttpOutcome | None, window: str = ""
) -> FetchError:
    """Sort a yfinance failure into permanent or transient, trusting the HTTP status first.

    ``outcome`` is the last chart-API answer seen in this thread (None when the request
    never got an answer or was served from yfinance's cache); ``window`` describes the
    request ("2025-01-02..2025-01-10 (1d)") for the no-data message.
    """
    reason = _one_line(exc).removeprefix(f"${ticker.upper()}: ")
    by_status = _transient_by_status(ticker, exc, outcome, reason)
    if by_status is not None:
        return by_status
    if isinstance(exc, curl_requests.exceptions.HTTPError):
        return _classify_http_error(ticker, exc, reason)
    by_exception = _transient_by_exception(ticker, exc, outcome, reason)
    if by_exception is not None:
        return by_exception
    return _permanent(ticker, exc, reason, window)


def _transient_by_status(
    ticker: str, exc: BaseException, outcome: HttpOutcome | None, reason: str
) -> TransientFetchError | None:
    status = outcome.status if outcome is not None else None
    if isinstance(exc, YFRateLimitError) or status == 429:
        retry_after = outcome.retry_after if outcome is not None else None
        return TransientFetchError(ticker, "rate limited by Yahoo (HTTP 429)", retry_after)
    if status is not None and status >= 500:
        return TransientFetchError(ticker, f"Yahoo answered HTTP {status}: {reason}")
    return None


def _transient_by_exception(
    ticker: str, exc: BaseException, outcome: HttpOutcome | None, reason: str
) -> TransientFetchError | None:
    if isinstance(exc, OSError):  # curl_cffi's Timeout/ConnectionError are OSErrors too
        return TransientFetchError(ticker, f"network error: {type(exc).__name__}: {reason}")
    if isinstance(exc, YFDataException) and "CURRENTLY DOWN" in str(exc):
        return TransientFetchError(ticker, "Yahoo Finance is down (maintenance page)")
    if type(exc).__name__ == "OperationalError" and "locked" in reason:
        # yfinance's SQLite caches (peewee) briefly busy under concurrent writers.
        return TransientFetchError(ticker, f"yfinance cache busy: {reason}")
    if isinstance(exc, ValueError) and outcome is not None and outcome.status == 200:
        # A 200 whose body is not the JSON we expect: a proxy or captive page, try later.
        return TransientFetchError(ticker, f"unreadable answer from Yahoo: {reason}")
    return None


def _permanent(ticker: str, exc: BaseException, reason: str, window: str) -> PermanentFetchError:
    if isinstance(exc, YFPricesMissingError) and exc.yahoo_reason is None and window:
        # Yahoo answered, without complaint, with no bars in the window.
        return PermanentFetchError(ticker, f"no data for {window}")
    if isinstance(exc, (YFTickerMissingError, YFInvalidPeriodError)):
        return PermanentFetchError(ticker, reason)
    if not isinstance(exc, YFException):
        log.warning("unexpected yfinance failure for %s", ticker, exc_info=exc)
    return PermanentFetchError(ticker, f"{type(exc).__name__}: {reason}")


def _classify_http_error(
    ticker: str, exc: curl_requests.exceptions.HTTPError, reason: str
) -> FetchError:
    response = getattr(exc, "response", None)
    status = int(getattr(response, "status_code", 0) or 0)
    if status == 429 or status >= 500 or status == 0:
        return TransientFetchError(ticker, f"Yahoo answered HTTP {status or '?'}: {reason}")
    if status == 404:
        return PermanentFetchError(ticker, "unknown or delisted symbol (HTTP 404)")
    return PermanentFetchError(ticker, f"Yahoo answered HTTP {status}: {reason}")


def _one_line(exc: BaseException) -> str:
    return one_line(exc) or type(exc).__name__


def normalise_frame(ticker: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Bring yfinance's frame to ``BAR_COLUMNS`` with a tz-aware index named "Date"."""
    missing = [c for c in (*_PRICE_COLUMNS, "Volume") if c not in frame.columns]
    if missing:
        raise PermanentFetchError(ticker, f"Yahoo's answer lacks columns {missing}")
    if not isinstance(frame.index, pd.DatetimeIndex) or frame.index.tz is None:
        raise PermanentFetchError(ticker, "Yahoo's answer has no time-zone-aware dates")
    out = pd.DataFrame(index=frame.index.rename("Date"))
    for column in _PRICE_COLUMNS:
        out[column] = frame[column].astype("float64")
    out["Adj Close"] = frame["Adj Close" if "Adj Close" in frame.columns else "Close"].astype(
        "float64"
    )
    out["Volume"] = frame["Volume"].fillna(0).astype("int64")
    for column in _ACTION_COLUMNS:
        source = frame[column] if column in frame.columns else 0.0
        out[column] = pd.Series(source, index=frame.index).fillna(0.0).astype("float64")
    return out[list(BAR_COLUMNS)]
