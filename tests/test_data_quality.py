"""Issue 9 item 9, malformed source data: the checks of ``stocksched.sources.quality`` as a
table, and through the executor with yfinance's real parser reading canned chart-API replies
(bars outside the window, 200,000 bars back to 1477, negative prices, High < Low)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
import redis

from stocksched import metrics as metrics_module
from stocksched.executor import JobExecutor
from stocksched.jobs.spec import JobSpec
from stocksched.metrics import Metrics
from stocksched.model import RunResult, RunStatus, Trigger
from stocksched.registry import JobRegistry
from stocksched.sources import quality
from stocksched.sources.base import BAR_COLUMNS
from stocksched.sources.demo import DemoFetcher
from stocksched.sources.quality import MAX_BARS_PER_TICKER, check_bars
from stocksched.sources.yahoo import YFinanceFetcher
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.butler import DataIOButler
from stocksched.views import RunView
from tests.fakes import FakeClock
from tests.helpers import make_spec
from tests.yahoo_fake import AAPL, FakeYahoo, Reply, bar, history_back_to, installed_fake

NY = "America/New_York"
NOW = datetime(2025, 1, 11, 22, 0, tzinfo=UTC)
WINDOW = {"start": "2025-01-02", "end": "2025-01-10", "timezone": NY, "source": "yahoo"}
PREFIX = "scheduled_stock_data"
NAN = math.nan


# ------------------------------------------------------------------ the checks, as a table


def frame(rows: list[tuple[str, float, float, float, float]], tz: str = NY) -> pd.DataFrame:
    """Bars shaped like a Fetcher's result; a day "2025-01-02" is a daily bar, a time
    "2025-01-02T10:30" an intraday one."""
    index = pd.DatetimeIndex([pd.Timestamp(r[0]) for r in rows], name="Date").tz_localize(tz)
    data = pd.DataFrame(
        {
            "Open": [r[1] for r in rows],
            "High": [r[2] for r in rows],
            "Low": [r[3] for r in rows],
            "Close": [r[4] for r in rows],
            "Adj Close": [r[4] for r in rows],
            "Volume": pd.array([1000] * len(rows), dtype="int64"),
            "Dividends": 0.0,
            "Stock Splits": 0.0,
        },
        index=index,
    )
    return data[list(BAR_COLUMNS)]


def ok(day: str) -> tuple[str, float, float, float, float]:
    return (day, 10.0, 11.0, 9.0, 10.5)


JAN = [f"2025-01-{d:02d}" for d in (2, 3, 6, 7, 8, 10)]

CASES = [
    # id, rows, (start, end), interval, kept days, dropped by reason, warning
    ("clean", [ok(d) for d in JAN], ("2025-01-02", "2025-01-10"), "1d", JAN, {}, ""),
    (
        "negative open",
        [ok("2025-01-02"), ("2025-01-03", -10.0, 11.0, 9.0, 10.5)],
        ("2025-01-02", "2025-01-10"),
        "1d",
        ["2025-01-02"],
        {"bad_price": 1},
        "dropped 1 bar: 1 with a price <= 0 (2025-01-03)",
    ),
    (
        "zero close and negative low",
        [
            ("2025-01-02", 10.0, 11.0, 9.0, 0.0),
            ("2025-01-03", 10.0, 11.0, -9.0, 10.5),
            ok("2025-01-06"),
        ],
        ("2025-01-02", "2025-01-10"),
        "1d",
        ["2025-01-06"],
        {"bad_price": 2},
        "dropped 2 bars: 2 with a price <= 0 (2025-01-02, 2025-01-03)",
    ),
    (
        "high below low",
        [ok("2025-01-02"), ("2025-01-03", 10.0, 9.0, 11.0, 10.0)],
        ("2025-01-02", "2025-01-10"),
        "1d",
        ["2025-01-02"],
        {"inconsistent_range": 1},
        "dropped 1 bar: 1 with High < Low (2025-01-03)",
    ),
    (
        "low above open, high below close",
        [
            ("2025-01-02", 8.5, 11.0, 9.0, 10.5),
            ("2025-01-03", 10.0, 11.0, 9.0, 11.5),
            ok("2025-01-06"),
        ],
        ("2025-01-02", "2025-01-10"),
        "1d",
        ["2025-01-06"],
        {"inconsistent_range": 2},
        "dropped 2 bars: 2 with Open or Close outside Low..High (2025-01-02, 2025-01-03)",
    ),
    (
        "float rounding is not a problem",
        [("2025-01-02", 10.0, 243.85 * (1 - 1e-9), 9.0, 243.85)],
        ("2025-01-02", "2025-01-10"),
        "1d",
        ["2025-01-02"],
        {},
        "",
    ),
    (
        "missing prices are stored as today",
        [
            ("2025-01-02", NAN, 11.0, 9.0, 10.5),
            ("2025-01-03", NAN, NAN, NAN, NAN),
            ok("2025-01-06"),
        ],
        ("2025-01-02", "2025-01-10"),
        "1d",
        ["2025-01-02", "2025-01-03", "2025-01-06"],
        {},
        "",
    ),
    (
        "outside the window, both ends inclusive",
        [ok(d) for d in ("2025-01-01", "2025-01-02", "2025-01-10", "2025-01-13")],
        ("2025-01-02", "2025-01-10"),
        "1d",
        ["2025-01-02", "2025-01-10"],
        {"out_of_window": 2},
        "dropped 2 bars: 2 outside the window 2025-01-02..2025-01-10 (2025-01-01, 2025-01-13)",
    ),
    (
        "a bar is counted once, under its first problem",
        [
            ("1477-06-13", -1.0, 9.0, 11.0, 10.0),
            ("2025-01-02", -1.0, 9.0, 11.0, 10.0),
            ok("2025-01-03"),
        ],
        ("2025-01-02", "2025-01-10"),
        "1d",
        ["2025-01-03"],
        {"out_of_window": 1, "bad_price": 1},
        "dropped 2 bars: 1 outside the window 2025-01-02..2025-01-10 (1477-06-13), "
        "1 with a price <= 0 (2025-01-02)",
    ),
    (
        "every problem, in a fixed order",
        [
            ("2025-01-02", 10.0, 11.0, 9.0, 12.0),
            ("2025-01-03", 10.0, 8.0, 9.0, 8.5),
            ("2025-01-06", 0.0, 11.0, 9.0, 10.0),
            ok("2025-01-07"),
            ok("2025-01-20"),
        ],
        ("2025-01-02", "2025-01-10"),
        "1d",
        ["2025-01-07"],
        {"out_of_window": 1, "bad_price": 1, "inconsistent_range": 2},
        "dropped 4 bars: 1 outside the window 2025-01-02..2025-01-10 (2025-01-20), "
        "1 with a price <= 0 (2025-01-06), 1 with High < Low (2025-01-03), "
        "1 with Open or Close outside Low..High (2025-01-02)",
    ),
    (
        "at most five dates are named",
        [ok(f"2024-12-{d:02d}") for d in range(1, 9)] + [ok("2025-01-02")],
        ("2025-01-02", "2025-01-10"),
        "1d",
        ["2025-01-02"],
        {"out_of_window": 8},
        "dropped 8 bars: 8 outside the window 2025-01-02..2025-01-10 (2024-12-01, 2024-12-02, "
        "2024-12-03, 2024-12-04, 2024-12-05, +3 more)",
    ),
    (
        "a weekly bar may start before the window it covers",
        [ok("2024-12-30"), ok("2024-12-23")],
        ("2025-01-02", "2025-01-10"),
        "1wk",
        ["2024-12-30"],
        {"out_of_window": 1},
        "dropped 1 bar: 1 outside the window 2025-01-02..2025-01-10 (2024-12-23)",
    ),
    (
        "intraday bars are named by their time",
        [("2025-01-10T09:30", 10.0, 11.0, 9.0, 10.5), ("2025-01-10T10:30", 10.0, 9.0, 11.0, 10.0)],
        ("2025-01-10", "2025-01-10"),
        "1h",
        ["2025-01-10T09:30"],
        {"inconsistent_range": 1},
        "dropped 1 bar: 1 with High < Low (2025-01-10T10:30:00-05:00)",
    ),
]


@pytest.mark.parametrize(
    ("rows", "window", "interval", "kept", "by_reason", "warning"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_check_bars(
    rows: list[tuple[str, float, float, float, float]],
    window: tuple[str, str],
    interval: str,
    kept: list[str],
    by_reason: dict[str, int],
    warning: str,
) -> None:
    bars = frame(rows)
    start, end = (date.fromisoformat(d) for d in window)
    clean, report = check_bars(bars, start, end, interval)
    assert list(clean.index) == [pd.Timestamp(d).tz_localize(NY) for d in kept]
    pd.testing.assert_frame_equal(clean, bars.loc[clean.index])  # kept bars are unchanged
    assert report.by_reason == by_reason
    assert report.warning == warning
    assert (report.received, report.kept, report.failure) == (len(rows), len(kept), "")
    assert set(report.by_reason) <= set(quality.DROP_REASONS)


def test_window_is_in_the_exchange_local_dates() -> None:
    # Midnight in Frankfurt on 2 January is still 1 January in UTC and New York.
    bars = frame([ok("2025-01-02"), ok("2025-01-10")], tz="Europe/Berlin")
    clean, report = check_bars(bars, date(2025, 1, 2), date(2025, 1, 10))
    assert len(clean) == 2 and report.warning == ""
    clean, report = check_bars(bars.tz_convert(NY), date(2025, 1, 2), date(2025, 1, 10))
    assert report.by_reason == {"out_of_window": 1}  # the same bars, dated in New York


def test_no_good_bar_left_is_a_failure() -> None:
    bars = frame([("2025-01-02", -1.0, 11.0, 9.0, 10.0), ("2025-01-03", 10.0, 9.0, 11.0, 10.0)])
    clean, report = check_bars(bars, date(2025, 1, 2), date(2025, 1, 10))
    assert clean.empty
    assert report.failure == (
        "no usable bars left (dropped 2 bars: 1 with a price <= 0 (2025-01-02), "
        "1 with High < Low (2025-01-03)); not stored"
    )
    assert report.by_reason == {"bad_price": 1, "inconsistent_range": 1}


@pytest.mark.parametrize(("count", "fails"), [(4, False), (5, True)])
def test_cap_on_bars_per_ticker(count: int, fails: bool) -> None:
    bars = frame([ok(f"2025-01-{d:02d}") for d in range(2, 2 + count)])
    clean, report = check_bars(bars, date(2025, 1, 1), date(2025, 1, 31), max_bars=4)
    if fails:
        assert clean.empty and report.by_reason == {} and report.warning == ""
        assert report.failure == (
            "source returned 5 bars, more than the cap of 4 for one ticker; not stored"
        )
    else:
        assert len(clean) == count and report.failure == ""


def test_default_cap_fits_the_biggest_legitimate_answers() -> None:
    # An index's daily bars since 1927 are ~25,000; 1m bars over Yahoo's 7 days of a market
    # open round the clock ~10,000: the cap leaves room for both and stops junk.
    assert 7 * 24 * 60 < 100 * 252 < MAX_BARS_PER_TICKER <= 100_000


def test_metric_reasons_match_the_checks() -> None:
    assert metrics_module.DROP_REASONS == quality.DROP_REASONS


# ------------------------------------------------------------------ through the executor


@pytest.fixture
def fake_yahoo(tmp_path: Path) -> Iterator[FakeYahoo]:
    with installed_fake(tmp_path / "yfinance") as fake:
        yield fake


def executor(client: redis.Redis, fake: FakeYahoo, metrics: Metrics) -> JobExecutor:
    butler = DataIOButler(RedisAdapter(client))
    return JobExecutor({"yahoo": YFinanceFetcher(session=fake)}, butler, FakeClock(NOW), 4, metrics)


def stored(client: redis.Redis, ticker: str) -> pd.DataFrame | None:
    return DataIOButler(RedisAdapter(client)).get_data(PREFIX, ticker, "2025-01-02", "2025-01-10")


def dropped(metrics: Metrics, job: str, reason: str) -> float:
    return metrics.bars_dropped.labels(job=job, reason=reason).get() or 0.0


def test_bars_outside_the_window_are_not_stored(
    any_redis: redis.Redis, fake_yahoo: FakeYahoo
) -> None:
    days = ["2024-12-30", "2024-12-31", *JAN, "2025-01-13", "2025-01-14"]
    fake_yahoo.script_attempts("AAPL", Reply.canned(bar(AAPL, d, 10, 11, 9, 10.5) for d in days))
    metrics = Metrics("test")
    result = executor(any_redis, fake_yahoo, metrics).execute_job(
        make_spec("tech", tickers=["AAPL"], **WINDOW)
    )
    assert result.status == RunStatus.SUCCESS and result.fetched_stocks == ["AAPL"]
    bars = stored(any_redis, "AAPL")
    assert bars is not None
    assert [d.strftime("%Y-%m-%d") for d in bars.index] == JAN
    assert result.rows_stored == len(JAN)
    # yfinance drops the last bar itself (its "Yahoo appends the latest price" fix).
    assert result.warnings == {
        "AAPL": "dropped 3 bars: 3 outside the window 2025-01-02..2025-01-10 "
        "(2024-12-30, 2024-12-31, 2025-01-13)"
    }
    assert dropped(metrics, "tech", "out_of_window") == 3


def test_a_huge_reply_fails_that_ticker_and_stores_nothing(
    any_redis: redis.Redis, fake_yahoo: FakeYahoo
) -> None:
    junk = history_back_to(AAPL, date(2025, 1, 10), 200_000)
    assert junk[0].start.year == 1477
    fake_yahoo.script_attempts("AAPL", Reply.canned(junk))
    metrics = Metrics("test")
    result = executor(any_redis, fake_yahoo, metrics).execute_job(
        make_spec("tech", tickers=["AAPL", "BMW.DE"], retries=2, retry_backoff="10ms", **WINDOW)
    )
    assert result.status == RunStatus.PARTIAL_SUCCESS
    assert result.failed_stocks == ["AAPL"] and result.fetched_stocks == ["BMW.DE"]
    assert result.errors == {
        "AAPL": "source returned 200000 bars, more than the cap of 50000 for one ticker; not stored"
    }
    assert stored(any_redis, "AAPL") is None
    assert sorted(any_redis.keys(f"{PREFIX}:AAPL:*")) == []
    assert stored(any_redis, "BMW.DE") is not None  # the other ticker is unaffected
    # A permanent failure: asked once, not retried.
    assert len(fake_yahoo.chart_requests("AAPL", history_only=True)) == 1
    assert metrics.ticker_fetches.labels(job="tech", result="failure").get() == 1


BAD = [
    bar(AAPL, "2025-01-02", 248.93, 249.10, 241.82, 243.85),
    bar(AAPL, "2025-01-03", -243.36, 244.18, 241.89, 243.36),  # negative price
    bar(AAPL, "2025-01-06", 244.31, 247.33, 243.20, 0.0),  # zero close
    bar(AAPL, "2025-01-07", 242.98, 241.35, 245.55, 242.21),  # High < Low
    bar(AAPL, "2025-01-08", 241.92, 243.71, 242.05, 242.70),  # Low above Open
    bar(AAPL, "2025-01-10", 240.01, 240.16, 233.00, 236.85),
]
BAD_WARNING = (
    "dropped 4 bars: 2 with a price <= 0 (2025-01-03, 2025-01-06), 1 with High < Low "
    "(2025-01-07), 1 with Open or Close outside Low..High (2025-01-08)"
)


def test_bad_bars_are_dropped_counted_and_named_and_the_ticker_is_fetched(
    any_redis: redis.Redis, fake_yahoo: FakeYahoo, caplog: pytest.LogCaptureFixture
) -> None:
    fake_yahoo.script_attempts("AAPL", Reply.canned(BAD))
    metrics = Metrics("test")
    spec = make_spec("tech", tickers=["AAPL"], **WINDOW)
    caplog.set_level(logging.WARNING, logger="stocksched.executor")
    result = executor(any_redis, fake_yahoo, metrics).execute_job(spec, run_id="tech:1")

    assert result.status == RunStatus.SUCCESS
    assert result.fetched_stocks == ["AAPL"] and result.errors == {}
    bars = stored(any_redis, "AAPL")
    assert bars is not None
    assert [d.strftime("%Y-%m-%d") for d in bars.index] == ["2025-01-02", "2025-01-10"]
    assert (bars[["Open", "High", "Low", "Close"]] > 0).all().all()
    assert result.rows_stored == 2
    assert result.warnings == {"AAPL": BAD_WARNING}
    assert dropped(metrics, "tech", "bad_price") == 2
    assert dropped(metrics, "tech", "inconsistent_range") == 2
    assert b'stocksched_bars_dropped_total{job="tech",reason="bad_price"} 2.0' in (metrics.render())
    # one WARNING for the ticker, with its context
    lines = [r for r in caplog.records if r.getMessage().startswith("bars dropped")]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert (lines[0].job, lines[0].run_id, lines[0].ticker) == ("tech", "tech:1", "AAPL")  # type: ignore[attr-defined]
    assert BAD_WARNING in lines[0].getMessage()

    # the history entry, read back from Redis, and the API's run view
    registry = JobRegistry(RedisAdapter(any_redis), FakeClock(NOW))
    registry.reconcile([spec])
    registry.record_run(result)
    (entry,) = any_redis.xrange(keys.runs_key("tech"))
    assert json.loads(entry[1]["warnings"]) == {"AAPL": BAD_WARNING}
    (back,) = registry.get_runs("tech")
    assert back.warnings == {"AAPL": BAD_WARNING}
    assert RunView.of(back).model_dump(mode="json")["warnings"] == {"AAPL": BAD_WARNING}


def test_a_ticker_with_only_bad_bars_fails(any_redis: redis.Redis, fake_yahoo: FakeYahoo) -> None:
    fake_yahoo.script_attempts("AAPL", Reply.canned([BAD[1], BAD[3]]))
    metrics = Metrics("test")
    result = executor(any_redis, fake_yahoo, metrics).execute_job(
        make_spec("tech", tickers=["AAPL", "BMW.DE"], **WINDOW)
    )
    assert result.status == RunStatus.PARTIAL_SUCCESS and result.failed_stocks == ["AAPL"]
    assert result.errors["AAPL"] == (
        "no usable bars left (dropped 2 bars: 1 with a price <= 0 (2025-01-03), "
        "1 with High < Low (2025-01-07)); not stored"
    )
    assert result.warnings == {}  # the error says it all
    assert stored(any_redis, "AAPL") is None
    assert not any_redis.exists(keys.latest_key(PREFIX, "AAPL"))
    assert dropped(metrics, "tech", "bad_price") == 1
    assert dropped(metrics, "tech", "inconsistent_range") == 1


class CorruptDemo(DemoFetcher):
    """Demo bars with the second bar's High below its Low."""

    def fetch_from_source(self, ticker: str, start: date, end: date, interval: str) -> pd.DataFrame:
        bars = super().fetch_from_source(ticker, start, end, interval).copy()
        bars.iloc[1, bars.columns.get_loc("High")] = bars["Low"].iloc[1] - 1.0
        return bars


