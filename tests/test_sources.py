"""Market-data sources: yfinance's real parsing against an offline Yahoo, and the demo source."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yfinance as yf
import yfinance.base
import yfinance.cache
from curl_cffi import requests as curl_requests
from curl_cffi.const import CurlECode
from yfinance.exceptions import YFPricesMissingError, YFRateLimitError, YFTzMissingError

from stocksched.sources import (
    BAR_COLUMNS,
    DemoFetcher,
    FetchError,
    PermanentFetchError,
    TransientFetchError,
    YFinanceFetcher,
    build_fetchers,
)
from stocksched.sources.demo import demo_bar
from stocksched.sources.quality import check_bars
from stocksched.sources.yahoo import (
    HttpOutcome,
    YahooSession,
    classify_failure,
    parse_retry_after,
    silence_yfinance_warnings,
)
from tests.yahoo_fake import AAPL, FakeYahoo, Reply, history_back_to, installed_fake
from tests.yahoo_fake import bar as make_bar

REPO = Path(__file__).resolve().parent.parent
NY = "America/New_York"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeYahoo]:
    with installed_fake(tmp_path / "yfinance") as session:
        yield session


@pytest.fixture
def fetcher(fake: FakeYahoo) -> YFinanceFetcher:
    return YFinanceFetcher(session=fake, timeout=5)


def local_midnights(tz: str, *days: str) -> list[pd.Timestamp]:
    return [pd.Timestamp(d).tz_localize(tz) for d in days]


# ------------------------------------------------------------------ Yahoo: successful fetches


def test_daily_bars_have_yfinance_shape_and_exchange_local_dates(fetcher: YFinanceFetcher) -> None:
    frame = fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")

    assert list(frame.columns) == list(BAR_COLUMNS)
    assert frame.index.name == "Date"
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert str(frame.index.tz) == NY
    # 9 Jan 2025 the US markets were closed; the fixture has no bar for it.
    assert list(frame.index) == local_midnights(
        NY, "2025-01-02", "2025-01-03", "2025-01-06", "2025-01-07", "2025-01-08", "2025-01-10"
    )
    assert frame["Volume"].dtype == np.int64
    for column in ("Open", "High", "Low", "Close", "Dividends", "Stock Splits"):
        assert frame[column].dtype == np.float64
    first = frame.iloc[0]
    assert (first["Open"], first["High"], first["Low"], first["Close"]) == (
        248.93,
        249.10,
        241.82,
        243.85,
    )
    assert first["Volume"] == 55740700


def test_window_end_is_inclusive(fetcher: YFinanceFetcher) -> None:
    frame = fetcher.fetch_from_source("AAPL", date(2025, 1, 3), date(2025, 1, 7), "1d")

    assert list(frame.index.date) == [date(2025, 1, 3), date(2025, 1, 6), date(2025, 1, 7)]


def test_single_day_window(fetcher: YFinanceFetcher) -> None:
    frame = fetcher.fetch_from_source("AAPL", date(2025, 1, 10), date(2025, 1, 10), "1d")

    assert list(frame.index) == local_midnights(NY, "2025-01-10")
    assert frame["Close"].iloc[0] == 236.85


def test_intraday_bars_keep_their_times_in_the_exchange_zone(fetcher: YFinanceFetcher) -> None:
    frame = fetcher.fetch_from_source("AAPL", date(2025, 1, 10), date(2025, 1, 10), "1h")

    assert frame.index.name == "Date"  # yfinance says "Datetime" for intraday; one schema here
    assert str(frame.index.tz) == NY
    assert [t.strftime("%H:%M") for t in frame.index] == [
        "09:30",
        "10:30",
        "11:30",
        "12:30",
        "13:30",
        "14:30",
        "15:30",
    ]
    assert frame.index[0].utcoffset() == timedelta(hours=-5)
    assert frame["Close"].iloc[-1] == 236.85
    assert frame["Volume"].dtype == np.int64
    assert list(frame.columns) == list(BAR_COLUMNS)


def test_non_us_listing_is_dated_in_its_own_zone(fetcher: YFinanceFetcher) -> None:
    frame = fetcher.fetch_from_source("BMW.DE", date(2025, 1, 1), date(2025, 1, 6), "1d")

    assert str(frame.index.tz) == "Europe/Berlin"
    assert list(frame.index) == local_midnights(
        "Europe/Berlin", "2025-01-02", "2025-01-03", "2025-01-06"
    )


def test_prices_are_not_dividend_adjusted_and_dividends_are_reported(
    fetcher: YFinanceFetcher,
) -> None:
    frame = fetcher.fetch_from_source("MSFT", date(2025, 2, 18), date(2025, 2, 21), "1d")

    # Yahoo's close before the ex-date, not its dividend-adjusted close (408.8251).
    assert frame.loc["2025-02-18", "Close"].item() == 409.64
    assert frame["Dividends"].tolist() == [0.0, 0.0, 0.83, 0.0]
    assert frame["Stock Splits"].tolist() == [0.0, 0.0, 0.0, 0.0]


# ------------------------------------------------------------------ Yahoo: malformed data


def test_malformed_bars_come_through_yfinance_as_yahoo_sent_them(
    fake: FakeYahoo, fetcher: YFinanceFetcher
) -> None:
    """Neither yfinance nor the fetcher judge the bars: bars outside the window, negative
    prices and High < Low arrive as sent (the executor's quality checks drop them)."""
    rows = [
        make_bar(AAPL, "2024-12-31", 10.0, 11.0, 9.0, 10.5),
        make_bar(AAPL, "2025-01-02", -10.0, 11.0, 9.0, 10.5),
        make_bar(AAPL, "2025-01-03", 10.0, 9.0, 11.0, 10.0),
        make_bar(AAPL, "2025-01-06", 10.0, 11.0, 9.0, 10.5),
    ]
    fake.script_attempts("AAPL", Reply.canned(rows))
    frame = fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")

    assert list(frame.index) == local_midnights(
        NY, "2024-12-31", "2025-01-02", "2025-01-03", "2025-01-06"
    )
    assert frame["Open"].tolist() == [10.0, -10.0, 10.0, 10.0]
    assert frame.loc["2025-01-03", "High"].item() < frame.loc["2025-01-03", "Low"].item()


def test_a_reply_back_to_1477_is_parsed_whole(fake: FakeYahoo, fetcher: YFinanceFetcher) -> None:
    fake.script_attempts("AAPL", Reply.canned(history_back_to(AAPL, date(2025, 1, 10), 200_000)))
    frame = fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")

    assert len(frame) == 200_000
    assert frame.index[0].year == 1477 and frame.index[-1].date() == date(2025, 1, 10)


# ------------------------------------------------------------------ Yahoo: permanent failures


@pytest.mark.parametrize("info_fallbacks_used", [0, 2], ids=["tz-via-info", "tz-missing"])
def test_unknown_symbol_is_permanent(
    fake: FakeYahoo,
    fetcher: YFinanceFetcher,
    info_fallbacks_used: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # yfinance falls back to the quote API for a missing time zone only twice per process;
    # both paths must end as a permanent failure.
    monkeypatch.setattr(yfinance.base, "_tz_info_fetch_ctr", info_fallbacks_used)

    with pytest.raises(PermanentFetchError) as caught:
        fetcher.fetch_from_source("NOSUCH", date(2025, 1, 2), date(2025, 1, 10), "1d")

    assert caught.value.ticker == "NOSUCH"
    assert "delisted" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_delisted_answer_for_known_symbol_is_permanent(
    fake: FakeYahoo,
    fetcher: YFinanceFetcher,
) -> None:
    fake.script_attempts("AAPL", Reply.delisted())

    with pytest.raises(PermanentFetchError, match="No data found, symbol may be delisted"):
        fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")


def test_empty_answer_for_the_window_is_permanent(
    fake: FakeYahoo,
    fetcher: YFinanceFetcher,
) -> None:
    fake.script_attempts("AAPL", Reply.no_data())

    with pytest.raises(PermanentFetchError, match=r"no data for 2025-01-02\.\.2025-01-10 \(1d\)"):
        fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")


def test_request_yahoo_refuses_is_permanent(fake: FakeYahoo, fetcher: YFinanceFetcher) -> None:
    fake.script_attempts("AAPL", Reply.rejected())

    with pytest.raises(PermanentFetchError, match="Only 8 days worth of 1m"):
        fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1m")


def test_window_without_trading_days_is_permanent(fetcher: YFinanceFetcher) -> None:
    with pytest.raises(PermanentFetchError, match="no data"):
        fetcher.fetch_from_source("AAPL", date(2025, 1, 4), date(2025, 1, 5), "1d")


def test_window_ending_before_it_starts_asks_nothing(
    fake: FakeYahoo,
    fetcher: YFinanceFetcher,
) -> None:
    with pytest.raises(PermanentFetchError, match="before start"):
        fetcher.fetch_from_source("AAPL", date(2025, 1, 10), date(2025, 1, 2), "1d")

    assert fake.requests == []


# ------------------------------------------------------------------ Yahoo: transient failures


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("7", 7.0), ("0", 0.0)],
    ids=["no-header", "seconds", "zero"],
)
def test_rate_limit_is_transient_with_retry_after(
    fake: FakeYahoo,
    fetcher: YFinanceFetcher,
    header: str | None,
    expected: float | None,
) -> None:
    fake.script_attempts("AAPL", Reply.rate_limited(header))

    with pytest.raises(TransientFetchError, match="429") as caught:
        fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")

    assert caught.value.retry_after == expected


