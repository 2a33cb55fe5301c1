"""Reading the stored series back: ``stocksched.data.read_bars`` / ``list_series`` and
``GET /data``, against a real redis-server, with bars that went through yfinance's parser
(tests/yahoo_fake.py) on the way in."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
import yfinance as yf
from redis.cluster import RedisCluster

from stocksched.data import SeriesNotFound, list_series, read_bars
from stocksched.http import Access
from stocksched.metrics import Metrics
from stocksched.sources.yahoo import YFinanceFetcher
from stocksched.storage import seriescodec
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.cluster import is_cluster
from stocksched.storage.series import SeriesId, SeriesStore, SeriesWrite
from tests.conftest import RedisServer, free_port
from tests.helpers import make_spec
from tests.test_api import Stack
from tests.test_data_quality import executor
from tests.yahoo_fake import AAPL, FakeYahoo, Reply, bar, installed_fake

PREFIX = "scheduled_stock_data"
NY = "America/New_York"


@pytest.fixture
def fake_yahoo(tmp_path: Path) -> Iterator[FakeYahoo]:
    with installed_fake(tmp_path / "yfinance") as fake:
        yield fake


def yahoo_history(fake: FakeYahoo, ticker: str, start: str, end: str, interval: str = "1d") -> Any:
    """What yfinance itself returns for ``start``..``end`` (inclusive)."""
    stop = (date.fromisoformat(end) + timedelta(days=1)).isoformat()
    return yf.Ticker(ticker, session=fake).history(
        start=start, end=stop, interval=interval, auto_adjust=False, actions=True
    )


def store_fetched(
    client: redis.Redis,
    fake: FakeYahoo,
    ticker: str,
    start: str,
    end: str,
    interval: str = "1d",
    prefix: str = PREFIX,
) -> None:
    """Fetch through the daemon's fetcher and store the frame as a series."""
    frame = YFinanceFetcher(session=fake).fetch_from_source(
        ticker, date.fromisoformat(start), date.fromisoformat(end), interval
    )
    SeriesStore(RedisAdapter(client)).write(
        SeriesWrite(
            SeriesId(prefix, ticker, interval),
            seriescodec.bars_from_frame(frame),
            str(frame.index.tz),
        )
    )


@pytest.fixture(params=[True, False], ids=["decoded", "bytes"])
def client(request: pytest.FixtureRequest, real_redis: redis.Redis) -> Iterator[redis.Redis]:
    """A clean real Redis, as a client with or without ``decode_responses``."""
    c: Any
    if is_cluster(real_redis):
        node = real_redis.get_default_node()  # type: ignore[attr-defined]
        c = RedisCluster(host=node.host, port=node.port, decode_responses=request.param)
    else:
        pool = real_redis.connection_pool.connection_kwargs
        c = redis.Redis(host=pool["host"], port=pool["port"], decode_responses=request.param)
    yield c
    c.close()


# -- read_bars equals what yfinance returned --------------------------------------------


@pytest.mark.parametrize(
    ("ticker", "start", "end"),
    [("MSFT", "2025-02-18", "2025-02-21"), ("BMW.DE", "2025-01-02", "2025-01-06")],
)
def test_read_bars_equals_the_frame_yfinance_returned(
    client: redis.Redis, fake_yahoo: FakeYahoo, ticker: str, start: str, end: str
) -> None:
    store_fetched(client, fake_yahoo, ticker, start, end)
    got = read_bars(ticker, client=client)
    want = yahoo_history(fake_yahoo, ticker, start, end)
    pd.testing.assert_frame_equal(got, want)
    assert got.index.name == "Date" and str(got.index.tz) == str(want.index.tz)
    assert got["Volume"].dtype == "int64"


def test_dividends_come_back_on_their_day(client: redis.Redis, fake_yahoo: FakeYahoo) -> None:
    store_fetched(client, fake_yahoo, "MSFT", "2025-02-18", "2025-02-21")
    got = read_bars("msft", client=client)  # any case
    assert got.loc[got["Dividends"] != 0, "Dividends"].to_dict() == {
        pd.Timestamp("2025-02-20", tz=NY): 0.83
    }


