"""`stocksched backfill` (issue 12, item 5): a job's series filled with long history.

End to end against a real redis-server: in-process (``main``) through yfinance's real
parser and the fake Yahoo (the Yahoo fetcher ``run-job`` would build is swapped for one
on the fake session, behind the shared Redis rate limiter), and as a subprocess with the
demo source for what users see: exit codes, output on a pipe or a terminal, Ctrl-C.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import redis

from stocksched.backfill import (
    BackfillUsageError,
    Chunk,
    check_reach,
    chunks_of,
    missing_ranges,
    recorded,
)
from stocksched.cli.commands import main
from stocksched.ratelimit import acquire_in_scope
from stocksched.sources.yahoo import YFinanceFetcher
from stocksched.storage import keys, seriescodec
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.ratelimit import RedisRateLimiter
from stocksched.storage.series import SeriesId, SeriesStore
from tests.helpers import run_cli
from tests.servers import RedisServer
from tests.yahoo_fake import AAPL, FakeYahoo, Reply, installed_fake, long_history_symbol

NY = ZoneInfo("America/New_York")
FIRST_TRADE = date(2016, 6, 1)
LAST_BAR = date(2026, 11, 27)
LONG = long_history_symbol("LONGCO", FIRST_TRADE, LAST_BAR)
OTHER = long_history_symbol("OTHERCO", date(2014, 1, 2), LAST_BAR)


class CountingLimiter:
    """The limiter ``Components`` built, counting the slots taken from it."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.acquired = inner, 0

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        self.acquired += 1
        return self.inner.acquire(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class LimitedFake(FakeYahoo):
    """The fake Yahoo behind the limiter, as the production session is (YahooSession)."""

    limiter: CountingLimiter | None = None

    def request(self, method: Any, url: str, params: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.limiter is not None:
            acquire_in_scope(self.limiter)
        return super().request(method, url, params, **kwargs)


def jobs_file(tmp_path: Path, tickers: str, extra: str = "", source: str = "yahoo") -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"""\
version: 1
jobs:
  - id: hist
    tickers: [{tickers}]
    schedule: "0 0 1 1 *"
    timezone: America/New_York
    source: {source}
    window: 30d
{extra}"""
    )
    return path


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LimitedFake]:
    """The fake Yahoo, installed as the Yahoo fetcher the command builds (with the
    limiter ``Components`` gives it: a Redis one, since a rate is set)."""
    session = LimitedFake((AAPL, LONG, OTHER))
    monkeypatch.setenv("STOCKSCHED_MAX_REQUESTS_PER_SECOND", "1000")
    monkeypatch.setenv("STOCKSCHED_STATE_DIR", str(tmp_path / "state"))
    with installed_fake(tmp_path / "yfinance", session):

        def fetcher(_cache: object, limiter: Any) -> YFinanceFetcher:
            session.limiter = CountingLimiter(limiter)
            return YFinanceFetcher(session=session)

        monkeypatch.setattr("stocksched.daemon.yahoo_fetcher", fetcher)
        yield session


