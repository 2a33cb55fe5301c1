"""JobExecutor: per-ticker isolation and the original design's result rule, through yfinance's real
parsing code with the network to Yahoo replaced by canned chart-API replies."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from stocksched.executor import JobExecutor
from stocksched.metrics import Metrics
from stocksched.model import RunStatus, Trigger
from stocksched.sources.yahoo import YFinanceFetcher
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.butler import DataIOButler
from tests.conftest import RedisServer
from tests.fakes import FakeClock
from tests.helpers import make_spec
from tests.yahoo_fake import FakeYahoo, Reply, installed_fake

NOW = datetime(2025, 1, 11, 22, 0, tzinfo=UTC)
WINDOW = {
    "start": "2025-01-02",
    "end": "2025-01-10",
    "timezone": "America/New_York",
    "source": "yahoo",
}


@pytest.fixture
def fake_yahoo(tmp_path: Path) -> Iterator[FakeYahoo]:
    with installed_fake(tmp_path / "yfinance") as fake:
        yield fake


def executor(
    client: redis.Redis, fake: FakeYahoo, metrics: Metrics | None = None
) -> tuple[JobExecutor, DataIOButler]:
    butler = DataIOButler(RedisAdapter(client))
    ex = JobExecutor(
        {"yahoo": YFinanceFetcher(session=fake)}, butler, FakeClock(NOW), 4, metrics or Metrics("t")
    )
    return ex, butler


def test_success_stores_every_ticker_in_the_original_design_format(
    fake_redis: redis.Redis, fake_yahoo: FakeYahoo, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics("test")
    ex, butler = executor(fake_redis, fake_yahoo, metrics)
    caplog.set_level(logging.INFO, logger="stocksched.executor")
    result = ex.execute_job(
        make_spec("tech", tickers=["AAPL", "BMW.DE"], **WINDOW),
        trigger=Trigger.SCHEDULE,
        scheduled_for=NOW,
        run_id="tech:1",
    )
    assert result.status == RunStatus.SUCCESS
    assert result.fetched_stocks == ["AAPL", "BMW.DE"] and result.failed_stocks == []
    assert result.errors == {} and result.warnings == {}  # real bars pass the quality checks
    frame = butler.get_data("scheduled_stock_data", "AAPL", "2025-01-02", "2025-01-10")
    assert frame is not None and len(frame) == 6  # 9 Jan 2025: market closed
    bmw = butler.get_data("scheduled_stock_data", "BMW.DE", "2025-01-02", "2025-01-10")
    assert bmw is not None
    assert result.rows_stored == 6 + len(bmw)
    assert fake_redis.get(keys.latest_key("scheduled_stock_data", "AAPL")) == keys.data_key(
        "scheduled_stock_data", "AAPL", "2025-01-02", "2025-01-10"
    )
    lines = [r for r in caplog.records if r.getMessage().startswith("run finished")]
    assert len(lines) == 1 and "job=tech run_id=tech:1 status=success" in lines[0].getMessage()
    assert metrics.ticker_fetches.labels(job="tech", result="success").get() == 2
    assert metrics.job_runs.labels(job="tech", status="success", trigger="schedule").get() == 1


def test_one_bad_ticker_gives_partial_success(
    fake_redis: redis.Redis, fake_yahoo: FakeYahoo
) -> None:
    fake_yahoo.always("GONE", Reply.delisted())
    ex, butler = executor(fake_redis, fake_yahoo)
    result = ex.execute_job(make_spec("tech", tickers=["AAPL", "GONE"], **WINDOW))
    assert result.status == RunStatus.PARTIAL_SUCCESS
    assert result.fetched_stocks == ["AAPL"] and result.failed_stocks == ["GONE"]
    assert "delisted" in result.errors["GONE"] or "No data" in result.errors["GONE"]
    assert butler.get_data("scheduled_stock_data", "AAPL", "2025-01-02", "2025-01-10") is not None
    assert not fake_redis.exists(keys.latest_key("scheduled_stock_data", "GONE"))


def test_all_tickers_failing_gives_failed(fake_redis: redis.Redis, fake_yahoo: FakeYahoo) -> None:
    fake_yahoo.always("GONE", Reply.delisted())
    fake_yahoo.always("AAPL", Reply.server_error())
    ex, _ = executor(fake_redis, fake_yahoo)
    result = ex.execute_job(make_spec("tech", tickers=["AAPL", "GONE"], **WINDOW))
    assert result.status == RunStatus.FAILED
    assert result.fetched_stocks == [] and sorted(result.failed_stocks) == ["AAPL", "GONE"]
    assert set(result.errors) == {"AAPL", "GONE"}


def test_storage_down_fails_the_run_with_a_clear_reason(
    redis_server: RedisServer, real_redis: redis.Redis, fake_yahoo: FakeYahoo
) -> None:
    from stocksched.storage.adapter import connect

    ex, _ = executor(connect(redis_server.url), fake_yahoo)
    redis_server.stop()
    try:
        result = ex.execute_job(make_spec("tech", tickers=["AAPL"], **WINDOW))
    finally:
        redis_server.start()
    assert result.status == RunStatus.FAILED
    assert result.reason == "could not store data: Redis unavailable"
    assert "redis" in result.errors["AAPL"].lower()


@pytest.mark.parametrize(("retries", "status"), [(2, RunStatus.SUCCESS), (0, RunStatus.FAILED)])
def test_job_retries_ride_over_a_rate_limit(
    fake_redis: redis.Redis, fake_yahoo: FakeYahoo, retries: int, status: RunStatus
) -> None:
    fake_yahoo.script_attempts("AAPL", Reply.rate_limited(retry_after=0.2), Reply.ok())
    fake_yahoo.always("GONE", Reply.delisted())
    ex, _ = executor(fake_redis, fake_yahoo)
    spec = make_spec("tech", tickers=["AAPL"], retries=retries, retry_backoff="10ms", **WINDOW)
    result = ex.execute_job(spec)
    assert result.status == status
    if status == RunStatus.FAILED:
        assert "429" in result.errors["AAPL"] or "rate" in result.errors["AAPL"].lower()
    # A permanent failure is never retried, whatever `retries` says: a run with retries
    # asks Yahoo exactly as often as a run without.
    counts = []
    for n in (0, 3):
        before = len(fake_yahoo.chart_requests("GONE"))
        ex.execute_job(
            make_spec("gone", tickers=["GONE"], retries=n, retry_backoff="10ms", **WINDOW)
        )
        counts.append(len(fake_yahoo.chart_requests("GONE")) - before)
    assert counts[0] >= 1 and counts[1] == counts[0]


def test_daily_and_hourly_jobs_of_one_ticker_keep_their_own_keys(
    any_redis: redis.Redis, fake_yahoo: FakeYahoo
) -> None:
    """Issue 8: a 1h job used to overwrite the 1d job's window key and flip its pointer."""
    ex, butler = executor(any_redis, fake_yahoo)
    daily = ex.execute_job(make_spec("daily", tickers=["AAPL"], **WINDOW))
    hourly = ex.execute_job(make_spec("hourly", tickers=["AAPL"], interval="1h", **WINDOW))
    assert daily.status == hourly.status == RunStatus.SUCCESS
    assert (daily.rows_stored, hourly.rows_stored) == (6, 7)
    daily_key = "scheduled_stock_data:AAPL:2025-01-02:2025-01-10"
    hourly_key = "scheduled_stock_data:AAPL:1h:2025-01-02:2025-01-10"
    assert any_redis.get("scheduled_stock_data:AAPL:latest") == daily_key
    assert any_redis.get("scheduled_stock_data:AAPL:1h:latest") == hourly_key
    assert sorted(any_redis.scan_iter("scheduled_stock_data:AAPL:*")) == sorted(
        [
            daily_key,
            hourly_key,
            "scheduled_stock_data:AAPL:latest",
            "scheduled_stock_data:AAPL:1h:latest",
        ]
    )
    bars = butler.get_data("scheduled_stock_data", "AAPL", "2025-01-02", "2025-01-10")
    assert bars is not None and len(bars) == 6 and bars.index.tz is None  # daily dates
    hours = butler.get_latest("scheduled_stock_data", "AAPL", interval="1h")
    assert hours is not None and len(hours) == 7
    assert hours.index[0] == datetime(2025, 1, 10, 14, 30, tzinfo=UTC)  # 09:30 New York
    # running the daily job again leaves the hourly pointer alone, and vice versa
    ex.execute_job(make_spec("daily", tickers=["AAPL"], **WINDOW))
    assert any_redis.get("scheduled_stock_data:AAPL:1h:latest") == hourly_key
    assert any_redis.get("scheduled_stock_data:AAPL:latest") == daily_key