def test_rate_limit_with_http_date_retry_after(fake: FakeYahoo, fetcher: YFinanceFetcher) -> None:
    fake.script_attempts(
        "AAPL",
        Reply.rate_limited(
            format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
        ),
    )

    with pytest.raises(TransientFetchError) as caught:
        fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")

    assert caught.value.retry_after is not None
    assert 100 <= caught.value.retry_after <= 120


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        # yfinance reports a 5xx with a JSON error body as YFPricesMissingError, exactly
        # like a delisted symbol; only the HTTP status tells them apart.
        (Reply.server_error(500), "HTTP 500"),
        (Reply.server_error(502), "HTTP 502"),
        (Reply.maintenance(503), "HTTP 503"),
        (Reply.timeout(), "Timeout"),
        (Reply.connection_error(), "ConnectionError"),
    ],
    ids=["500-json", "502-json", "503-maintenance-page", "timeout", "connection-error"],
)
def test_server_and_network_failures_are_transient(
    fake: FakeYahoo,
    fetcher: YFinanceFetcher,
    reply: Reply,
    message: str,
) -> None:
    fake.script_attempts("AAPL", reply)

    with pytest.raises(TransientFetchError, match=message) as caught:
        fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")

    assert caught.value.ticker == "AAPL"
    assert caught.value.retry_after is None


