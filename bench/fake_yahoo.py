"""A local, rate-limited Yahoo Finance chart API for benchmarks (no network, any symbol).

``serve(delay_s=0.1, rate=20.0)`` starts a ``ThreadingHTTPServer`` on 127.0.0.1 (free
port) that answers what yfinance 1.7 asks for a ``Ticker.history()`` call:

- ``GET /`` (yfinance's cookie page, ``https://fc.yahoo.com``): 200 and an ``A3`` cookie;
- ``GET /v1/test/getcrumb``: a crumb;
- ``GET /v8/finance/chart/{SYMBOL}``: daily bars (``interval=1d``) for ANY symbol, from
  stocksched's deterministic demo prices (weekdays, stamped 09:30 New York), or
  yfinance's time-zone probe (``range=1d``): the latest bar. Symbols starting with
  ``DELISTED`` get Yahoo's 404 "No data found, symbol may be delisted".

Every answer waits ``delay_s`` first (default 100 ms, a slow network). Every request
counts against a GCRA rate limit (``rate`` per second on average, ``burst`` early
arrivals tolerated so client-side timing jitter is not punished); beyond it the answer
is 429 with ``Retry-After`` (whole seconds, as Yahoo sends). With ``per_address=True``
each client address has its own limit, as at Yahoo (clients on one machine can send
from 127.0.0.2, 127.0.0.3 ...: ``local_session(port, interface="127.0.0.2")``).
``FakeYahooServer.stats()`` counts requests by kind (and by client address), 429s and
distinct symbols served; a fake running in another process answers ``GET /__bench/stats``
with the same as JSON (not delayed, not limited, not counted).

Pointing yfinance at it: yfinance has fixed https URLs (``query1/query2.finance.yahoo.com``,
``fc.yahoo.com``) and no setting for another host, but it sends every request through
the one curl_cffi session it is given. ``LocalYahooSession`` is the daemon's own
``YahooSession`` (so Retry-After/status tracking still works) with ``request()``
rewriting ``https://<any host>/<path>?<query>`` to ``http://127.0.0.1:<port>/<path>?<query>``::

    server, port = serve(delay_s=0.1, rate=20.0)
    session = local_session(port)
    configure_yfinance(tmp_dir, session)            # yfinance's process-wide session
    fetchers = build_fetchers(session=session)      # fetchers["yahoo"] now hits the fake
    ...
    server.stop()

Run standalone: ``python -m bench.fake_yahoo --delay 0.1 --rate 20`` (prints the port).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from http.cookiejar import Cookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from stocksched.sources.demo import demo_bar
from stocksched.sources.yahoo import YahooSession

CRUMB = "BenchCrumb123"
STATS_PATH = "/__bench/stats"  # GET: ``stats()`` as JSON, for a fake in another process
ZONE = ZoneInfo("America/New_York")
OPEN = dtime(9, 30)
CLOSE = dtime(16, 0)
DELISTED_BODY = {
    "chart": {
        "result": None,
        "error": {"code": "Not Found", "description": "No data found, symbol may be delisted"},
    }
}
VALID_RANGES = ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"]


# ---------------------------------------------------------------------------- rate limit


class Gcra:
    """The server's limit: ``rate``/s on average; a request may come ``burst - 1``
    intervals early. Refused requests do not count. Thread-safe."""

    def __init__(self, rate: float, burst: int) -> None:
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self._tat = 0.0
        self._lock = threading.Lock()

    def admit(self, now: float) -> float:
        """0 if admitted, else the seconds until this request would be."""
        with self._lock:
            tat = max(self._tat, now)
            early = tat - self.tolerance - now
            if early > 0:
                return early
            self._tat = tat + self.interval
            return 0.0


# ---------------------------------------------------------------------------- bodies


def _period(day: date, start: dtime, end: dtime) -> dict[str, Any]:
    begin = datetime.combine(day, start, tzinfo=ZONE)
    offset = begin.utcoffset()
    return {
        "timezone": begin.tzname(),
        "start": int(begin.timestamp()),
        "end": int(datetime.combine(day, end, tzinfo=ZONE).timestamp()),
        "gmtoffset": int(offset.total_seconds()) if offset is not None else 0,
    }


def _weekdays(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        if day.weekday() < 5:
            yield day
        day += timedelta(days=1)


def _days_in(period1: int, period2: int) -> list[date]:
    """Weekdays whose 09:30 New York stamp is in [period1, period2)."""
    first = datetime.fromtimestamp(period1, UTC).astimezone(ZONE).date() - timedelta(days=1)
    last = datetime.fromtimestamp(period2, UTC).astimezone(ZONE).date()
    return [
        d
        for d in _weekdays(first, last)
        if period1 <= int(datetime.combine(d, OPEN, tzinfo=ZONE).timestamp()) < period2
    ]


def _latest_weekday() -> date:
    day = datetime.now(ZONE).date() - timedelta(days=1)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day


def chart_body(symbol: str, days: list[date]) -> dict[str, Any]:
    """Yahoo's chart answer for daily bars on ``days`` (none: the empty-window shape)."""
    bars = [demo_bar(symbol, d) for d in days]
    ref = days[-1] if days else _latest_weekday()
    regular = _period(ref, OPEN, CLOSE)
    meta = {
        "currency": "USD",
        "symbol": symbol,
        "exchangeName": "NMS",
        "fullExchangeName": "NasdaqGS",
        "instrumentType": "EQUITY",
        "firstTradeDate": 345479400,
        "regularMarketTime": regular["end"],
        "hasPrePostMarketData": True,
        "gmtoffset": regular["gmtoffset"],
        "timezone": regular["timezone"],
        "exchangeTimezoneName": str(ZONE),
        "regularMarketPrice": bars[-1][3] if bars else None,
        "chartPreviousClose": bars[0][0] if bars else None,
        "priceHint": 2,
        "currentTradingPeriod": {
            "pre": _period(ref, dtime(4, 0), OPEN),
            "regular": regular,
            "post": _period(ref, CLOSE, dtime(20, 0)),
        },
        "dataGranularity": "1d",
        "range": "",
        "validRanges": VALID_RANGES,
    }
    result: dict[str, Any] = {"meta": meta}
    if bars:
        result["timestamp"] = [
            int(datetime.combine(d, OPEN, tzinfo=ZONE).timestamp()) for d in days
        ]
        result["indicators"] = {
            "quote": [
                {
                    "open": [b[0] for b in bars],
                    "high": [b[1] for b in bars],
                    "low": [b[2] for b in bars],
                    "close": [b[3] for b in bars],
                    "volume": [b[4] for b in bars],
                }
            ],
            "adjclose": [{"adjclose": [b[3] for b in bars]}],
        }
    else:
        result["indicators"] = {"quote": [{}], "adjclose": [{}]}
    return {"chart": {"result": [result], "error": None}}


