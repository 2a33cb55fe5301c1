"""The shared request limiter: one budget for every thread and process using one Redis.

The aggregate-rate tests check a correctness property (the budget holds across threads
and a second process), not speed: their bounds are deliberately loose.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import fakeredis
import pytest
import redis
import yfinance as yf
from redis.backoff import NoBackoff
from redis.retry import Retry

from stocksched.ratelimit import (
    NullRateLimiter,
    RateLimiter,
    RateLimitError,
    RateLimiterUnavailable,
    RateLimitTimeout,
    acquire_in_scope,
    request_scope,
)
from stocksched.retry import RetryPolicy
from stocksched.sources import TransientFetchError, YFinanceFetcher
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, connect
from stocksched.storage.ratelimit import RedisRateLimiter, build_rate_limiter
from tests.conftest import RedisServer, free_port
from tests.yahoo_fake import FakeYahoo, installed_fake

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
RATE = 20.0
SPAN_S = 1.5

# A second process sharing the limiter: says "ready", reads "start stop" (epoch seconds),
# acquires in 2 threads until stop and prints the grant times as JSON.
WORKER = """
import json, sys, threading, time
from stocksched.storage.adapter import RedisAdapter, connect
from stocksched.storage.ratelimit import RedisRateLimiter
url, rate, key = sys.argv[1], float(sys.argv[2]), sys.argv[3]
limiter = RedisRateLimiter(RedisAdapter(connect(url)), rate, key=key)
print("ready", flush=True)
start, stop = map(float, sys.stdin.readline().split())
stamps, lock = [], threading.Lock()
def work():
    while time.time() < start:
        time.sleep(0.001)
    while time.time() < stop:
        if limiter.acquire(timeout=max(0.0, stop - time.time())):
            now = time.time()
            if now < stop:
                with lock:
                    stamps.append(now)