def test_unreadable_200_is_transient(fake: FakeYahoo, fetcher: YFinanceFetcher) -> None:
    fake.script_attempts("AAPL", Reply.garbage())

    with pytest.raises(TransientFetchError, match="unreadable answer"):
        fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")


def http_error(status: int) -> curl_requests.exceptions.HTTPError:
    response = curl_requests.Response()
    response.status_code = status
    return curl_requests.exceptions.HTTPError(f"HTTP Error {status}", 0, response)


class OperationalError(Exception):
    """Stands in for peewee's, which yfinance's SQLite caches raise."""


@pytest.mark.parametrize(
    ("exc", "outcome", "expected"),
    [
        (YFRateLimitError(), None, TransientFetchError),
        (
            YFPricesMissingError("X", "", yahoo_reason="Internal Server Error"),
            HttpOutcome("u", 500, None),
            TransientFetchError,
        ),
        (
            YFPricesMissingError("X", "", yahoo_reason="No data found"),
            HttpOutcome("u", 404, None),
            PermanentFetchError,
        ),
        (YFTzMissingError("X"), None, PermanentFetchError),
        (http_error(404), HttpOutcome("u", 404, None), PermanentFetchError),
        (http_error(401), HttpOutcome("u", 404, None), PermanentFetchError),
        (http_error(503), HttpOutcome("u", 404, None), TransientFetchError),
        (http_error(429), None, TransientFetchError),
        (
            curl_requests.exceptions.ReadTimeout("timed out", CurlECode.OPERATION_TIMEDOUT),
            None,
            TransientFetchError,
        ),
        (OperationalError("database is locked"), None, TransientFetchError),
        (ValueError("bad json"), HttpOutcome("u", 200, None), TransientFetchError),
        (KeyError("chart"), HttpOutcome("u", 200, None), PermanentFetchError),
    ],
    ids=[
        "rate-limit",
        "5xx-as-missing-prices",
        "404-missing-prices",
        "tz-missing",
        "quote-404",
        "quote-401",
        "quote-503",
        "quote-429",
        "read-timeout",
        "cache-locked",
        "bad-json",
        "parse-bug",
    ],
)
def test_classify_failure(
    exc: BaseException,
    outcome: HttpOutcome | None,
    expected: type[FetchError],
) -> None:
    error = classify_failure("X", exc, outcome)

    assert type(error) is expected
    assert error.ticker == "X"
    assert error.message and "\n" not in error.message