def test_demo_source_goes_through_the_same_checks(any_redis: redis.Redis) -> None:
    metrics = Metrics("test")
    butler = DataIOButler(RedisAdapter(any_redis))
    ex = JobExecutor({"demo": CorruptDemo()}, butler, FakeClock(NOW), 4, metrics)
    spec: JobSpec = make_spec("demo", tickers=["AAA"], start="2025-01-06", end="2025-01-10")
    result = ex.execute_job(spec)
    assert result.status == RunStatus.SUCCESS and result.rows_stored == 4
    assert result.warnings == {"AAA": "dropped 1 bar: 1 with High < Low (2025-01-07)"}
    bars = butler.get_data(PREFIX, "AAA", "2025-01-06", "2025-01-10")
    assert bars is not None and "2025-01-07" not in bars.index.strftime("%Y-%m-%d")
    assert dropped(metrics, "demo", "inconsistent_range") == 1
    plain = JobExecutor({"demo": DemoFetcher()}, butler, FakeClock(NOW), 4, metrics)
    clean = plain.execute_job(
        make_spec("plain", tickers=["BBB"], start="2025-01-06", end="2025-01-10")
    )
    assert clean.warnings == {} and clean.rows_stored == 5  # real demo bars pass the checks


# ------------------------------------------------------------------ the record


def test_warnings_survive_the_history_entry_and_old_entries_read_without_them() -> None:
    result = RunResult(
        job_id="tech",
        run_id="tech:1",
        trigger=Trigger.MANUAL,
        scheduled_for=None,
        started_at=NOW,
        finished_at=NOW,
        status=RunStatus.SUCCESS,
        fetched_stocks=["AAPL"],
        warnings={"AAPL": BAD_WARNING},
    )
    fields = result.to_fields()
    assert json.loads(fields["warnings"]) == {"AAPL": BAD_WARNING}
    assert RunResult.from_fields("tech", fields).warnings == {"AAPL": BAD_WARNING}
    old = {k: v for k, v in fields.items() if k != "warnings"}
    assert RunResult.from_fields("tech", old).warnings == {}


def test_removed_job_loses_its_dropped_bars_series() -> None:
    metrics = Metrics("test")
    metrics.bars_dropped.labels(job="gone", reason="bad_price").inc(3)
    metrics.bars_dropped.labels(job="kept", reason="bad_price").inc(1)
    metrics.remove_job("gone")
    text = metrics.render()
    assert b'job="gone"' not in text
    assert b'stocksched_bars_dropped_total{job="kept",reason="bad_price"} 1.0' in text