def test_intraday_bars_equal_yfinance_with_the_index_named_date(
    client: redis.Redis, fake_yahoo: FakeYahoo
) -> None:
    store_fetched(client, fake_yahoo, "AAPL", "2025-01-10", "2025-01-10", "1h")
    got = read_bars("AAPL", interval="1h", client=client)
    want = yahoo_history(fake_yahoo, "AAPL", "2025-01-10", "2025-01-10", "1h")
    assert want.index.name == "Datetime"  # yfinance's name for intraday; ours is Date
    pd.testing.assert_frame_equal(got, want.rename_axis("Date"))
    assert len(read_bars("AAPL", "1h", start="2025-01-10", end="2025-01-10", client=client)) == 7
    assert read_bars("AAPL", "1h", start="2025-01-11", client=client).empty


# -- start / end ----------------------------------------------------------------------


def test_start_and_end_are_inclusive_exchange_local_dates(
    real_redis: redis.Redis, fake_yahoo: FakeYahoo
) -> None:
    # Frankfurt bars start at midnight Berlin time, 23:00 UTC the day before: the cut
    # is by the exchange's date, not UTC's.
    store_fetched(real_redis, fake_yahoo, "BMW.DE", "2025-01-02", "2025-01-06")
    full = read_bars("BMW.DE", client=real_redis)

    def days(**kw: Any) -> list[str]:
        frame = read_bars("BMW.DE", client=real_redis, **kw)
        pd.testing.assert_frame_equal(frame, full.loc[frame.index])
        return [t.date().isoformat() for t in frame.index]

    assert days(start="2025-01-03", end="2025-01-03") == ["2025-01-03"]
    assert days(start=date(2025, 1, 3)) == ["2025-01-03", "2025-01-06"]
    assert days(end=pd.Timestamp("2025-01-03")) == ["2025-01-02", "2025-01-03"]
    assert days(start=datetime(2025, 1, 4), end="2025-01-05") == []
    assert days(start="2024-01-01", end="2030-01-01") == ["2025-01-02", "2025-01-03", "2025-01-06"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"start": "2025-13-01"}, "start: expected a date like 2024-01-31, got '2025-13-01'"),
        ({"end": "yesterday"}, "end: expected a date like 2024-01-31, got 'yesterday'"),
        ({"start": "2025-01-06", "end": "2025-01-02"}, "start 2025-01-06 is after end 2025-01-02"),
    ],
)
def test_a_bad_date_is_a_value_error(
    fake_redis: redis.Redis, kw: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError) as err:
        read_bars("AAPL", client=fake_redis, **kw)
    assert str(err.value) == message


# -- unknown series -------------------------------------------------------------------


def test_an_unknown_ticker_or_interval_names_what_is_stored(
    real_redis: redis.Redis, fake_yahoo: FakeYahoo
) -> None:
    store_fetched(real_redis, fake_yahoo, "AAPL", "2025-01-02", "2025-01-10")
    store_fetched(real_redis, fake_yahoo, "AAPL", "2025-01-10", "2025-01-10", "1h", "other")
    with pytest.raises(SeriesNotFound) as err:
        read_bars("AAPL", interval="5m", client=real_redis)
    assert isinstance(err.value, LookupError)
    assert str(err.value) == (
        "no 5m bars of AAPL stored under prefix 'scheduled_stock_data'; stored for AAPL: "
        "1h (prefix 'other'), 1d (prefix 'scheduled_stock_data')"
    )
    with pytest.raises(SeriesNotFound, match=r"no 1d bars of NOPE .* nothing is stored for NOPE"):
        read_bars("NOPE", client=real_redis)