def test_unexpected_failure_is_logged_with_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stocksched.sources.yahoo"):
        classify_failure("X", KeyError("chart"), None)

    assert caplog.records and caplog.records[0].exc_info is not None


def test_timeout_during_time_zone_lookup_is_transient(
    fake: FakeYahoo,
    fetcher: YFinanceFetcher,
) -> None:
    fake.always("AAPL", Reply.timeout())

    with pytest.raises(TransientFetchError):
        fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")

    assert [r.tz_lookup for r in fake.chart_requests("AAPL")] == [True]


def test_server_error_during_time_zone_lookup_is_transient(
    fake: FakeYahoo,
    fetcher: YFinanceFetcher,
) -> None:
    fake.always("AAPL", Reply.server_error(500))

    with pytest.raises(TransientFetchError, match="HTTP 500"):
        fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")


def test_after_a_transient_failure_the_next_attempt_asks_yahoo_again(
    fake: FakeYahoo,
    fetcher: YFinanceFetcher,
) -> None:
    # A past window goes through yfinance's response cache, which also keeps the 500.
    fake.script_attempts("AAPL", Reply.server_error(500), Reply.ok())

    with pytest.raises(TransientFetchError):
        fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")
    frame = fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")

    assert len(frame) == 6
    assert len(fake.chart_requests("AAPL", history_only=True)) == 3  # 500, repeated 500, 200


def test_yfinance_repeats_a_failed_request_once_by_itself(
    fake: FakeYahoo,
    fetcher: YFinanceFetcher,
) -> None:
    """Pins the yfinance behaviour the fake's ``script_attempts`` relies on."""
    fake.script("AAPL", Reply.rate_limited(5), Reply.ok())

    frame = fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")

    assert len(frame) == 6
    assert len(fake.chart_requests("AAPL", history_only=True)) == 2