# ---------------------------------------------------------------------------- the server


class FakeYahooServer(ThreadingHTTPServer):
    """The HTTP server; its handler threads read the settings and update the counters."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, delay_s: float, rate: float | None, burst: int, per_address: bool = False
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay_s = delay_s
        self.limit = Gcra(rate, burst) if rate else None
        self._rate, self._burst, self._per_address = rate, burst, per_address
        self._limits: dict[str, Gcra] = {}
        self._counts: Counter[str] = Counter()
        self._symbols: set[str] = set()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def limit_for(self, address: str) -> Gcra | None:
        """The limit this client address's requests count against."""
        if not self._per_address or self._rate is None:
            return self.limit
        with self._lock:
            if address not in self._limits:
                self._limits[address] = Gcra(self._rate, self._burst)
            return self._limits[address]

    def count(self, kind: str, symbol: str | None = None) -> None:
        with self._lock:
            self._counts[kind] += 1
            if symbol is not None:
                self._symbols.add(symbol)

    def count_bytes(self, body: int, wire: int) -> None:
        with self._lock:
            self._counts["bytes"] += body
            self._counts["wire_bytes"] += wire

    def stats(self) -> dict[str, int]:
        """Requests by kind (cookie, crumb, chart, tz_probe, other), ``rate_limited``
        (429s sent), ``requests`` (all), ``symbols`` (distinct symbols charted) and
        ``bytes`` (body bytes of every chart answer, as JSON) and ``wire_bytes`` (the same
        as sent: gzip-compressed when the client accepted it)."""
        with self._lock:
            counts = dict(self._counts)
            counts["symbols"] = len(self._symbols)
        counts["requests"] = sum(
            v
            for k, v in counts.items()
            if k not in ("rate_limited", "symbols", "bytes", "wire_bytes")
            and not k.startswith("address:")
        )
        return counts

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FakeYahooServer
    protocol_version = "HTTP/1.1"  # keep-alive: curl reuses connections, as with Yahoo

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == STATS_PATH:  # the benchmark's own question: no delay, no limit
            self._json(200, self.server.stats())
            return
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        kind, symbol = _route(parts.path, query)
        self.server.count(kind, symbol if kind == "chart" else None)
        self.server.count(f"address:{self.client_address[0]}")
        time.sleep(self.server.delay_s)
        limit = self.server.limit_for(self.client_address[0])
        wait = limit.admit(time.monotonic()) if limit is not None else 0.0
        if wait > 0:
            self.server.count("rate_limited")
            self._send(
                429,
                b"Too Many Requests\r\n",
                "text/plain",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        elif kind == "cookie":
            self._send(
                200,
                b"<html><body>ok</body></html>",
                "text/html",
                {"Set-Cookie": "A3=d=AQABBBench&S=AQAAABench; Path=/; HttpOnly"},
            )
        elif kind == "crumb":
            self._send(200, CRUMB.encode(), "text/plain")
        elif kind in ("chart", "tz_probe") and symbol is not None:
            self._chart(symbol, query)
        else:
            self._send(404, b"Not Found", "text/plain")

    def _chart(self, symbol: str, query: dict[str, str]) -> None:
        if symbol.startswith("DELISTED"):
            self._json(404, DELISTED_BODY)
            return
        if query.get("interval", "1d") != "1d":
            self._json(
                422,
                {
                    "chart": {
                        "result": None,
                        "error": {
                            "code": "Unprocessable Entity",
                            "description": "the fake serves 1d only",
                        },
                    }
                },
            )
            return
        if "period1" in query:
            days = _days_in(int(query["period1"]), int(query.get("period2", time.time())))
        else:
            days = [_latest_weekday()]
        # Compact, as Yahoo writes it; gzip when the client accepts it, as Yahoo serves it
        # (curl_cffi's Chrome impersonation asks for gzip, deflate, br, zstd).
        body = json.dumps(chart_body(symbol, days), separators=(",", ":")).encode()
        headers = {}
        wire = body
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):
            wire = gzip.compress(body, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        self.server.count_bytes(len(body), len(wire))
        self._send(200, wire, "application/json;charset=utf-8", headers)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json;charset=utf-8")

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: thousands of requests per benchmark."""


def _route(path: str, query: dict[str, str]) -> tuple[str, str | None]:
    if path in ("", "/"):
        return "cookie", None
    if path.endswith("/v1/test/getcrumb"):
        return "crumb", None
    if "/v8/finance/chart/" in path:
        symbol = path.rsplit("/", 1)[-1].upper()
        return ("chart" if "period1" in query else "tz_probe"), symbol
    return "other", None


def serve(
    delay_s: float = 0.1, rate: float | None = 20.0, burst: int = 5, per_address: bool = False
) -> tuple[FakeYahooServer, int]:
    """Start the fake on a free loopback port in a daemon thread; ``server.stop()`` ends it.

    ``rate=None`` disables the limit; ``per_address``: one limit per client address.
    """
    server = FakeYahooServer(delay_s, rate, burst, per_address)
    threading.Thread(target=server.serve_forever, name="fake-yahoo", daemon=True).start()
    return server, server.port


# ---------------------------------------------------------------------------- the client side


class LocalYahooSession(YahooSession):
    """The daemon's ``YahooSession`` sending every request to ``target`` instead."""

    def __init__(self, target: str, interface: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._target = urlsplit(target)
        self._interface = interface  # the local address requests go out from

    def request(self, method: Any, url: str, *args: Any, **kwargs: Any) -> Any:
        if self._interface is not None:
            kwargs.setdefault("interface", self._interface)
        response = super().request(method, self.rewrite(url), *args, **kwargs)
        if (urlsplit(url).hostname or "").endswith("yahoo.com"):
            self._file_under_yahoo(response)
        return response

    def _file_under_yahoo(self, response: Any) -> None:
        """Keep the fake's cookies as a browser would keep Yahoo's: under ``.yahoo.com``.

        yfinance reuses its cookie only when it finds one for a yahoo domain in the jar;
        without this it would fetch the cookie page again before EVERY request, and the
        benchmark would measure that instead of the chart requests.
        """
        expires = int(time.time()) + 365 * 86400
        for name, value in response.cookies.items():
            self.cookies.jar.set_cookie(
                Cookie(
                    version=0,
                    name=name,
                    value=value,
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
                    rest={},
                    rfc2109=False,
                )
            )

    def rewrite(self, url: str) -> str:
        parts = urlsplit(url)
        return urlunsplit(
            (self._target.scheme, self._target.netloc, parts.path or "/", parts.query, "")
        )


def local_session(port: int, **kwargs: Any) -> LocalYahooSession:
    """A session for ``configure_yfinance``/``build_fetchers`` that talks to the fake.

    Impersonates Chrome by default, like the daemon's ``new_session()``.
    """
    kwargs.setdefault("impersonate", "chrome")
    return LocalYahooSession(f"http://127.0.0.1:{port}", **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.1, help="seconds before each answer")
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s (0: no limit)")
    parser.add_argument("--burst", type=int, default=5)
    parser.add_argument("--per-address", action="store_true", help="a limit per client address")
    args = parser.parse_args()
    server, port = serve(args.delay, args.rate or None, args.burst, args.per_address)
    print(f"fake Yahoo on http://127.0.0.1:{port} (Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
