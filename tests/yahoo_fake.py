"""An offline Yahoo Finance: a curl_cffi session that answers yfinance's requests locally.

yfinance's real request-and-parse code runs against it, so tests see the DataFrames and
exceptions our code would see from Yahoo, without any network. It serves:

- ``https://fc.yahoo.com`` (sets the ``A3`` cookie), the crumb (``/v1/test/getcrumb``),
  the consent page of yfinance's fallback cookie strategy (no form, so it falls back);
- ``/v8/finance/chart/{symbol}``: bars from a small table (``SYMBOLS``), or a scripted
  failure: 404 "No data found, symbol may be delisted", 429 (optionally with
  ``Retry-After``), 5xx, an empty window, or a raised curl_cffi ``Timeout`` /
  ``ConnectionError``; or malformed data (``Reply.canned``: exactly the bars given,
  whatever window was asked, e.g. ``history_back_to`` 200,000 bars back to 1477, or
  ``bar(...)`` rows with negative prices or High < Low);
- quoteSummary / quote (yfinance's fallback time-zone lookup): always 404, no quote data.

How yfinance 1.7 spends requests (useful when scripting): before the first history
request of a symbol it looks up the symbol's time zone with a chart request
(``range=1d``, cached afterwards in the tz cache); on ANY HTTP status >= 400 it repeats
the request once after switching cookie strategy, so one failing fetch consumes two
error replies; a raised timeout consumes one. ``script_attempts`` does that doubling
for you so that a script reads as fetch attempts: ``429, ok`` = first fetch rate
limited, second fetch succeeds.

Use ``installed_fake(cache_dir)`` around a test (or as the body of a fixture).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from http import HTTPStatus
from http.cookiejar import Cookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import yfinance as yf
import yfinance.base
import yfinance.cache
from curl_cffi import requests as curl_requests
from curl_cffi.const import CurlECode
from curl_cffi.requests.headers import Headers
from yfinance.data import SingletonMeta, YfData

from stocksched.sources.yahoo import YahooSession, clear_response_cache, configure_yfinance

CRUMB = "Xq3fC9pLm2T"
DELISTED_BODY = {
    "chart": {
        "result": None,
        "error": {"code": "Not Found", "description": "No data found, symbol may be delisted"},
    }
}
SERVER_ERROR_BODY = {
    "chart": {
        "result": None,
        "error": {"code": "Internal Server Error", "description": "Internal Server Error"},
    }
}
MAINTENANCE_PAGE = (
    "<html><head><title>Yahoo</title></head><body>Will be right back...</body></html>"
)
INTRADAY_TOO_OLD = (
    "1m data not available for startTime=1733150400 and endTime=1736197200. "
    "Only 8 days worth of 1m granularity data are allowed to be fetched per request."
)
VALID_RANGES = ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"]


# ---------------------------------------------------------------------------- bar tables


@dataclass(frozen=True)
class Bar:
    """One bar as Yahoo stores it: start time (exchange-local) and OHLCV."""

    start: datetime  # aware, exchange-local
    open: float
    high: float
    low: float
    close: float
    volume: int
    adjclose: float | None = None

    @property
    def timestamp(self) -> int:
        return int(self.start.timestamp())


@dataclass(frozen=True)
class FakeSymbol:
    """A symbol the fake Yahoo knows: its exchange metadata, bars per interval, events."""

    symbol: str
    timezone: str = "America/New_York"
    currency: str = "USD"
    instrument_type: str = "EQUITY"
    exchange: str = "NMS"
    full_exchange: str = "NasdaqGS"
    session_open: time = time(9, 30)
    session_close: time = time(16, 0)
    bars: dict[str, tuple[Bar, ...]] = field(default_factory=dict)
    dividends: tuple[tuple[date, float], ...] = ()
    splits: tuple[tuple[date, int, int], ...] = ()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def at(self, day: date, when: time) -> datetime:
        return datetime.combine(day, when, tzinfo=self.zone)


def daily(
    sym_tz: str,
    session_open: time,
    rows: Iterable[tuple[str, float, float, float, float, int, float]],
) -> tuple[Bar, ...]:
    """Daily bars; Yahoo stamps each at the session open (e.g. 09:30 New York)."""
    zone = ZoneInfo(sym_tz)
    return tuple(
        Bar(datetime.combine(date.fromisoformat(d), session_open, tzinfo=zone), o, h, lo, c, v, adj)
        for d, o, h, lo, c, v, adj in rows
    )


def intraday(
    sym_tz: str, rows: Iterable[tuple[str, float, float, float, float, int]]
) -> tuple[Bar, ...]:
    zone = ZoneInfo(sym_tz)
    return tuple(
        Bar(datetime.fromisoformat(t).replace(tzinfo=zone), o, h, lo, c, v)
        for t, o, h, lo, c, v in rows
    )


NY = "America/New_York"
# AAPL, first days of 2025 (9 Jan: US markets closed for a national day of mourning).
AAPL = FakeSymbol(
    "AAPL",
    bars={
        "1d": daily(
            NY,
            time(9, 30),
            [
                ("2025-01-02", 248.93, 249.10, 241.82, 243.85, 55740700, 242.9644),
                ("2025-01-03", 243.36, 244.18, 241.89, 243.36, 40244100, 242.4762),
                ("2025-01-06", 244.31, 247.33, 243.20, 245.00, 45045600, 244.1102),
                ("2025-01-07", 242.98, 245.55, 241.35, 242.21, 40856000, 241.3304),
                ("2025-01-08", 241.92, 243.71, 240.05, 242.70, 37628900, 241.8186),
                ("2025-01-10", 240.01, 240.16, 233.00, 236.85, 61710900, 235.9899),
            ],
        ),
        "1h": intraday(
            NY,
            [
                ("2025-01-10T09:30", 240.01, 240.16, 235.52, 236.20, 14023811),
                ("2025-01-10T10:30", 236.19, 237.40, 235.80, 237.02, 7104312),
                ("2025-01-10T11:30", 237.00, 237.30, 234.90, 235.40, 6218840),
                ("2025-01-10T12:30", 235.41, 236.10, 233.00, 233.50, 8312007),
                ("2025-01-10T13:30", 233.52, 234.90, 233.40, 234.60, 6402315),
                ("2025-01-10T14:30", 234.61, 236.20, 234.30, 235.90, 7810554),
                ("2025-01-10T15:30", 235.91, 237.10, 235.50, 236.85, 11839061),
            ],
        ),
    },
)
# MSFT around its February 2025 ex-dividend day (0.83 USD on 20 Feb).
MSFT = FakeSymbol(
    "MSFT",
    bars={
        "1d": daily(
            NY,
            time(9, 30),
            [
                ("2025-02-18", 408.00, 410.60, 406.50, 409.64, 21423100, 408.8251),
                ("2025-02-19", 407.88, 415.49, 407.65, 414.77, 24114200, 413.9448),
                ("2025-02-20", 415.31, 419.31, 412.54, 416.13, 23508700, 416.1300),
                ("2025-02-21", 417.34, 418.05, 405.56, 408.21, 27524800, 408.2100),
            ],
        )
    },
    dividends=((date(2025, 2, 20), 0.83),),
)
# A Frankfurt listing: exchange-local dates in Europe/Berlin, prices in EUR.
BMW = FakeSymbol(
    "BMW.DE",
    timezone="Europe/Berlin",
    currency="EUR",
    exchange="GER",
    full_exchange="XETRA",
    session_open=time(9, 0),
    session_close=time(17, 30),
    bars={
        "1d": daily(
            "Europe/Berlin",
            time(9, 0),
            [
                ("2025-01-02", 79.10, 79.62, 78.26, 78.86, 812345, 78.86),
                ("2025-01-03", 78.90, 79.40, 77.90, 78.10, 905211, 78.10),
                ("2025-01-06", 78.40, 80.20, 78.30, 79.94, 1203456, 79.94),
            ],
        )
    },
)
SYMBOLS: tuple[FakeSymbol, ...] = (AAPL, MSFT, BMW)


# ---------------------------------------------------------------------------- chart bodies


def _period(sym: FakeSymbol, day: date, start: time, end: time) -> dict[str, Any]:
    begin = sym.at(day, start)
    offset = begin.utcoffset()
    return {
        "timezone": begin.tzname(),
        "start": int(begin.timestamp()),
        "end": int(sym.at(day, end).timestamp()),
        "gmtoffset": int(offset.total_seconds()) if offset is not None else 0,
    }


def chart_meta(sym: FakeSymbol, interval: str, bars: tuple[Bar, ...] | list[Bar]) -> dict[str, Any]:
    """The ``meta`` block Yahoo sends with every chart answer."""
    last = bars[-1] if bars else None
    ref_day = last.start.date() if last else date(2025, 1, 10)
    regular = _period(sym, ref_day, sym.session_open, sym.session_close)
    meta: dict[str, Any] = {
        "currency": sym.currency,
        "symbol": sym.symbol,
        "exchangeName": sym.exchange,
        "fullExchangeName": sym.full_exchange,
        "instrumentType": sym.instrument_type,
        "firstTradeDate": 345479400,
        "regularMarketTime": regular["end"],
        "hasPrePostMarketData": True,
        "gmtoffset": regular["gmtoffset"],
        "timezone": regular["timezone"],
        "exchangeTimezoneName": sym.timezone,
        "regularMarketPrice": last.close if last else None,
        "chartPreviousClose": bars[0].open if bars else None,
        "priceHint": 2,
        "currentTradingPeriod": {
            "pre": _period(sym, ref_day, time(4, 0), sym.session_open),
            "regular": regular,
            "post": _period(sym, ref_day, sym.session_close, time(20, 0)),
        },
        "dataGranularity": interval,
        "range": "",
        "validRanges": VALID_RANGES,
    }
    if interval[-1] in "mh":
        days = sorted({b.start.date() for b in bars})
        meta["tradingPeriods"] = [
            [_period(sym, d, sym.session_open, sym.session_close)] for d in days
        ]
    return meta


def _events(sym: FakeSymbol, period1: int, period2: int) -> dict[str, Any]:
    events: dict[str, Any] = {}
    divs = {}
    for day, amount in sym.dividends:
        ts = int(sym.at(day, sym.session_open).timestamp())
        if period1 <= ts < period2:
            divs[str(ts)] = {"amount": amount, "date": ts}
    if divs:
        events["dividends"] = divs
    splits = {}
    for day, num, den in sym.splits:
        ts = int(sym.at(day, sym.session_open).timestamp())
        if period1 <= ts < period2:
            splits[str(ts)] = {
                "date": ts,
                "numerator": float(num),
                "denominator": float(den),
                "splitRatio": f"{num}:{den}",
            }
    if splits:
        events["splits"] = splits
    return events


def chart_body(
    sym: FakeSymbol,
    interval: str,
    bars: list[Bar] | tuple[Bar, ...],
    events: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A chart-API answer carrying ``bars``; no bars gives Yahoo's "empty window" shape."""
    result: dict[str, Any] = {"meta": chart_meta(sym, interval, bars)}
    if bars:
        result["timestamp"] = [b.timestamp for b in bars]
        if events:
            result["events"] = events
        result["indicators"] = {
            "quote": [
                {
                    "open": [b.open for b in bars],
                    "high": [b.high for b in bars],
                    "low": [b.low for b in bars],
                    "close": [b.close for b in bars],
                    "volume": [b.volume for b in bars],
                }
            ],
        }
        if interval[-1] not in "mh":
            result["indicators"]["adjclose"] = [
                {"adjclose": [b.adjclose if b.adjclose is not None else b.close for b in bars]}
            ]
    else:
        result["indicators"] = {"quote": [{}], "adjclose": [{}]}
    return {"chart": {"result": [result], "error": None}}