def test_concurrent_fetches_keep_their_own_outcomes(
    fake: FakeYahoo,
    fetcher: YFinanceFetcher,
) -> None:
    fake.always("AAPL", Reply.server_error(500))
    results: dict[str, object] = {}

    def fetch(ticker: str, start: date, end: date) -> None:
        try:
            results[ticker] = len(fetcher.fetch_from_source(ticker, start, end, "1d"))
        except (PermanentFetchError, TransientFetchError) as exc:
            results[ticker] = type(exc).__name__

    threads = [
        threading.Thread(target=fetch, args=("AAPL", date(2025, 1, 2), date(2025, 1, 10))),
        threading.Thread(target=fetch, args=("MSFT", date(2025, 2, 18), date(2025, 2, 21))),
        threading.Thread(target=fetch, args=("BMW.DE", date(2025, 1, 1), date(2025, 1, 6))),
        threading.Thread(target=fetch, args=("GONE", date(2025, 1, 2), date(2025, 1, 10))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert results == {
        "AAPL": "TransientFetchError",
        "MSFT": 4,
        "BMW.DE": 3,
        "GONE": "PermanentFetchError",
    }


# ------------------------------------------------------------------ Yahoo: the session


class _LocalYahoo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if "/v8/finance/chart/" in self.path:
            self.send_response(429)
            self.send_header("Retry-After", "9")
        else:
            self.send_response(200)
        self.end_headers()
        self.wfile.write(b"Too Many Requests" if "/chart/" in self.path else b"crumb")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def local_http() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LocalYahoo)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_yahoo_session_remembers_the_last_chart_answer_per_thread(local_http: str) -> None:
    session = YahooSession(trust_env=False)
    chart_url = f"{local_http}/v8/finance/chart/AAPL"

    session.get(chart_url, timeout=5)
    session.get(f"{local_http}/v1/test/getcrumb", timeout=5)  # not the chart API: ignored

    assert session.last_outcome() == HttpOutcome(chart_url, 429, 9.0)
    elsewhere: list[HttpOutcome | None] = []
    other = threading.Thread(target=lambda: elsewhere.append(session.last_outcome()))
    other.start()
    other.join()
    assert elsewhere == [None]
    session.forget_outcome()
    assert session.last_outcome() is None


# ------------------------------------------------------------------ Yahoo: configuration


def test_configure_turns_yfinance_exceptions_on(fake: FakeYahoo) -> None:
    assert yf.config.debug.hide_exceptions is False
    assert yf.config.network.retries == 0


def test_fetching_without_configure_fails_loudly(fetcher: YFinanceFetcher) -> None:
    yf.config.debug.hide_exceptions = True  # yfinance's default; the fixture restores it

    with pytest.raises(RuntimeError, match="configure_yfinance"):
        fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")


def test_caches_are_written_to_the_given_directory(
    tmp_path: Path,
    fetcher: YFinanceFetcher,
) -> None:
    cache_dir = tmp_path / "yfinance"

    fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")

    assert yfinance.cache._TzDBManager.get_location() == str(cache_dir)
    assert yfinance.cache._CookieDBManager.get_location() == str(cache_dir)
    assert {"tkr-tz.db", "cookies.db"} <= {p.name for p in cache_dir.iterdir()}


def deprecations_during_fetch(fetcher: YFinanceFetcher, *, silence: bool) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if silence:
            silence_yfinance_warnings()
        fetcher.fetch_from_source("MSFT", date(2025, 2, 18), date(2025, 2, 21), "1d")
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]


def test_yfinance_deprecation_warnings_are_silenced(fetcher: YFinanceFetcher) -> None:
    assert deprecations_during_fetch(fetcher, silence=False), (
        "pandas no longer warns inside yfinance: this test proves nothing any more"
    )

    assert deprecations_during_fetch(fetcher, silence=True) == []


HOME_SCRIPT = textwrap.dedent("""
    import json, sys
    from datetime import date
    from pathlib import Path
    from tests.yahoo_fake import FakeYahoo
    from stocksched.sources import YFinanceFetcher, configure_yfinance
    import yfinance.cache

    cache_dir = Path(sys.argv[1]) if sys.argv[1] else None
    session = FakeYahoo()
    configure_yfinance(cache_dir, session)
    frame = YFinanceFetcher(session=session).fetch_from_source(
        "AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")
    location = Path(yfinance.cache._TzDBManager.get_location())
    print(json.dumps({"rows": len(frame), "location": str(location),
                      "files": sorted(p.name for p in location.iterdir())}))
""")