def test_redis_url_and_the_environment_choose_the_server(
    redis_server: RedisServer,
    real_redis: redis.Redis,
    fake_yahoo: FakeYahoo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store_fetched(real_redis, fake_yahoo, "MSFT", "2025-02-18", "2025-02-21")
    assert len(read_bars("MSFT", redis_url=redis_server.url)) == 4
    monkeypatch.setenv("STOCKSCHED_REDIS_URL", redis_server.url)
    assert len(read_bars("MSFT")) == 4
    monkeypatch.delenv("STOCKSCHED_REDIS_URL")
    with pytest.raises(ValueError, match="no Redis to read from: give redis_url="):
        read_bars("MSFT")


# -- list_series, after real runs -------------------------------------------------------

JAN = ["2025-01-02", "2025-01-03", "2025-01-06", "2025-01-07", "2025-01-08", "2025-01-10"]
YAHOO = {"source": "yahoo", "timezone": NY, "calendar": "XNYS"}


def run_jobs(client: redis.Redis, fake: FakeYahoo) -> None:
    """Daily AAPL with 7 January missing from Yahoo's answer, daily MSFT over its February
    dividend and hourly AAPL, each stored by a job run."""
    gap = [d for d in JAN if d != "2025-01-07"]
    fake.script_attempts("AAPL", Reply.canned(bar(AAPL, d, 10, 11, 9, 10.5) for d in gap))
    ex = executor(client, fake, Metrics("test"))
    for spec in (
        make_spec("tech", tickers=["AAPL"], start="2025-01-02", end="2025-01-10", **YAHOO),
        make_spec("div", tickers=["MSFT"], start="2025-02-18", end="2025-02-21", **YAHOO),
        make_spec(
            "hourly", tickers=["AAPL"], start="2025-01-10", end="2025-01-10", interval="1h", **YAHOO
        ),
    ):
        result = ex.execute_job(spec)
        assert result.status == "success", result.errors


EXPECTED_SERIES = [
    {
        "prefix": PREFIX,
        "ticker": "AAPL",
        "interval": "1d",
        "tz": NY,
        "first": "2025-01-02",
        "last": "2025-01-10",
        "bars": 5,
        "missing": 1,
        "missing_dates": ["2025-01-07"],
        "fetched": "2025-01-11T22:00:00+00:00",
        "exchange": "XNYS",
        "last_action": None,
    },
    {
        "prefix": PREFIX,
        "ticker": "AAPL",
        "interval": "1h",
        "tz": NY,
        "first": "2025-01-10T09:30:00-05:00",
        "last": "2025-01-10T15:30:00-05:00",
        "bars": 7,
        "missing": 0,
        "missing_dates": [],
        "fetched": "2025-01-11T22:00:00+00:00",
        "exchange": "XNYS",
        "last_action": None,
    },
    {
        "prefix": PREFIX,
        "ticker": "MSFT",
        "interval": "1d",
        "tz": NY,
        "first": "2025-02-18",
        "last": "2025-02-21",
        "bars": 4,
        "missing": 0,
        "missing_dates": [],
        "fetched": "2025-01-11T22:00:00+00:00",
        "exchange": "XNYS",
        "last_action": {"date": "2025-02-20", "dividend": 0.83, "split": 0.0},
    },
]


def test_list_series_shows_every_stored_series(client: redis.Redis, fake_yahoo: FakeYahoo) -> None:
    run_jobs(client, fake_yahoo)
    assert [s.as_dict() for s in list_series(client=client)] == EXPECTED_SERIES
    assert list_series(client=client, prefix="elsewhere") == []


# -- GET /data ----------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path, redis_server: RedisServer, real_redis: redis.Redis) -> Iterator[Stack]:
    s = Stack(tmp_path, redis_url=redis_server.url, start=False)
    yield s
    s.close()


def test_get_data_lists_the_series_like_tickers_json(
    api: Stack, real_redis: redis.Redis, fake_yahoo: FakeYahoo
) -> None:
    run_jobs(real_redis, fake_yahoo)
    resp = api.http.get("/data")
    assert resp.status_code == 200, resp.text
    assert resp.json() == EXPECTED_SERIES
    assert api.http.get("/data", params={"prefix": "nope"}).json() == []


def test_get_data_ticker_json_and_csv(
    api: Stack, real_redis: redis.Redis, fake_yahoo: FakeYahoo
) -> None:
    run_jobs(real_redis, fake_yahoo)
    resp = api.http.get("/data/msft", params={"start": "2025-02-20", "end": "2025-02-20"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "ticker": "MSFT",
        "interval": "1d",
        "prefix": PREFIX,
        "tz": NY,
        "bars": [
            {
                "Date": "2025-02-20T00:00:00-05:00",
                "Open": 415.31,
                "High": 419.31,
                "Low": 412.54,
                "Close": 416.13,
                "Adj Close": 416.13,
                "Volume": 23508700,
                "Dividends": 0.83,
                "Stock Splits": 0.0,
            }
        ],
    }
    csv = api.http.get("/data/MSFT", params={"format": "csv"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text == read_bars("MSFT", client=real_redis).to_csv()
    hourly = api.http.get("/data/AAPL", params={"interval": "1h"}).json()
    assert [b["Date"] for b in hourly["bars"]][:2] == [
        "2025-01-10T09:30:00-05:00",
        "2025-01-10T10:30:00-05:00",
    ]


def test_get_data_nan_is_null(api: Stack, real_redis: redis.Redis) -> None:
    bars = seriescodec.bars_from_frame(
        pd.DataFrame(
            {"Open": [float("nan")], "High": [2.0], "Low": [1.0], "Close": [1.5], "Volume": [0]},
            index=pd.DatetimeIndex([pd.Timestamp("2025-01-02", tz=NY)], name="Date"),
        )
    )
    SeriesStore(RedisAdapter(real_redis)).write(
        SeriesWrite(SeriesId(PREFIX, "NANX", "1d"), bars, NY)
    )
    (row,) = api.http.get("/data/NANX").json()["bars"]
    assert row["Open"] is None and row["Close"] == 1.5


def test_get_data_errors(api: Stack, real_redis: redis.Redis, fake_yahoo: FakeYahoo) -> None:
    run_jobs(real_redis, fake_yahoo)
    cases = [
        ("/data/NOPE", {}, 404, "nothing is stored for NOPE"),
        ("/data/MSFT", {"interval": "1h"}, 404, "stored for MSFT: 1d (prefix"),
        ("/data/MSFT", {"start": "2025-02-30"}, 422, "start: expected a date"),
        ("/data/MSFT", {"start": "2025-02-21", "end": "2025-02-18"}, 422, "is after end"),
        ("/data/MSFT", {"format": "xml"}, 422, "format"),
        ("/data/MSFT", {"interval": "forever"}, 422, "interval"),
    ]
    for path, params, status, needle in cases:
        resp = api.http.get(path, params=params)
        assert resp.status_code == status, (path, params, resp.text)
        body = resp.json()
        assert set(body) == {"error"} and needle in body["error"], body


def test_get_data_needs_the_token_where_reads_do(
    tmp_path: Path, redis_server: RedisServer, real_redis: redis.Redis, fake_yahoo: FakeYahoo
) -> None:
    run_jobs(real_redis, fake_yahoo)
    s = Stack(
        tmp_path,
        redis_url=redis_server.url,
        start=False,
        access=Access("tok", reads=True),
    )
    try:
        for path in ("/data", "/data/MSFT"):
            assert s.http.get(path).status_code == 401
            ok = s.http.get(path, headers={"Authorization": "Bearer tok"})
            assert ok.status_code == 200, ok.text
    finally:
        s.close()


def test_get_data_on_redis_down_is_503(tmp_path: Path) -> None:
    s = Stack(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0", load=False, start=False)
    try:
        for path in ("/data", "/data/MSFT"):
            resp = s.http.get(path)
            assert resp.status_code == 503 and "storage unavailable" in resp.json()["error"]
    finally:
        s.close()