@pytest.fixture(autouse=True)
def _root_logging_kept() -> Iterator[None]:
    """``main`` configures logging onto this test's captured stderr: undo that after."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def backfill(jobs: Path, url: str, *args: str) -> int:
    return main(["backfill", "hist", "--jobs", str(jobs), "--redis-url", url, *args])


def windows(fake: FakeYahoo, symbol: str) -> list[tuple[date, date]]:
    """The (first, last) days each history request of ``symbol`` asked for."""
    out = []
    for r in fake.chart_requests(symbol, history_only=True):
        p1, p2 = int(r.params["period1"]), int(r.params["period2"])
        first = datetime.fromtimestamp(p1, NY).date()
        last = datetime.fromtimestamp(p2, NY).date() - timedelta(days=1)
        assert datetime.fromtimestamp(p1, NY).time() == dtime(0)  # local midnights
        out.append((first, last))
    return out


def year_chunks(start: date, end: date) -> list[tuple[date, date]]:
    """365-day chunks from ``end`` back to ``start``, newest first."""
    out = []
    top = end
    while top >= start:
        bottom = max(start, top - timedelta(days=364))
        out.append((bottom, top))
        top = bottom - timedelta(days=1)
    return out


def stored(client: redis.Redis, ticker: str) -> tuple[dict[str, str], np.ndarray]:
    got = SeriesStore(RedisAdapter(client)).read(
        SeriesId("scheduled_stock_data", ticker, "1d"), None, None
    )
    return dict(got.meta), got.rows


# ---------------------------------------------------------------------------- the plan


def test_chunks_are_sized_per_interval_and_walked_newest_first() -> None:
    gaps = missing_ranges(date(2015, 1, 1), date(2017, 6, 30), {})
    assert gaps == [(date(2015, 1, 1), date(2017, 6, 30))]
    assert [(c.start, c.end) for c in chunks_of(gaps, "1d")] == year_chunks(
        date(2015, 1, 1), date(2017, 6, 30)
    )
    hourly = chunks_of([(date(2026, 1, 1), date(2026, 3, 31))], "1h")
    assert hourly == [
        Chunk(date(2026, 1, 31), date(2026, 3, 31)),
        Chunk(date(2026, 1, 1), date(2026, 1, 30)),
    ]
    minutes = chunks_of([(date(2026, 11, 20), date(2026, 12, 3))], "1m")
    assert minutes == [
        Chunk(date(2026, 11, 27), date(2026, 12, 3)),
        Chunk(date(2026, 11, 20), date(2026, 11, 26)),
    ]


def test_what_is_covered_or_backfilled_is_not_missing() -> None:
    meta = {
        "bars": "300",
        "covered_from": "2026-01-01",
        "backfilled": json.dumps([["2018-01-01", "2019-12-31"]]),
    }
    assert missing_ranges(date(2015, 1, 1), date(2026, 12, 3), meta) == [
        (date(2015, 1, 1), date(2017, 12, 31)),
        (date(2020, 1, 1), date(2025, 12, 31)),
    ]
    assert missing_ranges(date(2026, 2, 1), date(2026, 12, 3), meta) == []
    # covered_from of a series without bars covers nothing
    assert missing_ranges(date(2026, 2, 1), date(2026, 3, 1), {"covered_from": "2026-01-01"}) == [
        (date(2026, 2, 1), date(2026, 3, 1))
    ]


def test_covered_from_is_lowered_only_when_the_backfill_reaches_it() -> None:
    meta = {"covered_from": "2026-01-01", "bars": "10"}
    apart = recorded(meta, (date(2018, 1, 1), date(2019, 12, 31)))
    assert "covered_from" not in apart  # a gap stays between: scheduled runs keep theirs
    meta["backfilled"] = apart["backfilled"]
    joined = recorded(meta, (date(2020, 1, 1), date(2025, 12, 31)))
    assert joined["covered_from"] == "2018-01-01"
    assert json.loads(joined["backfilled"]) == [["2018-01-01", "2025-12-31"]]
    assert "covered_from" not in recorded(
        {"covered_from": "2015-01-01"}, (date(2016, 1, 1), date(2017, 1, 1))
    )
    assert recorded({}, (date(2016, 1, 1), date(2017, 1, 1)))["covered_from"] == "2016-01-01"


def test_intraday_start_beyond_yahoos_reach_is_refused() -> None:
    today = date(2026, 12, 3)
    check_reach("1h", today - timedelta(days=729), today)
    check_reach("1d", date(1990, 1, 1), today)
    with pytest.raises(
        BackfillUsageError,
        match=r"serves 1h bars for the last 730 days only \(use --start 2024-12-04",
    ):
        check_reach("1h", today - timedelta(days=730), today)
    with pytest.raises(BackfillUsageError, match="serves 1m bars for the last 7 days only"):
        check_reach("1m", today - timedelta(days=7), today)


# ---------------------------------------------------------------------------- through the fake Yahoo


def test_backfill_fetches_year_chunks_back_to_the_first_trade_and_equals_a_full_fetch(
    tmp_path: Path,
    fake: LimitedFake,
    real_redis: redis.Redis,
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = jobs_file(tmp_path, "LONGCO")
    code = backfill(
        jobs, redis_server.url, "--start", "2015-01-01", "--end", str(LAST_BAR), "--json"
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    expected = year_chunks(date(2015, 1, 1), LAST_BAR)
    # newest first, down to the chunk before the first trade (empty: the ticker is done)
    assert (
        windows(fake, "LONGCO")
        == expected[: expected.index(next(c for c in expected if c[1] < FIRST_TRADE)) + 1]
    )
    (report,) = out["tickers"]
    assert report["status"] == "done" and report["reached_first_trade"] is True
    assert report["chunks_fetched"] == len(windows(fake, "LONGCO")) - 1
    assert report["first_bar"] == "2016-06-01T00:00:00-04:00"
    meta, rows = stored(real_redis, "LONGCO")
    assert report["bars_stored"] == len(rows) == len(LONG.bars["1d"])
    # everything back to --start is recorded as filled: scheduled runs and re-runs ask nothing
    assert meta["covered_from"] == "2015-01-01"
    assert json.loads(meta["backfilled"]) == [["2015-01-01", str(LAST_BAR)]]
    assert meta["exchange"] == "XNAS"
    # every request took a slot of the shared Redis limiter
    assert isinstance(fake.limiter, CountingLimiter)
    assert isinstance(fake.limiter.inner, RedisRateLimiter)
    assert fake.limiter.acquired == len(fake.requests)

    full = YFinanceFetcher(session=fake).fetch_from_source("LONGCO", FIRST_TRADE, LAST_BAR, "1d")
    want = seriescodec.bars_from_frame(full).rows
    np.testing.assert_array_equal(rows, want)

    before = len(windows(fake, "LONGCO"))
    assert backfill(jobs, redis_server.url, "--start", "2015-01-01", "--end", str(LAST_BAR)) == 0
    assert len(windows(fake, "LONGCO")) == before  # nothing missing: no request
    assert "0 chunks fetched" in capsys.readouterr().out


def test_a_backfill_cut_short_by_timeouts_fetches_only_what_is_missing_when_run_again(
    tmp_path: Path,
    fake: FakeYahoo,
    real_redis: redis.Redis,
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = jobs_file(tmp_path, "LONGCO, OTHERCO", "    retries: 1\n    retry_backoff: 0s\n")
    fake.script("LONGCO", Reply.ok(), Reply.ok(), Reply.ok(), Reply.timeout(), Reply.timeout())
    assert (
        backfill(jobs, redis_server.url, "--start", "2019-01-01", "--end", str(LAST_BAR), "--json")
        == 3
    )
    out = json.loads(capsys.readouterr().out)
    longco, otherco = out["tickers"]
    assert longco["status"] == "failed" and "network error" in longco["error"]
    assert longco["chunks_fetched"] == 3 and otherco["status"] == "done"  # the others go on
    chunks = year_chunks(date(2019, 1, 1), LAST_BAR)
    assert windows(fake, "LONGCO") == [*chunks[:3], chunks[3], chunks[3]]  # a retry, then failed
    meta, _ = stored(real_redis, "LONGCO")
    assert meta["covered_from"] == str(chunks[2][0])

    fake.requests.clear()
    assert backfill(jobs, redis_server.url, "--start", "2019-01-01", "--end", str(LAST_BAR)) == 0
    assert windows(fake, "LONGCO") == chunks[3:]
    assert windows(fake, "OTHERCO") == []
    meta, rows = stored(real_redis, "LONGCO")
    assert meta["covered_from"] == "2019-01-01"
    assert len(rows) == sum(1 for b in LONG.bars["1d"] if b.start.date() >= date(2019, 1, 1))


class Interrupting:
    """A fetcher that raises KeyboardInterrupt (Ctrl-C) on its ``at``-th fetch."""

    def __init__(self, inner: YFinanceFetcher, at: int) -> None:
        self.inner, self.at, self.calls = inner, at, 0

    def fetch_from_source(self, ticker: str, start: date, end: date, interval: str) -> Any:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner.fetch_from_source(ticker, start, end, interval)


def test_ctrl_c_stops_cleanly_with_130_and_a_rerun_fetches_only_the_rest(
    tmp_path: Path,
    fake: FakeYahoo,
    real_redis: redis.Redis,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = jobs_file(tmp_path, "LONGCO, OTHERCO")
    interrupting = Interrupting(YFinanceFetcher(session=fake), at=4)
    monkeypatch.setattr("stocksched.daemon.yahoo_fetcher", lambda _c, _l: interrupting)
    assert backfill(jobs, redis_server.url, "--start", "2020-01-01", "--end", str(LAST_BAR)) == 130
    out = capsys.readouterr().out
    assert "0/2 tickers done, 3 chunks fetched" in out
    assert out.endswith("; interrupted: run it again to fetch what is still missing\n")
    chunks = year_chunks(date(2020, 1, 1), LAST_BAR)
    assert windows(fake, "LONGCO") == chunks[:3]
    assert windows(fake, "OTHERCO") == []  # not started
    meta, rows = stored(real_redis, "LONGCO")  # what was stored stays, and is recorded
    assert meta["covered_from"] == str(chunks[2][0])
    assert rows["ts"][0] == int(datetime.combine(chunks[2][0], dtime(0), NY).timestamp())

    fake.requests.clear()
    interrupting.at = 0
    assert backfill(jobs, redis_server.url, "--start", "2020-01-01", "--end", str(LAST_BAR)) == 0
    assert windows(fake, "LONGCO") == chunks[3:]
    assert windows(fake, "OTHERCO") == chunks


def test_a_backfill_joins_the_coverage_of_scheduled_runs_so_they_do_not_fetch_it_again(
    tmp_path: Path, fake: FakeYahoo, real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    from stocksched.daemon import Components
    from stocksched.jobs import load_jobs_file
    from stocksched.settings import load_settings

    jobs = jobs_file(tmp_path, "LONGCO")
    settings = load_settings(
        None, dict(os.environ), {"redis_url": redis_server.url, "jobs": str(jobs)}
    )
    c = Components(settings)
    (spec,) = load_jobs_file(jobs).jobs
    assert c.executor.execute_job(spec).status == "success"
    covered = date.fromisoformat(stored(real_redis, "LONGCO")[0]["covered_from"])
    fake.requests.clear()

    assert backfill(jobs, redis_server.url, "--start", "2024-01-01") == 0
    asked = windows(fake, "LONGCO")
    assert asked[0][1] == covered - timedelta(days=1)  # only what the run did not cover
    assert asked[-1][0] == date(2024, 1, 1)
    meta, _ = stored(real_redis, "LONGCO")
    assert meta["covered_from"] == "2024-01-01"

    # A longer window now lies inside the coverage: the next run does not fetch it again.
    fake.requests.clear()
    longer = spec.model_copy(update={"window": timedelta(days=600)})
    assert c.executor.execute_job(longer).status == "success"
    # (without the backfill, its start before covered_from would fetch all 600 days; with
    # it the series is fresh: no session closed since the last fetch, no request at all)
    assert windows(fake, "LONGCO") == []


def test_exit_codes_some_failed_3_all_failed_1(
    tmp_path: Path,
    fake: FakeYahoo,
    real_redis: redis.Redis,
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = jobs_file(tmp_path, "LONGCO, NOPE")
    assert backfill(jobs, redis_server.url, "--start", "2026-01-01", "--end", str(LAST_BAR)) == 3
    captured = capsys.readouterr()
    assert "stocksched: NOPE: unknown or delisted symbol (HTTP 404)" in captured.err
    assert "1/2 tickers done" in captured.out and "1 failed (NOPE)" in captured.out
    jobs = jobs_file(tmp_path, "NOPE, NADA")
    assert backfill(jobs, redis_server.url, "--start", "2026-01-01") == 1


# ---------------------------------------------------------------------------- as users run it


def test_unknown_job_bad_dates_and_intraday_beyond_reach_are_usage_errors(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    jobs = jobs_file(tmp_path, "AAPL", "    interval: 1h\n")
    url = ["--jobs", str(jobs), "--redis-url", redis_server.url]
    r = run_cli("backfill", "nope", "--start", "2015-01-01", *url, cwd=tmp_path)
    assert r.returncode == 2 and f"stocksched: no job 'nope' in {jobs} (jobs: hist)" in r.stderr
    r = run_cli("backfill", "hist", "--start", "2015-01-01", *url, cwd=tmp_path)
    assert (
        r.returncode == 2
        and "beyond Yahoo's reach: it serves 1h bars for the last 730 days" in r.stderr
    )
    r = run_cli("backfill", "hist", "--start", "2026-02-30", *url, cwd=tmp_path)
    assert r.returncode == 2 and "expected a date YYYY-MM-DD" in r.stderr
    r = run_cli(
        "backfill", "hist", "--start", "2026-03-01", "--end", "2026-02-01", *url, cwd=tmp_path
    )
    assert r.returncode == 2 and "is after --end" in r.stderr
    assert r.stdout == ""


def test_on_a_pipe_one_summary_line_and_no_progress_bar(
    tmp_path: Path, real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    jobs = jobs_file(tmp_path, "AAA, BBB", source="demo")
    args = ["backfill", "hist", "--start", "2020-01-01", "--end", "2026-11-30", "--jobs", str(jobs)]
    r = run_cli(*args, "--redis-url", redis_server.url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    weekdays = sum(1 for n in range(2526) if (date(2020, 1, 1) + timedelta(days=n)).weekday() < 5)
    assert r.stdout == (
        "backfill hist (1d, 2020-01-01..2026-11-30): 2/2 tickers done, 14 chunks fetched, "
        f"{2 * weekdays} bars stored\n"
    )
    assert r.stderr == ""


def test_on_a_terminal_a_progress_bar(
    tmp_path: Path, real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    jobs = jobs_file(tmp_path, "AAA", source="demo")
    leader, follower = pty.openpty()
    try:
        r = run_cli(
            "backfill", "hist", "--start", "2020-01-01", "--end", "2026-11-30", "--jobs", str(jobs),
            "--redis-url", redis_server.url, cwd=tmp_path, stderr=follower,
        )  # fmt: skip
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
    assert r.returncode == 0
    text = drawn.decode(errors="replace")
    assert "━" in text and "7/7" in text and "chunks" in text
    assert r.stdout.startswith("backfill hist (1d, 2020-01-01..2026-11-30): 1/1 tickers done")


def test_sigint_stops_a_running_backfill_with_130_and_a_rerun_completes_it(
    tmp_path: Path, real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    tickers = [f"T{i:02d}" for i in range(40)]
    jobs = jobs_file(tmp_path, ", ".join(tickers), source="demo")
    args = ["backfill", "hist", "--start", "2015-01-01", "--end", "2026-11-30", "--jobs", str(jobs)]
    args += ["--redis-url", redis_server.url, "--json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSCHED_")}
    env.update(HOME=str(tmp_path), STOCKSCHED_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "stocksched", *args], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while real_redis.scard(keys.series_index_key()) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    first = json.loads(out)
    assert first["interrupted"] is True and first["not_started"]
    done = sum(t["chunks_fetched"] for t in first["tickers"])
    total = len(tickers) * 12  # 2015-01-01 .. 2026-11-30: 12 chunks of a year at most

    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    second = json.loads(r.stdout)
    assert [t["ticker"] for t in second["tickers"]] == tickers
    again = sum(t["chunks_fetched"] for t in second["tickers"])
    assert done + again == total  # not one chunk fetched twice
    assert sum(t["chunks_planned"] for t in second["tickers"]) == again