@pytest.mark.parametrize("with_cache_dir", [True, False], ids=["cache-dir", "no-cache-dir"])
def test_nothing_is_written_under_home(tmp_path: Path, with_cache_dir: bool) -> None:
    """In a fresh process (yfinance derives its default cache path from $HOME at import)."""
    home = tmp_path / "home"
    home.mkdir()
    cache_dir = tmp_path / "state" / "yfinance"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))

    proc = subprocess.run(
        [sys.executable, "-c", HOME_SCRIPT, str(cache_dir) if with_cache_dir else ""],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rows"] == 6
    assert {"tkr-tz.db", "cookies.db"} <= set(report["files"])
    assert list(home.rglob("*")) == []
    location = Path(report["location"])
    if with_cache_dir:
        assert location == cache_dir
    else:
        assert not location.is_relative_to(home)
        assert not location.exists()  # the private temporary directory is removed at exit


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)

    assert parse_retry_after(value, now=now) == expected


# ------------------------------------------------------------------ demo source


def test_demo_bars_are_deterministic_and_window_independent() -> None:
    whole = DemoFetcher().fetch_from_source("AAPL", date(2025, 1, 1), date(2025, 3, 31), "1d")
    part = DemoFetcher().fetch_from_source("AAPL", date(2025, 2, 3), date(2025, 2, 14), "1d")

    pd.testing.assert_frame_equal(part, whole.loc["2025-02-03":"2025-02-14"])
    again = DemoFetcher().fetch_from_source("AAPL", date(2025, 1, 1), date(2025, 3, 31), "1d")
    pd.testing.assert_frame_equal(whole, again)
    other = DemoFetcher().fetch_from_source("MSFT", date(2025, 1, 1), date(2025, 3, 31), "1d")
    assert not np.allclose(whole["Close"].to_numpy(), other["Close"].to_numpy())


