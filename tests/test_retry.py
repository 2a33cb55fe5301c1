"""RetryPolicy: full-jitter backoff maths, Retry-After, what is (not) retried, deadlines.

The last tests run yfinance's real request-and-parse code against the offline Yahoo
(tests/yahoo_fake.py), so "429 then 200" is the exception chain a run really sees.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from stocksched.retry import MAX_RETRY_AFTER_S, RetryPolicy
from stocksched.sources import PermanentFetchError, TransientFetchError, YFinanceFetcher
from tests.yahoo_fake import FakeYahoo, Reply, installed_fake


class Script:
    """A callable that raises the queued errors in turn, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class Sleeps(list[float]):
    """An injected ``sleep`` that only records; tests never really wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def transient(retry_after: float | None = None) -> TransientFetchError:
    return TransientFetchError("AAPL", "rate limited by Yahoo (HTTP 429)", retry_after)


# ------------------------------------------------------------------ backoff maths


def test_full_jitter_stays_within_the_exponential_ceiling() -> None:
    policy = RetryPolicy(
        retries=8, backoff=timedelta(seconds=1), max_backoff=30, rng=random.Random(7)
    )

    for attempt, ceiling in enumerate([1, 2, 4, 8, 16, 30, 30, 30]):
        assert policy.ceiling(attempt) == ceiling
        draws = [policy.delay(attempt) for _ in range(300)]
        assert all(0 <= d <= ceiling for d in draws)
        # FULL jitter: the draws spread over the whole range, not just near the top.
        assert min(draws) < 0.1 * ceiling
        assert max(draws) > 0.9 * ceiling


def test_jitter_is_reproducible_with_a_fixed_rng() -> None:
    a = RetryPolicy(3, 0.5, rng=random.Random(42))
    b = RetryPolicy(3, 0.5, rng=random.Random(42))

    assert [a.delay(n) for n in range(5)] == [b.delay(n) for n in range(5)]


def test_a_huge_attempt_number_is_capped_not_overflowing() -> None:
    policy = RetryPolicy(retries=3, backoff=2.0, max_backoff=60, rng=random.Random(1))

    assert policy.ceiling(10_000) == 60
    assert 0 <= policy.delay(10_000) <= 60


def test_retry_after_is_a_floor_on_the_delay() -> None:
    policy = RetryPolicy(retries=3, backoff=0.1, rng=random.Random(3))

    assert all(policy.delay(0, retry_after=2.0) >= 2.0 for _ in range(100))
    # Retry-After does not cut a longer jittered delay short either.
    long = RetryPolicy(retries=3, backoff=100, max_backoff=100, rng=random.Random(3))
    delays = [long.delay(0, retry_after=1.0) for _ in range(100)]
    assert all(1.0 <= d <= 100 for d in delays)
    assert max(delays) > 50


def test_an_absurd_retry_after_is_cut_to_the_documented_maximum() -> None:
    policy = RetryPolicy(retries=3, backoff=0.1, rng=random.Random(3))

    assert policy.delay(0, retry_after=86_400) == MAX_RETRY_AFTER_S == 300.0


def test_backoff_accepts_a_job_duration() -> None:
    assert RetryPolicy(2, timedelta(milliseconds=1500)).ceiling(1) == 3.0


@pytest.mark.parametrize("args", [(-1, 1.0), (1, -1.0)])
def test_nonsense_is_rejected(args: tuple[int, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(*args)


# ------------------------------------------------------------------ what is retried


def test_transient_failures_are_retried_until_success() -> None:
    fn = Script(transient(), transient())
    sleeps = Sleeps()
    retried: list[tuple[int, float]] = []

    result = RetryPolicy(3, 1.0, rng=random.Random(5)).call(
        fn, sleep=sleeps, on_retry=lambda n, exc, wait: retried.append((n, wait))
    )

    assert result == "ok"
    assert fn.calls == 3
    assert [n for n, _ in retried] == [1, 2]
    assert [w for _, w in retried] == sleeps
    assert 0 <= sleeps[0] <= 1.0
    assert 0 <= sleeps[1] <= 2.0


def test_retry_after_is_honoured_when_waiting() -> None:
    sleeps = Sleeps()

    RetryPolicy(2, 0.01, rng=random.Random(5)).call(Script(transient(4.0)), sleep=sleeps)

    assert len(sleeps) == 1
    assert sleeps[0] >= 4.0


@pytest.mark.parametrize(
    "error",
    [
        PermanentFetchError("ZZZZ", "unknown or delisted symbol (HTTP 404)"),
        ValueError("a bug"),
        KeyError("x"),
    ],
    ids=["permanent", "value-error", "key-error"],
)
def test_anything_but_transient_propagates_at_once(error: Exception) -> None:
    fn = Script(error)
    sleeps = Sleeps()

    with pytest.raises(type(error)):
        RetryPolicy(5, 1.0).call(fn, sleep=sleeps)

    assert fn.calls == 1
    assert sleeps == []


def test_exhausted_retries_reraise_the_last_error() -> None:
    last = transient(0.5)
    fn = Script(transient(), transient(), last, transient())

    with pytest.raises(TransientFetchError) as caught:
        RetryPolicy(2, 0.1).call(fn, sleep=Sleeps())

    assert caught.value is last
    assert fn.calls == 3  # the first attempt and 2 retries


def test_zero_retries_means_one_attempt() -> None:
    fn = Script(transient())

    with pytest.raises(TransientFetchError):
        RetryPolicy(0, 1.0).call(fn, sleep=Sleeps())

    assert fn.calls == 1


# ------------------------------------------------------------------ deadline and cancel


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_no_sleep_past_the_deadline_raises_the_last_error_instead() -> None:
    clock = FakeMonotonic()
    sleeps = Sleeps()
    last = transient(retry_after=30)
    fn = Script(last)

    with pytest.raises(TransientFetchError) as caught:
        RetryPolicy(5, 0.1).call(fn, sleep=sleeps, deadline=clock.now + 10, clock=clock)

    assert caught.value is last
    assert sleeps == []
    assert fn.calls == 1


def test_retries_continue_while_they_fit_before_the_deadline() -> None:
    clock = FakeMonotonic()
    fn = Script(*[transient(retry_after=3) for _ in range(10)])

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)

    with pytest.raises(TransientFetchError):
        RetryPolicy(10, 0.001, rng=random.Random(1)).call(
            fn, sleep=sleep, deadline=clock.now + 10, clock=clock
        )

    # waits of ~3 s at t=0, 3, 6 fit; the one at t~9 would pass t=10
    assert fn.calls == 4
    assert clock.now < 1010


def test_a_set_cancel_stops_retrying() -> None:
    cancel = threading.Event()
    cancel.set()
    fn = Script(transient())
    sleeps = Sleeps()

    with pytest.raises(TransientFetchError):
        RetryPolicy(5, 0.1).call(fn, sleep=sleeps, cancel=cancel)

    assert fn.calls == 1
    assert sleeps == []


def test_cancel_during_the_wait_wakes_it_and_raises() -> None:
    cancel = threading.Event()
    fn = Script(transient(retry_after=60))
    threading.Timer(0.05, cancel.set).start()

    with pytest.raises(TransientFetchError):
        RetryPolicy(5, 0.1).call(fn, cancel=cancel)  # real wait on the event

    assert fn.calls == 1


def test_cancel_set_by_an_injected_sleep_stops_before_the_next_attempt() -> None:
    cancel = threading.Event()
    fn = Script(transient(), transient())

    with pytest.raises(TransientFetchError):
        RetryPolicy(5, 0.1).call(fn, sleep=lambda _s: cancel.set(), cancel=cancel)

    assert fn.calls == 1


# ------------------------------------------------------------------ through yfinance

WINDOW = (date(2025, 1, 2), date(2025, 1, 10), "1d")


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeYahoo]:
    with installed_fake(tmp_path / "yfinance") as session:
        yield session


def fetch_call(
    fetcher: YFinanceFetcher, ticker: str, calls: list[str]
) -> Callable[[], pd.DataFrame]:
    def fetch() -> pd.DataFrame:
        calls.append(ticker)
        return fetcher.fetch_from_source(ticker, *WINDOW)

    return fetch


def test_429_with_retry_after_then_200_succeeds_after_waiting_retry_after(
    fake: FakeYahoo,
) -> None:
    fake.script_attempts("AAPL", Reply.rate_limited(2), Reply.ok())
    fetcher = YFinanceFetcher(session=fake, timeout=5)
    calls: list[str] = []
    sleeps = Sleeps()
    retried: list[Exception] = []

    frame = RetryPolicy(3, 0.1, rng=random.Random(0)).call(
        fetch_call(fetcher, "AAPL", calls),
        sleep=sleeps,
        on_retry=lambda _n, exc, _w: retried.append(exc),
    )

    assert len(frame) == 6
    assert calls == ["AAPL", "AAPL"]
    assert len(sleeps) == 1 and sleeps[0] >= 2.0
    assert isinstance(retried[0], TransientFetchError) and retried[0].retry_after == 2.0
    # First attempt: 429, and yfinance's own repeat of it (it repeats any status >= 400
    # once); second attempt: 200. The time-zone probe before them is asked only once.
    assert len(fake.chart_requests("AAPL", history_only=True)) == 3
    assert sum(r.tz_lookup for r in fake.chart_requests("AAPL")) == 1


def test_a_delisted_symbol_is_tried_once(fake: FakeYahoo) -> None:
    fetcher = YFinanceFetcher(session=fake, timeout=5)
    calls: list[str] = []
    sleeps = Sleeps()

    with pytest.raises(PermanentFetchError):
        RetryPolicy(5, 0.1).call(fetch_call(fetcher, "ZZZZ", calls), sleep=sleeps)

    assert calls == ["ZZZZ"]
    assert sleeps == []


def test_a_server_error_that_persists_exhausts_the_retries(fake: FakeYahoo) -> None:
    fake.always("AAPL", Reply.server_error(503))
    fetcher = YFinanceFetcher(session=fake, timeout=5)
    calls: list[str] = []

    with pytest.raises(TransientFetchError, match="HTTP 503"):
        RetryPolicy(2, 0.1).call(fetch_call(fetcher, "AAPL", calls), sleep=Sleeps())

    assert calls == ["AAPL"] * 3