# ---------------------------------------------------------------------------- replies


def bar(
    sym: FakeSymbol,
    day: str,
    open_: float,
    high: float,
    low: float,
    close: float,
    volume: int = 1_000_000,
) -> Bar:
    """One daily bar of ``sym`` as given, sane or not (negative prices, High < Low, ...)."""
    return Bar(sym.at(date.fromisoformat(day), sym.session_open), open_, high, low, close, volume)


def history_back_to(sym: FakeSymbol, last: date, count: int) -> tuple[Bar, ...]:
    """``count`` consistent daily bars, one per calendar day, ending on ``last``.

    200,000 of them ending in 2025 reach back to 1477: the junk answer of issue 9.
    """
    first = last - timedelta(days=count - 1)
    return tuple(
        Bar(sym.at(first + timedelta(days=i), sym.session_open), 10.0, 11.0, 9.0, 10.5, 1000)
        for i in range(count)
    )


@dataclass(frozen=True)
class Reply:
    """One scripted answer to a chart request."""

    # ok | no_data | delisted | rejected | rate_limited | server_error | maintenance
    # | garbage | timeout | connection_error | canned
    kind: str
    status: int = 200
    retry_after: str | None = None
    description: str = ""
    bars: tuple[Bar, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def ok(cls) -> Reply:
        return cls("ok")

    @classmethod
    def canned(cls, bars: Iterable[Bar]) -> Reply:
        """A 200 carrying exactly ``bars`` (daily), whatever window was asked: a Yahoo
        answering with bars outside the window, too many bars, or nonsense prices."""
        return cls("canned", bars=tuple(bars))

    @classmethod
    def no_data(cls) -> Reply:
        return cls("no_data")

    @classmethod
    def delisted(cls) -> Reply:
        return cls("delisted", 404)

    @classmethod
    def rejected(cls, description: str = INTRADAY_TOO_OLD, status: int = 422) -> Reply:
        """Yahoo refusing the request itself, e.g. 1m bars older than it keeps."""
        return cls("rejected", status, description=description)

    @classmethod
    def garbage(cls) -> Reply:
        """A 200 that is not Yahoo's JSON (a captive portal, a misbehaving proxy)."""
        return cls("garbage")

    @classmethod
    def rate_limited(cls, retry_after: float | str | None = None) -> Reply:
        header = (
            None
            if retry_after is None
            else (retry_after if isinstance(retry_after, str) else f"{retry_after:g}")
        )
        return cls("rate_limited", 429, header)

    @classmethod
    def server_error(cls, status: int = 500) -> Reply:
        return cls("server_error", status)

    @classmethod
    def maintenance(cls, status: int = 503) -> Reply:
        return cls("maintenance", status)

    @classmethod
    def timeout(cls) -> Reply:
        return cls("timeout")

    @classmethod
    def connection_error(cls) -> Reply:
        return cls("connection_error")

    @property
    def is_http_error(self) -> bool:
        return self.status >= 400


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    url: str
    params: dict[str, Any]
    kind: str  # cookie | crumb | consent | chart | quote | other
    symbol: str | None = None

    @property
    def tz_lookup(self) -> bool:
        """yfinance's time-zone probe (``range=1d``) rather than a history request."""
        return self.kind == "chart" and "period1" not in self.params


# ---------------------------------------------------------------------------- the session


class FakeYahoo(YahooSession):
    """A ``YahooSession`` (a curl_cffi Session) whose ``request()`` never leaves the process.

    Per symbol: ``script``/``script_attempts`` queue replies for history requests (consumed
    one per request, then back to normal); ``always`` fixes the answer to every chart
    request of the symbol, time-zone probes included. Unknown symbols get the 404
    "No data found, symbol may be delisted" Yahoo gives them. ``requests`` records
    everything asked, for call-count assertions.
    """

    def __init__(self, symbols: Iterable[FakeSymbol] = SYMBOLS) -> None:
        super().__init__()
        self.symbols: dict[str, FakeSymbol] = {s.symbol: s for s in symbols}
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str, deque[Reply]] = {}
        self._always: dict[str, Reply] = {}
        self._lock = threading.Lock()

    # -- programming it

    def add_symbol(self, sym: FakeSymbol) -> None:
        self.symbols[sym.symbol] = sym

    def script(self, symbol: str, *replies: Reply) -> None:
        """Queue raw replies, one per history request of ``symbol``."""
        with self._lock:
            self._scripts.setdefault(symbol.upper(), deque()).extend(replies)

    def script_attempts(self, symbol: str, *replies: Reply) -> None:
        """Queue one reply per FETCH ATTEMPT (an HTTP error reply is queued twice, since
        yfinance repeats a request once on any status >= 400)."""
        raw: list[Reply] = []
        for reply in replies:
            raw.extend([reply, reply] if reply.is_http_error else [reply])
        self.script(symbol, *raw)

    def always(self, symbol: str, reply: Reply | None) -> None:
        """Answer every chart request of ``symbol`` with ``reply`` (None: back to normal)."""
        with self._lock:
            if reply is None:
                self._always.pop(symbol.upper(), None)
            else:
                self._always[symbol.upper()] = reply

    def chart_requests(
        self, symbol: str | None = None, *, history_only: bool = False
    ) -> list[RecordedRequest]:
        with self._lock:
            found = [
                r
                for r in self.requests
                if r.kind == "chart" and (symbol is None or r.symbol == symbol.upper())
            ]
        return [r for r in found if not (history_only and r.tz_lookup)]

    # -- answering

    def request(self, method: Any, url: str, params: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        parts = urlsplit(url)
        query = dict(params or {})
        kind, symbol = _route(parts.netloc, parts.path)
        with self._lock:
            self.requests.append(RecordedRequest(str(method), url, query, kind, symbol))
        if kind == "cookie":
            return self._cookie_page(url)
        if kind == "crumb":
            return _response(url, 200, CRUMB.encode(), {"Content-Type": "text/plain"})
        if kind == "consent":
            return _response(
                url, 200, b"<html><body>consent</body></html>", {"Content-Type": "text/html"}
            )
        if kind == "chart" and symbol is not None:
            response = self._chart(url, symbol, query)
            self.observe(url, response)
            return response
        if kind == "quote":
            return _json_response(
                url,
                404,
                {
                    "quoteSummary": {
                        "result": None,
                        "error": {
                            "code": "Not Found",
                            "description": f"Quote not found for symbol: {symbol}",
                        },
                    }
                },
            )
        return _response(url, 404, b"Not Found", {"Content-Type": "text/plain"})

    def _cookie_page(self, url: str) -> curl_requests.Response:
        expires = int((datetime.now() + timedelta(days=365)).timestamp())
        self.cookies.jar.set_cookie(
            Cookie(
                version=0,
                name="A3",
                value="d=AQABBFakeCookieForTests&S=AQAAAFake",
                port=None,
                port_specified=False,
                domain=".yahoo.com",
                domain_specified=True,
                domain_initial_dot=True,
                path="/",
                path_specified=True,
                secure=True,
                expires=expires,
                discard=False,
                comment=None,
                comment_url=None,
                rest={"HttpOnly": None, "SameSite": "None"},  # type: ignore[dict-item]
                rfc2109=False,
            )
        )
        headers = {
            "Content-Type": "text/html",
            "Set-Cookie": "A3=d=AQABBFakeCookieForTests&S=AQAAAFake; Domain=.yahoo.com; "
            "Path=/; Secure; HttpOnly; SameSite=None",
        }
        return _response(url, 404, b"<html><body>Not Found</body></html>", headers)

    def _next_reply(self, symbol: str, tz_lookup: bool) -> Reply:
        with self._lock:
            if symbol in self._always:
                return self._always[symbol]
            queue = self._scripts.get(symbol)
            if not tz_lookup and queue:
                return queue.popleft()
        return Reply.ok() if symbol in self.symbols else Reply.delisted()

    def _chart(self, url: str, symbol: str, query: dict[str, Any]) -> curl_requests.Response:
        reply = self._next_reply(symbol, tz_lookup="period1" not in query)
        if reply.kind == "timeout":
            raise curl_requests.exceptions.Timeout(
                "Failed to perform, curl: (28) Operation timed out after 30002 milliseconds "
                "with 0 bytes received.",
                CurlECode.OPERATION_TIMEDOUT,
            )
        if reply.kind == "connection_error":
            raise curl_requests.exceptions.ConnectionError(
                "Failed to perform, curl: (7) Failed to connect to query2.finance.yahoo.com "
                "port 443 after 3 ms: Couldn't connect to server.",
                CurlECode.COULDNT_CONNECT,
            )
        if reply.kind == "delisted" or symbol not in self.symbols:
            return _json_response(url, 404, DELISTED_BODY)
        if reply.kind == "rate_limited":
            headers = {"Content-Type": "text/plain"}
            if reply.retry_after is not None:
                headers["Retry-After"] = reply.retry_after
            return _response(url, 429, b"Too Many Requests\r\n", headers)
        if reply.kind == "server_error":
            return _json_response(url, reply.status, SERVER_ERROR_BODY)
        if reply.kind == "rejected":
            return _json_response(
                url,
                reply.status,
                {
                    "chart": {
                        "result": None,
                        "error": {
                            "code": HTTPStatus(reply.status).phrase,
                            "description": reply.description,
                        },
                    }
                },
            )
        if reply.kind == "garbage":
            return _response(
                url,
                200,
                b"<html><body>Please log in to the network</body></html>",
                {"Content-Type": "text/html"},
            )
        if reply.kind == "maintenance":
            return _response(
                url, reply.status, MAINTENANCE_PAGE.encode(), {"Content-Type": "text/html"}
            )
        sym = self.symbols[symbol]
        if reply.kind == "canned":
            return _json_response(url, 200, chart_body(sym, "1d", reply.bars))
        return _json_response(url, 200, self._bars_body(sym, query, empty=reply.kind == "no_data"))

    def _bars_body(self, sym: FakeSymbol, query: dict[str, Any], empty: bool) -> dict[str, Any]:
        interval = str(query.get("interval", "1d"))
        table = sym.bars.get(interval, ())
        if "period1" in query:
            p1, p2 = int(query["period1"]), int(query["period2"])
        else:  # the tz probe (range=1d): the latest bar
            p1, p2 = (table[-1].timestamp, table[-1].timestamp + 1) if table else (0, 0)
        bars = [] if empty else [b for b in table if p1 <= b.timestamp < p2]
        return chart_body(sym, interval, bars, _events(sym, p1, p2))


def _route(host: str, path: str) -> tuple[str, str | None]:
    if host == "fc.yahoo.com":
        return "cookie", None
    if path.endswith("/v1/test/getcrumb"):
        return "crumb", None
    if host.endswith("consent.yahoo.com") or host == "guce.yahoo.com":
        return "consent", None
    if "/v8/finance/chart/" in path:
        return "chart", path.rsplit("/", 1)[-1].upper()
    if "/quoteSummary/" in path or path.endswith("/v7/finance/quote"):
        return "quote", path.rsplit("/", 1)[-1].upper()
    return "other", None


def _response(
    url: str, status: int, body: bytes, headers: dict[str, str]
) -> curl_requests.Response:
    response = curl_requests.Response()
    response.url = url
    response.status_code = status
    response.reason = HTTPStatus(status).phrase
    response.ok = status < 400
    response.content = body
    response.headers = Headers(headers)
    return response


def _json_response(url: str, status: int, body: dict[str, Any]) -> curl_requests.Response:
    return _response(
        url, status, json.dumps(body).encode(), {"Content-Type": "application/json;charset=utf-8"}
    )


# ---------------------------------------------------------------------------- installing it


def reset_yfinance_state() -> None:
    """Forget every piece of process-wide yfinance state a previous test may have left:
    the response cache, the YfData singleton (session, cookie, crumb), the cache DBs."""
    clear_response_cache()
    SingletonMeta._instances.pop(YfData, None)
    yfinance.base._tz_info_fetch_ctr = 0
    for db_manager in (
        yfinance.cache._TzDBManager,
        yfinance.cache._CookieDBManager,
        yfinance.cache._ISINDBManager,
    ):
        db_manager.close_db()
        db_manager._db = None
    yfinance.cache._TzCacheManager._tz_cache = None
    yfinance.cache._CookieCacheManager._Cookie_cache = None
    yfinance.cache._ISINCacheManager._isin_cache = None


@contextmanager
def installed_fake(cache_dir: Path, fake: FakeYahoo | None = None) -> Iterator[FakeYahoo]:
    """Install a FakeYahoo through ``configure_yfinance`` with caches in ``cache_dir``.

    Fixture body::

        @pytest.fixture
        def fake_yahoo(tmp_path):
            with installed_fake(tmp_path / "yfinance") as fake:
                yield fake
    """
    hide = yf.config.debug.hide_exceptions
    reset_yfinance_state()
    session = fake if fake is not None else FakeYahoo()
    configure_yfinance(cache_dir, session)
    try:
        yield session
    finally:
        reset_yfinance_state()
        yf.config.debug.hide_exceptions = hide


# ---------------------------------------------------------------------------- long history


def weekday_history(sym: FakeSymbol, first: date, last: date) -> tuple[Bar, ...]:
    """Deterministic, sane daily bars of ``sym`` on every weekday from ``first`` to
    ``last`` (years of them, for backfills): the same bars in every test and process."""
    import math

    out: list[Bar] = []
    day = first
    while day <= last:
        if day.weekday() < 5:
            n = day.toordinal()
            close = round(100.0 + 20.0 * math.sin(n / 40.0) + 0.01 * (n % 13), 2)
            open_ = round(close * (1.0 + 0.002 * ((n % 5) - 2)), 2)
            high = round(max(open_, close) * 1.01, 2)
            low = round(min(open_, close) * 0.99, 2)
            adj = round(close * 0.98, 4)
            out.append(
                Bar(sym.at(day, sym.session_open), open_, high, low, close, 1_000 + n % 997, adj)
            )
        day += timedelta(days=1)
    return tuple(out)


def long_history_symbol(
    symbol: str = "LONGCO", first: date = date(2016, 6, 1), last: date = date(2026, 11, 27)
) -> FakeSymbol:
    """A symbol first traded on ``first`` with weekday daily bars up to ``last``."""
    sym = FakeSymbol(symbol)
    return FakeSymbol(symbol, bars={"1d": weekday_history(sym, first, last)})