def test_demo_bars_do_not_depend_on_string_hash_randomisation() -> None:
    script = (
        "from datetime import date; from stocksched.sources.demo import demo_bar; "
        "print(list(demo_bar('AAPL', date(2025, 1, 6))))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(REPO))

    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout

    assert json.loads(out) == list(demo_bar("AAPL", date(2025, 1, 6)))


def test_demo_frame_has_the_shared_shape() -> None:
    frame = DemoFetcher().fetch_from_source("AAPL", date(2025, 1, 6), date(2025, 1, 10), "1d")

    assert list(frame.columns) == list(BAR_COLUMNS)
    assert frame.index.name == "Date"
    assert list(frame.index) == local_midnights(
        NY, "2025-01-06", "2025-01-07", "2025-01-08", "2025-01-09", "2025-01-10"
    )
    assert frame["Volume"].dtype == np.int64
    assert (frame[["Dividends", "Stock Splits"]] == 0.0).all().all()


def test_demo_serves_weekdays_only_with_both_ends_inclusive() -> None:
    # Sat 2025-03-01 .. Mon 2025-03-31: 21 weekdays, starting Mon 3rd, ending Mon 31st.
    frame = DemoFetcher().fetch_from_source("SPY", date(2025, 3, 1), date(2025, 3, 31), "1d")

    assert len(frame) == 21
    assert all(ts.weekday() < 5 for ts in frame.index)
    assert frame.index[0].date() == date(2025, 3, 3)
    assert frame.index[-1].date() == date(2025, 3, 31)


@pytest.mark.parametrize("ticker", ["AAPL", "MSFT", "BRK-B", "BMW.DE", "^GSPC", "EURUSD=X"])
def test_demo_ohlc_is_consistent(ticker: str) -> None:
    frame = DemoFetcher().fetch_from_source(ticker, date(2023, 1, 1), date(2024, 12, 31), "1d")

    body_low = frame[["Open", "Close"]].min(axis=1)
    body_high = frame[["Open", "Close"]].max(axis=1)
    assert (frame["Low"] <= body_low).all()
    assert (body_high <= frame["High"]).all()
    assert (frame["Low"] > 0).all()
    assert (frame["Volume"] > 0).all()
    clean, report = check_bars(frame, date(2023, 1, 1), date(2024, 12, 31))
    assert len(clean) == len(frame) and report.warning == ""  # passes the data-quality checks


def test_demo_prices_move_like_a_market() -> None:
    frame = DemoFetcher().fetch_from_source("AAPL", date(2024, 1, 1), date(2024, 12, 31), "1d")

    daily_moves = np.log(frame["Close"]).diff().dropna().abs()
    assert daily_moves.max() < 0.1  # no absurd jumps from one day to the next
    assert daily_moves.mean() > 0.001  # but it does move
    assert frame["Close"].max() / frame["Close"].min() > 1.05  # and drifts over a year


@pytest.mark.parametrize("interval", ["1m", "1h", "5d", "1wk", "1mo"])
def test_demo_rejects_intervals_other_than_daily(interval: str) -> None:
    with pytest.raises(PermanentFetchError, match=interval):
        DemoFetcher().fetch_from_source("AAPL", date(2025, 1, 6), date(2025, 1, 10), interval)


@pytest.mark.parametrize(
    ("start", "end"),
    [(date(2025, 1, 4), date(2025, 1, 5)), (date(2025, 1, 10), date(2025, 1, 6))],
    ids=["weekend-only", "end-before-start"],
)
def test_demo_window_without_weekdays_is_permanent(start: date, end: date) -> None:
    with pytest.raises(PermanentFetchError, match="no data"):
        DemoFetcher().fetch_from_source("AAPL", start, end, "1d")


def test_demo_latency_delays_each_fetch() -> None:
    t0 = time.perf_counter()
    DemoFetcher(latency_s=0.05).fetch_from_source("AAPL", date(2025, 1, 6), date(2025, 1, 6), "1d")

    assert time.perf_counter() - t0 >= 0.05


def test_build_fetchers_maps_source_names() -> None:
    fetchers = build_fetchers(session=FakeYahoo())

    assert set(fetchers) == {"yahoo", "demo"}
    assert isinstance(fetchers["yahoo"], YFinanceFetcher)
    assert isinstance(fetchers["demo"], DemoFetcher)


def test_fake_symbol_table_is_realistic() -> None:
    """The fixtures themselves obey OHLC ordering, so tests never pass on nonsense bars."""
    for bars in AAPL.bars.values():
        for bar in bars:
            assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high


class CookieTimesOut(FakeYahoo):
    """fc.yahoo.com times out (as behind some proxies): yfinance warns and goes on."""

    def _cookie_page(self, url: str) -> curl_requests.Response:
        raise curl_requests.exceptions.Timeout(
            "Failed to perform, curl: (28) Operation timed out", CurlECode.OPERATION_TIMEDOUT
        )


def test_yfinance_warnings_are_folded_into_the_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with installed_fake(tmp_path / "yf", CookieTimesOut()) as fake:
        fake.script_attempts("AAPL", Reply.timeout())
        with caplog.at_level(logging.DEBUG):
            source = YFinanceFetcher(session=fake, timeout=5)
            with pytest.raises(TransientFetchError) as info:
                source.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")
            good = source.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")
    assert str(info.value).startswith("network error: Timeout")
    assert "(yfinance: Cookie fetch from fc.yahoo.com failed (Timeout)" in str(info.value)
    assert len(good) == 6
    # Nothing of yfinance's reached the log at WARNING: its words are in our one line.
    loud = [r for r in caplog.records if r.name == "yfinance" and r.levelno >= logging.WARNING]
    assert loud == []
    kept = [r.getMessage() for r in caplog.records if r.name == "stocksched.sources.yahoonotes"]
    assert any("during a good fetch of AAPL: Cookie fetch" in m for m in kept)