threads = [threading.Thread(target=work) for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(stamps), flush=True)
"""


def grab(limiter: RedisRateLimiter, start: float, stop: float, n_threads: int) -> list[float]:
    """Grant times (epoch s) that ``n_threads`` threads get between start and stop."""
    stamps: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        while time.time() < start:
            time.sleep(0.001)
        while time.time() < stop:
            if limiter.acquire(timeout=max(0.0, stop - time.time())):
                now = time.time()
                if now < stop:
                    with lock:
                        stamps.append(now)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stamps


def assert_rate_holds(stamps: list[float], rate: float, span: float, burst: int = 1) -> None:
    stamps = sorted(stamps)
    allowed = burst + rate * span
    assert len(stamps) <= allowed + 1, f"{len(stamps)} grants in {span}s at {rate}/s"
    assert len(stamps) >= 0.75 * rate * span, f"only {len(stamps)} grants: limiter starves"
    # No one-second window holds (much) more than the rate.
    busiest = max(sum(1 for s in stamps if t <= s < t + 1.0) for t in stamps)
    assert busiest <= rate + burst + 1
    measured = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert 0.8 * rate <= measured <= 1.15 * rate


@pytest.mark.redis
def test_threads_and_a_second_process_share_one_budget(
    real_redis: redis.Redis,
    redis_server: RedisServer,
) -> None:
    key = keys.ratelimit_key("yahoo")
    child = subprocess.Popen(
        [sys.executable, "-c", WORKER, redis_server.url, str(RATE), key],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        start = time.time() + 0.2
        stop = start + SPAN_S
        child.stdin.write(f"{start} {stop}\n")
        child.stdin.flush()
        mine = grab(
            RedisRateLimiter(RedisAdapter(real_redis), RATE, key=key), start, stop, n_threads=3
        )
        theirs = json.loads(child.stdout.readline())
    finally:
        child.wait(timeout=30)

    assert mine and theirs, "both processes must get slots"
    assert_rate_holds(mine + theirs, RATE, SPAN_S)


def test_threads_share_one_budget_on_the_embedded_store(fake_redis: redis.Redis) -> None:
    start = time.time() + 0.05
    stamps = grab(RedisRateLimiter(RedisAdapter(fake_redis), RATE), start, start + 1.0, n_threads=4)

    assert_rate_holds(stamps, RATE, 1.0)


# ------------------------------------------------------------------ single-caller contract


def test_burst_is_granted_at_once_then_slots_are_spaced(any_redis: redis.Redis) -> None:
    limiter = RedisRateLimiter(RedisAdapter(any_redis), rate_per_s=10, burst=3)
    t0 = time.monotonic()
    for _ in range(3):
        assert limiter.acquire()
    burst_done = time.monotonic() - t0
    assert limiter.acquire()
    fourth = time.monotonic() - t0

    assert burst_done < 0.05
    assert 0.08 <= fourth < 0.5  # one interval (100 ms) after the burst


def test_a_short_timeout_returns_false_at_once_and_books_nothing(
    any_redis: redis.Redis,
) -> None:
    limiter = RedisRateLimiter(RedisAdapter(any_redis), rate_per_s=5)  # 200 ms per slot
    assert limiter.acquire()
    t0 = time.monotonic()

    assert limiter.acquire(timeout=0.01) is False
    assert time.monotonic() - t0 < 0.05  # no pointless sleeping up to the timeout
    # The refused call booked nothing: the next slot is still ~200 ms after the first.
    assert limiter.acquire(timeout=1.0)
    assert time.monotonic() - t0 < 0.35


def test_cancel_wakes_a_waiting_caller(any_redis: redis.Redis) -> None:
    limiter = RedisRateLimiter(RedisAdapter(any_redis), rate_per_s=0.5)  # 2 s per slot
    assert limiter.acquire()
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    t0 = time.monotonic()

    assert limiter.acquire(cancel=cancel) is False
    assert time.monotonic() - t0 < 1.0
    assert limiter.acquire(cancel=cancel) is False  # already set: no booking at all


def test_the_key_expires_and_follows_the_servers_clock(any_redis: redis.Redis) -> None:
    limiter = RedisRateLimiter(RedisAdapter(any_redis), rate_per_s=4)  # 250 ms per slot
    assert limiter.acquire()

    seconds, micros = any_redis.time()
    server_now_us = seconds * 1_000_000 + micros
    tat = int(str(any_redis.get(keys.ratelimit_key("yahoo"))))
    # The booked time is on the server's timeline (not this process's clock) ...
    assert 0 < tat - server_now_us <= 250_000
    # ... and the key goes away once the bucket is full again.
    assert 0 < any_redis.pttl(keys.ratelimit_key("yahoo")) <= 252


def test_limiters_with_different_keys_do_not_share(fake_redis: redis.Redis) -> None:
    a = RedisRateLimiter(RedisAdapter(fake_redis), 1, key=keys.ratelimit_key("a"))
    b = RedisRateLimiter(RedisAdapter(fake_redis), 1, key=keys.ratelimit_key("b"))

    assert a.acquire(timeout=0) and b.acquire(timeout=0)
    assert not a.acquire(timeout=0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_nonsense_settings_are_rejected(fake_redis: redis.Redis, rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RedisRateLimiter(RedisAdapter(fake_redis), rate, burst=burst)


# ------------------------------------------------------------------ Redis unreachable


def test_unreachable_redis_raises_rate_limiter_unavailable() -> None:
    client = redis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    limiter = RedisRateLimiter(RedisAdapter(client), RATE)

    with pytest.raises(RateLimiterUnavailable, match="scheduler:ratelimit:yahoo"):
        limiter.acquire()


@pytest.mark.redis
def test_limiter_recovers_when_redis_comes_back(tmp_path: Path) -> None:
    server = RedisServer(port=free_port(), dir=tmp_path)
    server.start()
    try:
        limiter = RedisRateLimiter(RedisAdapter(connect(server.url)), 100)
        assert limiter.acquire()
        server.stop()
        with pytest.raises(RateLimiterUnavailable):
            limiter.acquire()
        server.start()  # a fresh server: the script cache is empty too
        assert limiter.acquire()
    finally:
        server.stop()


# ------------------------------------------------------------------ helpers for the executor


def rate_limited(
    fn: Callable[[], T],
    limiter: RateLimiter,
    *,
    deadline: float | None = None,
    cancel: threading.Event | None = None,
) -> Callable[[], T]:
    """``fn`` behind a slot: each call first acquires one from ``limiter`` (test-only).

    For a source of one request per call; the product spends slots per HTTP request
    (``acquire_in_scope`` in the session, inside the executor's ``request_scope``).
    """

    def attempt() -> T:
        with request_scope(deadline, cancel):
            acquire_in_scope(limiter)
        return fn()

    return attempt


def test_no_limit_configured_gives_the_null_limiter(fake_redis: redis.Redis) -> None:
    assert isinstance(build_rate_limiter(RedisAdapter(fake_redis), None), NullRateLimiter)
    limiter = build_rate_limiter(RedisAdapter(fake_redis), 2.5)
    assert isinstance(limiter, RedisRateLimiter)
    assert limiter.key == "scheduler:ratelimit:yahoo"


def test_null_limiter_grants_unless_cancelled() -> None:
    cancel = threading.Event()
    assert NullRateLimiter().acquire(cancel=cancel)
    cancel.set()
    assert not NullRateLimiter().acquire(cancel=cancel)


class CountingLimiter:
    def __init__(self, grant: bool = True) -> None:
        self.grant = grant
        self.calls: list[float | None] = []

    def acquire(self, timeout: float | None = None, cancel: threading.Event | None = None) -> bool:
        self.calls.append(timeout)
        return self.grant and (cancel is None or not cancel.is_set())


def test_every_attempt_retries_included_spends_a_slot() -> None:
    limiter = CountingLimiter()
    errors = [TransientFetchError("AAPL", "HTTP 503"), TransientFetchError("AAPL", "HTTP 503")]

    def fetch() -> str:
        if errors:
            raise errors.pop(0)
        return "frame"

    result = RetryPolicy(3, 0.01).call(rate_limited(fetch, limiter), sleep=lambda _s: None)

    assert result == "frame"
    assert limiter.calls == [None, None, None]


def test_no_slot_before_the_deadline_fails_without_retrying() -> None:
    limiter = CountingLimiter(grant=False)
    fetched: list[str] = []
    deadline = time.monotonic() + 5

    with pytest.raises(RateLimitTimeout, match="deadline"):
        RetryPolicy(3, 0.01).call(
            rate_limited(lambda: fetched.append("x"), limiter, deadline=deadline),
            sleep=lambda _s: None,
            deadline=deadline,
        )

    assert fetched == []
    assert len(limiter.calls) == 1
    assert limiter.calls[0] is not None and 4 < limiter.calls[0] <= 5


def test_cancel_while_waiting_for_a_slot_says_so() -> None:
    cancel = threading.Event()
    cancel.set()
    limited = rate_limited(lambda: "x", NullRateLimiter(), cancel=cancel)

    with pytest.raises(RateLimitTimeout, match="cancelled"):
        limited()


def test_rate_limit_errors_share_a_base_the_executor_can_catch() -> None:
    assert issubclass(RateLimiterUnavailable, RateLimitError)
    assert issubclass(RateLimitTimeout, RateLimitError)
    assert not issubclass(RateLimitError, TransientFetchError)  # never retried in a run


def test_request_scope_bounds_the_waits_of_this_thread_only() -> None:
    limiter = CountingLimiter()
    cancel = threading.Event()
    seen: list[float | None] = []

    acquire_in_scope(limiter)  # outside any scope: wait as long as it takes
    with request_scope(deadline=time.monotonic() + 3, cancel=cancel):
        acquire_in_scope(limiter)
        other = threading.Thread(target=lambda: acquire_in_scope(limiter))
        other.start()
        other.join()
        seen.extend(limiter.calls)
        cancel.set()
        with pytest.raises(RateLimitTimeout, match="cancelled"):
            acquire_in_scope(limiter)
    acquire_in_scope(limiter)  # the scope is gone again

    assert seen[0] is None
    assert seen[1] is not None and 2 < seen[1] <= 3
    assert seen[2] is None  # another thread is not bound by this thread's scope
    assert limiter.calls[-1] is None


class GatedFakeYahoo(FakeYahoo):
    """The fake Yahoo with a limiter in front of every HTTP request, where the lead
    is advised to put it (``YahooSession.request``)."""

    def __init__(self, limiter: CountingLimiter) -> None:
        super().__init__()
        self.limiter = limiter

    def request(self, method: Any, url: str, params: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        acquire_in_scope(self.limiter)
        return super().request(method, url, params, **kwargs)


def test_one_yahoo_fetch_is_several_http_requests(tmp_path: Path) -> None:
    """Why the limiter belongs in the session: a per-fetch slot would let yfinance send
    two to four requests per slot (cookie and crumb once per process, then a time-zone
    probe per new symbol, then the chart)."""
    limiter = CountingLimiter()
    with installed_fake(tmp_path / "yf", GatedFakeYahoo(limiter)) as fake:
        fetcher = YFinanceFetcher(session=fake, timeout=5)
        fetcher.fetch_from_source("AAPL", date(2025, 1, 2), date(2025, 1, 10), "1d")
        first = len(limiter.calls)
        fetcher.fetch_from_source("MSFT", date(2025, 2, 18), date(2025, 2, 21), "1d")
        second = len(limiter.calls) - first

    assert first == 4
    assert [r.kind for r in fake.requests[:4]] == ["cookie", "crumb", "chart", "chart"]
    assert second == 2  # time-zone probe + chart
    assert [(r.kind, r.tz_lookup) for r in fake.requests[4:]] == [("chart", True), ("chart", False)]


def test_a_slot_timeout_passes_through_yfinance_unchanged(tmp_path: Path) -> None:
    limiter = CountingLimiter(grant=False)
    with (
        installed_fake(tmp_path / "yf", GatedFakeYahoo(limiter)) as fake,
        request_scope(deadline=time.monotonic() + 1),
        pytest.raises(RateLimitTimeout),
    ):
        yf.Ticker("AAPL", session=fake).history(start="2025-01-02", end="2025-01-11")

    assert fake.requests == []  # nothing was sent without a slot


def test_embedded_store_runs_the_script() -> None:
    """The daemon's ``memory://`` store is fakeredis with Lua: TIME must work there."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=False)

    assert RedisRateLimiter(RedisAdapter(client), 1000).acquire(timeout=0)
