"""The bar series a run keeps per ticker and interval (issue 12), through yfinance's parser.

Each test drives the executor the way a scheduled run does, against the offline Yahoo
(tests/yahoo_fake.py, which records every request's ``period1``/``period2``), on a
FakeClock, and reads back what was stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import redis
import yfinance as yf

from stocksched.calendars import MarketCalendars
from stocksched.executor import JobExecutor
from stocksched.metrics import Metrics
from stocksched.model import RunResult, RunStatus
from stocksched.sources.yahoo import YFinanceFetcher, clear_response_cache
from stocksched.storage import seriescodec
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.butler import DataIOButler
from stocksched.storage.series import SeriesId, SeriesStore
from tests.fakes import FakeClock
from tests.helpers import make_spec
from tests.yahoo_fake import Bar, FakeSymbol, FakeYahoo, installed_fake

NY = ZoneInfo("America/New_York")
PREFIX = "scheduled_stock_data"
SERIES = SeriesId(PREFIX, "SPLT", "1d")


def sessions(first: str, last: str) -> list[date]:
    cal = MarketCalendars().calendar("XNYS")
    return [d.date() for d in cal.sessions_in_range(first, last)]


def bars_for(days: list[date], scale: float = 1.0, adj: float = 1.0) -> tuple[Bar, ...]:
    """One bar per day; ``scale`` divides prices (a split's basis), ``adj`` scales Adj Close."""
    out = []
    for n, d in enumerate(days):
        c = (100.0 + n) / scale
        start = datetime.combine(d, time(9, 30), tzinfo=NY)
        out.append(Bar(start, c - 0.5 / scale, c + 1 / scale, c - 1 / scale, c, 1000 + n, c * adj))
    return tuple(out)


JAN = sessions("2025-01-02", "2025-01-31")  # 9 Jan: markets closed (national mourning)


def symbol(days: list[date] = JAN, **kw: object) -> FakeSymbol:
    return FakeSymbol("SPLT", bars={"1d": bars_for(days)}, **kw)  # type: ignore[arg-type]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeYahoo]:
    with installed_fake(tmp_path / "yfinance", FakeYahoo([symbol()])) as f:
        yield f


class Runs:
    """The same job run on given days, 18:00 New York (after the close)."""

    def __init__(self, client: redis.Redis, fake: FakeYahoo, **job: object) -> None:
        self.fake = fake
        self.clock = FakeClock(datetime(2025, 1, 15, 23, 0, tzinfo=ZoneInfo("UTC")))
        self.metrics = Metrics("test")
        self.butler = DataIOButler(RedisAdapter(client))
        self.store = SeriesStore(RedisAdapter(client))
        fetchers = {"yahoo": YFinanceFetcher(session=fake)}
        self.executor = JobExecutor(fetchers, self.butler, self.clock, 2, self.metrics)
        spec: dict[str, object] = {"tickers": ["SPLT"], "source": "yahoo", "window": "20d"}
        spec |= {"timezone": "America/New_York", **job}
        self.job = make_spec("daily", **spec)

    def run(self, day: str, at: time = time(18, 0)) -> RunResult:
        self.clock.set(datetime.combine(date.fromisoformat(day), at, tzinfo=NY))
        clear_response_cache()  # yfinance keeps answers in memory; each run asks anew
        self.fake.requests.clear()
        result = self.executor.execute_job(self.job)
        assert result.status == RunStatus.SUCCESS, result.errors
        return result

    def asked(self) -> list[tuple[date, date]]:
        """(first, last) local dates of this run's history requests."""
        out = []
        for r in self.fake.chart_requests("SPLT", history_only=True):
            p1, p2 = int(r.params["period1"]), int(r.params["period2"])
            last = datetime.fromtimestamp(p2, NY).date() - timedelta(days=1)
            out.append((datetime.fromtimestamp(p1, NY).date(), last))
        return out

    def series(self) -> pd.DataFrame:
        got = self.store.read(SERIES, None, None)
        return seriescodec.frame_of(got.rows, got.actions, got.meta["tz"])

    def meta(self) -> dict[str, str]:
        return dict(self.store.read(SERIES, None, None).meta)


def yahoo_history(fake: FakeYahoo, start: str, end: str) -> pd.DataFrame:
    """What a fresh full fetch through yfinance returns now."""
    clear_response_cache()
    frame = yf.Ticker("SPLT", session=fake).history(
        start=start, end=end, auto_adjust=False, actions=True
    )
    frame.index.name = "Date"
    return frame


def test_a_second_run_asks_only_for_the_tail(any_redis: redis.Redis, fake: FakeYahoo) -> None:
    runs = Runs(any_redis, fake)
    first = runs.run("2025-01-15")
    assert runs.asked() == [(date(2024, 12, 26), date(2025, 1, 15))]  # the whole window
    assert first.rows_stored == len([d for d in JAN if d <= date(2025, 1, 15)])
    second = runs.run("2025-01-16")
    # revise: 3 (the default) stored sessions again, then the new one
    assert runs.asked() == [(date(2025, 1, 13), date(2025, 1, 16))]
    assert second.rows_stored == 4
    stored = runs.series()
    assert list(stored.index.date) == [d for d in JAN if d <= date(2025, 1, 16)]
    assert stored.index.is_unique  # the re-fetched sessions replaced, never duplicated


def test_no_request_when_no_session_closed_since_the_last_fetch(
    any_redis: redis.Redis, fake: FakeYahoo
) -> None:
    runs = Runs(any_redis, fake)
    runs.run("2025-01-17")
    again = runs.run("2025-01-17", time(20, 0))  # same evening
    weekend = runs.run("2025-01-19")  # Sunday
    holiday = runs.run("2025-01-20", time(17, 0))  # Martin Luther King Jr. Day
    assert runs.asked() == []
    for result in (again, weekend, holiday):
        assert result.fresh_stocks == ["SPLT"] and result.fetched_stocks == ["SPLT"]
    assert runs.metrics.ticker_fetches.labels(job="daily", result="fresh").get() == 3
    runs.run("2025-01-21")  # a session closed: asked again
    assert runs.asked() == [(date(2025, 1, 15), date(2025, 1, 21))]


def test_a_split_rebases_the_whole_series(any_redis: redis.Redis, fake: FakeYahoo) -> None:
    runs = Runs(any_redis, fake)
    runs.run("2025-01-15")
    runs.run("2025-01-16")
    # A 2:1 split on 17 January: Yahoo now serves every earlier bar halved.
    before = [d for d in JAN if d < date(2025, 1, 17)]
    after = [d for d in JAN if d >= date(2025, 1, 17)]
    split = FakeSymbol(
        "SPLT",
        bars={"1d": bars_for(before, scale=2.0) + bars_for(after)[: len(after)]},
        splits=((date(2025, 1, 17), 2, 1),),
    )
    fake.add_symbol(split)
    result = runs.run("2025-01-17")
    # the tail showed the split; then the whole stored range was asked again
    assert runs.asked() == [
        (date(2025, 1, 14), date(2025, 1, 17)),
        (date(2024, 12, 26), date(2025, 1, 17)),
    ]
    assert runs.metrics.series_rebased.labels(job="daily").get() == 1
    full = yahoo_history(fake, "2024-12-26", "2025-01-18")
    pd.testing.assert_frame_equal(runs.series(), full, check_freq=False)
    assert result.rows_stored == len(full)
    assert runs.meta()["last_action"] == '{"date": "2025-01-17", "dividend": 0.0, "split": 2.0}'


def test_a_dividend_updates_adj_close_history(any_redis: redis.Redis, fake: FakeYahoo) -> None:
    runs = Runs(any_redis, fake)
    runs.run("2025-01-15")
    old_adj = runs.series()["Adj Close"].copy()
    # Ex-dividend on 16 January: Yahoo lowers Adj Close of every earlier bar.
    before = [d for d in JAN if d < date(2025, 1, 16)]
    after = [d for d in JAN if d >= date(2025, 1, 16)]
    fake.add_symbol(
        FakeSymbol(
            "SPLT",
            bars={"1d": bars_for(before, adj=0.99) + bars_for(JAN)[len(before) :][: len(after)]},
            dividends=((date(2025, 1, 16), 1.0),),
        )
    )
    runs.run("2025-01-16")
    full = yahoo_history(fake, "2024-12-26", "2025-01-17")
    stored = runs.series()
    pd.testing.assert_frame_equal(stored, full, check_freq=False)
    assert (stored["Adj Close"].iloc[: len(old_adj)] < old_adj.to_numpy()).all()
    assert stored.loc["2025-01-16", "Dividends"].item() == 1.0


def test_a_missing_session_is_asked_again_once_and_a_holiday_is_no_gap(
    any_redis: redis.Redis, fake: FakeYahoo
) -> None:
    gap = date(2025, 1, 7)
    fake.add_symbol(symbol([d for d in JAN if d != gap]))
    runs = Runs(any_redis, fake)
    first = runs.run("2025-01-15")
    assert first.missing_sessions == 1  # 7 Jan; not 9 Jan, when the exchange was closed
    assert runs.meta()["missing"] == '["2025-01-07"]'
    assert runs.metrics.missing_sessions.labels(job="daily").get() == 1
    runs.run("2025-01-16")  # asked again from the gap on
    assert runs.asked() == [(gap, date(2025, 1, 16))]
    runs.run("2025-01-17")  # still missing: reported, not asked for again
    assert runs.asked() == [(date(2025, 1, 14), date(2025, 1, 17))]
    assert runs.meta()["missing"] == '["2025-01-07"]'
    # Yahoo fills it later: the next run that asks back far enough heals the series.
    fake.add_symbol(symbol())
    runs.job = runs.job.model_copy(update={"revise": 10})
    healed = runs.run("2025-01-21")
    assert healed.missing_sessions == 0 and runs.meta()["missing"] == "[]"
    assert gap in set(runs.series().index.date)


def test_window_keys_keep_the_original_format_and_are_whole(
    any_redis: redis.Redis, fake: FakeYahoo
) -> None:
    runs = Runs(any_redis, fake)
    runs.run("2025-01-15")
    runs.run("2025-01-16")  # only the tail fetched; the window is written from the series
    key = f"{PREFIX}:SPLT:2024-12-27:2025-01-16"
    assert any_redis.get(f"{PREFIX}:SPLT:latest") == key
    window = runs.butler.get_data(PREFIX, "SPLT", "2024-12-27", "2025-01-16", tz="America/New_York")
    assert window is not None
    assert list(window.columns) == list(DataIOButler_window_columns())
    assert list(window.index.date) == [d for d in JAN if d <= date(2025, 1, 16)]
    first = any_redis.get(key)
    assert first is not None and first.startswith('[{"Date":"2025-01-02","Open":99.5,')


def DataIOButler_window_columns() -> tuple[str, ...]:
    from stocksched.storage.butler import WINDOW_COLUMNS

    return WINDOW_COLUMNS


def test_windows_false_writes_only_the_series(any_redis: redis.Redis, fake: FakeYahoo) -> None:
    runs = Runs(any_redis, fake, windows=False)
    runs.run("2025-01-15")
    assert any_redis.get(f"{PREFIX}:SPLT:latest") is None
    assert len(runs.series()) == len([d for d in JAN if d <= date(2025, 1, 15)])


def test_a_revised_bar_replaces_the_stored_one(any_redis: redis.Redis, fake: FakeYahoo) -> None:
    runs = Runs(any_redis, fake)
    runs.run("2025-01-15")
    revised = list(bars_for(JAN))
    i = JAN.index(date(2025, 1, 14))
    revised[i] = replace(revised[i], volume=123_456)  # Yahoo revised a recent volume
    fake.add_symbol(FakeSymbol("SPLT", bars={"1d": tuple(revised)}))
    runs.run("2025-01-16")
    stored = runs.series()
    assert stored.loc["2025-01-14", "Volume"].item() == 123_456
    assert len(stored) == len([d for d in JAN if d <= date(2025, 1, 16)])


def test_intraday_gaps_are_sessions_without_a_bar_in_their_hours() -> None:
    import numpy as np

    from stocksched.sessions import Sessions

    xnys = Sessions(MarketCalendars(), "XNYS")

    def at(day: str, hhmm: str) -> int:
        return int(datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=NY).timestamp())

    # 1h bars on 6, 8 and 10 January; none on the 7th; the 9th the exchange was closed.
    bars = [("06", "09:30"), ("06", "15:30"), ("08", "10:30"), ("08", "20:00"), ("10", "09:30")]
    ts = np.array([at(f"2025-01-{d}", t) for d, t in bars])
    assert xnys.missing(ts, "America/New_York", intraday=True) == [date(2025, 1, 7)]
    # A bar outside the session's hours (after-hours) does not make the session present.
    ts = np.array([at("2025-01-06", "09:30"), at("2025-01-07", "18:00"), at("2025-01-08", "09:30")])
    assert xnys.missing(ts, "America/New_York", intraday=True) == [date(2025, 1, 7)]


def test_every_mapped_yahoo_exchange_has_a_calendar() -> None:
    import exchange_calendars

    from stocksched.sessions import YAHOO_EXCHANGES, calendar_code

    names = set(exchange_calendars.get_calendar_names())
    assert set(YAHOO_EXCHANGES.values()) <= names
    assert calendar_code(None, "NMS") == "XNAS" and calendar_code("XLON", "NMS") == "XLON"
    assert calendar_code(None, "SOMEWHERE") is None  # unknown: always fetched, never judged
