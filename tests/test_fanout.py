"""One run's tickers fanned out over replicas (``fanout: true``, issue 14), in-process.

Three replicas are three executors with their own Redis connections, fan-out workers and
demo sources (with a per-ticker delay standing in for the network), on one real
redis-server. What a user relies on: every ticker of the run is fetched and stored
once, each replica fetches a share, the run's result says how many, the run is faster
than on one replica, and a replica that dies holding tickers loses none of them.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import date
from typing import Any

import pandas as pd
import pytest
import redis

from stocksched.clock import SystemClock
from stocksched.executor import JobExecutor
from stocksched.fanout import Fanned, FanoutRuns, TickerRun, decode, encode
from stocksched.fanoutworker import FanoutWorker
from stocksched.metrics import Metrics
from stocksched.model import RunResult, RunStatus
from stocksched.sources.demo import DemoFetcher
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, connect
from stocksched.storage.butler import DataIOButler
from stocksched.storage.fanout import FanoutRun, FanoutStore
from stocksched.storage.leases import LeaseManager
from stocksched.tickers import TickerOutcome
from tests.helpers import make_spec
from tests.servers import RedisServer

TICKERS = [f"T{i:03d}" for i in range(1, 301)]
DELAY_S = 0.08  # per ticker: the network this stands in for


class CountingDemo:
    """The demo source, counting the tickers this replica fetched; ``hang`` blocks every
    fetch until set (a replica that stopped making progress, as if killed)."""

    def __init__(self, delay_s: float, hang: threading.Event | None = None) -> None:
        self._demo = DemoFetcher(latency_s=delay_s)
        self._hang = hang
        self.fetched: Counter[str] = Counter()
        self._lock = threading.Lock()

    def fetch_from_source(self, ticker: str, start: date, end: date, interval: str) -> pd.DataFrame:
        with self._lock:
            self.fetched[ticker] += 1
        if self._hang is not None:
            self._hang.wait()
            raise ConnectionError("this replica is dead")
        return self._demo.fetch_from_source(ticker, start, end, interval)


class Replica:
    def __init__(self, url: str, name: str, source: CountingDemo, idle_s: float = 30.0) -> None:
        self.name = name
        self.source = source
        adapter = RedisAdapter(connect(url))
        store = FanoutStore(adapter, reclaim_idle_ms=int(idle_s * 1000))
        self.executor = JobExecutor(
            {"demo": source},
            DataIOButler(adapter),
            SystemClock(),
            4,
            Metrics("test"),
            fanout=FanoutRuns(store, name, 4),
        )
        self.worker = FanoutWorker(store, self.executor, name, 4)


@pytest.fixture
def replicas(redis_server: RedisServer, real_redis: redis.Redis) -> Iterator[list[Replica]]:
    made: list[Replica] = []

    def make(name: str, source: CountingDemo | None = None, **kw: Any) -> Replica:
        replica = Replica(redis_server.url, name, source or CountingDemo(DELAY_S), **kw)
        made.append(replica)
        return replica

    yield make  # type: ignore[misc]
    for replica in made:
        replica.worker.stop()


def _job(prefix: str) -> Any:
    return make_spec(
        "wide", tickers=TICKERS, prefix=prefix, fanout=True, windows=False, timeout="60s"
    )


def _stored(client: redis.Redis, prefix: str) -> set[str]:
    """The tickers whose series the fenced write has stored (its meta hash exists)."""
    pipe = client.pipeline(transaction=False)
    for ticker in TICKERS:
        pipe.exists(keys.series_key(prefix, ticker, "1d", "meta"))
    return {t for t, n in zip(TICKERS, pipe.execute(), strict=True) if n}


def _timed_run(owner: Replica, prefix: str) -> tuple[RunResult, float]:
    t0 = time.perf_counter()
    job = _job(prefix)
    result = owner.executor.execute_job(job, run_id=f"wide:{prefix}", timeout=job.timeout)
    return result, time.perf_counter() - t0


def test_three_replicas_share_a_run_and_store_every_ticker_once(
    replicas: Any, real_redis: redis.Redis
) -> None:
    alone = replicas("alone")
    single, single_s = _timed_run(alone, "one")
    a, b, c = replicas("a"), replicas("b"), replicas("c")
    for r in (a, b, c):
        r.worker.start()

    seen: list[tuple[int, int] | None] = []
    ended = threading.Event()
    watch = threading.Thread(target=_watch_progress, args=(a, "wide:three", seen, ended))
    watch.start()
    try:
        fanned, fanned_s = _timed_run(a, "three")
    finally:
        ended.set()
        watch.join(5)

    assert single.status == fanned.status == RunStatus.SUCCESS
    assert _stored(real_redis, "three") == set(TICKERS)
    fetches = a.source.fetched + b.source.fetched + c.source.fetched
    assert fetches == Counter(TICKERS)  # each ticker fetched exactly once, none lost
    # Each replica fetched a share, and the result says which.
    assert fanned.fetched_by == {r.name: sum(r.source.fetched.values()) for r in (a, b, c)}
    assert all(n > 0 for n in fanned.fetched_by.values())
    assert single.fetched_by == {"alone": 300}
    # Three hosts' worth of fetching: well under half the time of one (same test run).
    assert fanned_s <= 0.5 * single_s, (fanned_s, single_s)
    assert real_redis.keys("scheduler:fanout*") == []  # the run's stream is gone
    # The owner's page shows the run's progress on every replica ("running 120 of 300").
    progress = [p for p in seen if p is not None]
    assert progress and all(total == 300 for _, total in progress)
    assert any(0 < done < 300 for done, _ in progress)
    assert a.executor.progress(fanned.run_id) is None  # it ended


def _watch_progress(owner: Replica, run_id: str, seen: list[Any], ended: threading.Event) -> None:
    """Sample the owner's progress of its run until the run ends."""
    while not ended.wait(0.05):
        seen.append(owner.executor.progress(run_id))


def test_a_replica_dead_with_tickers_taken_loses_none(
    replicas: Any, real_redis: redis.Redis
) -> None:
    dead = threading.Event()
    doomed = replicas("doomed", CountingDemo(DELAY_S, hang=dead), idle_s=0.5)
    owner, other = replicas("owner", idle_s=0.5), replicas("other", idle_s=0.5)
    doomed.worker.start()
    other.worker.start()
    job = make_spec(
        "wide", tickers=TICKERS[:60], prefix="kill", fanout=True, windows=False, timeout="60s"
    )
    try:
        result = owner.executor.execute_job(job, timeout=job.timeout)
    finally:
        doomed.worker.stop()  # it never acknowledges what it took
        dead.set()

    taken = set(doomed.source.fetched)
    assert taken  # it did take tickers, and never stored them ...
    assert result.status == RunStatus.SUCCESS  # ... yet the run lost none:
    assert sorted(result.fetched_stocks) == TICKERS[:60]
    assert _stored(real_redis, "kill") == set(TICKERS[:60])
    assert "doomed" not in result.fetched_by
    assert sum(result.fetched_by.values()) == 60
    assert set(owner.source.fetched + other.source.fetched) >= taken  # reclaimed by others


def _settled(client: redis.Redis, prefix: str) -> set[str]:
    """What is stored once nothing is in flight any more (late writes would show)."""
    time.sleep(0.5)
    return _stored(client, prefix)


def test_a_fanned_out_run_stores_nothing_on_any_replica_once_its_lease_is_lost(
    replicas: Any, real_redis: redis.Redis
) -> None:
    owner, b, c = replicas("owner"), replicas("b"), replicas("c")
    for r in (b, c):
        r.worker.start()
    claim = LeaseManager(RedisAdapter(real_redis), "owner", 60_000).try_claim("wide", "wide:1")
    assert claim.lease is not None
    fence = claim.lease.fence()
    job = make_spec(
        "wide", tickers=TICKERS[:90], prefix="fenced", fanout=True, windows=False, timeout="60s"
    )
    done: list[RunResult] = []
    run = threading.Thread(
        target=lambda: done.append(
            owner.executor.execute_job(job, run_id="wide:1", fence=fence, timeout=job.timeout)
        )
    )
    run.start()
    wait_until(lambda: len(_stored(real_redis, "fenced")) >= 15)
    # Another replica takes the job over (this run's owner stalled past its lease).
    real_redis.hset(keys.running_key("wide"), "owner", "thief/1")
    stored_when_lost = _stored(real_redis, "fenced")  # any write after the steal is refused
    run.join(30)

    [result] = done
    assert result.status != RunStatus.SUCCESS
    assert any("lost its lease" in e for e in result.errors.values())
    assert _settled(real_redis, "fenced") == stored_when_lost  # no replica wrote after
    assert len(stored_when_lost) < 90
    assert set(result.fetched_stocks) <= stored_when_lost


def test_a_fanned_out_run_ends_at_its_timeout_on_every_replica(
    replicas: Any, real_redis: redis.Redis
) -> None:
    owner, other = replicas("owner"), replicas("other")
    other.worker.start()
    job = make_spec(
        "wide", tickers=TICKERS, prefix="late", fanout=True, windows=False, timeout="1s"
    )

    result = owner.executor.execute_job(job, timeout=job.timeout)

    assert result.status == RunStatus.FAILED and result.reason == "timeout after 0:00:01"
    assert 0 < len(result.fetched_stocks) < len(TICKERS)
    stored, fetched = _settled(real_redis, "late"), set(result.fetched_stocks)
    assert fetched <= stored
    # Beyond what it reports, at most the tickers in flight at the deadline were stored
    # (4 a replica): the rest of the run is never fetched, on either replica.
    assert len(stored - fetched) <= 8
    assert sum(r.source.fetched.total() for r in (owner, other)) <= len(fetched) + 8
    assert real_redis.keys("scheduler:fanout*") == []


def test_a_ticker_every_replica_dies_on_is_dead_lettered_as_its_failure(
    real_redis: redis.Redis,
) -> None:
    """Every replica that takes T001 dies with it: after N = 3 deliveries it is given
    up, and the run ends without waiting for its timeout, T001 failed."""
    store = FanoutStore(RedisAdapter(real_redis), reclaim_idle_ms=100)
    job = make_spec("wide", tickers=["T001"], fanout=True)
    task = TickerRun(
        job, "wide:1", date(2026, 1, 5), date(2026, 1, 9), None, threading.Event(), None
    )
    done: list[Fanned] = []
    owner = threading.Thread(
        target=lambda: done.append(
            # The owner takes no ticker itself here (its consumers are not started).
            FanoutRuns(store, "owner", 4).run(task, _never, lambda fn: _finished())
        )
    )
    owner.start()
    run = _wait_published(store)
    assert store.take(run, "dies-1")  # delivery 1
    for n in (2, 3):
        time.sleep(0.15)
        assert store.reclaim(run, f"dies-{n}")  # deliveries 2 and 3
    time.sleep(0.15)
    assert store.reclaim(run, "would-be-4th") == []
    owner.join(10)

    assert not owner.is_alive()
    [fanned] = done
    assert "dead-lettered" in fanned.outcomes["T001"].error
    assert fanned.fetched_by == {} and not fanned.cut_short
    assert real_redis.keys("scheduler:fanout*") == []


def _never(ticker: str) -> TickerOutcome:
    raise AssertionError("the owner's consumers were not started")


def _finished() -> Future[None]:
    future: Future[None] = Future()
    future.set_result(None)
    return future


def _wait_published(store: FanoutStore) -> FanoutRun:
    for _ in range(100):
        runs = store.active()
        if runs:
            return runs[0]
        time.sleep(0.02)
    raise AssertionError("the run was never published")


def wait_until(pred: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def test_an_outcome_from_another_version_is_read_as_far_as_it_is_known() -> None:
    """Replicas of two versions share a run during a rolling upgrade."""
    raw = encode(TickerOutcome("AAA", rows=5, fresh=True), "new-replica")
    newer = json.dumps({**json.loads(raw), "field_of_a_later_version": 1})

    assert decode(newer) == (TickerOutcome("AAA", rows=5, fresh=True), "new-replica")


@pytest.mark.single_redis("counts commands with INFO commandstats of the one server")
def test_an_idle_replica_polls_for_fanned_out_runs_with_one_read(
    replicas: Any, real_redis: redis.Redis
) -> None:
    """Every daemon polls for fanned-out runs five times a second: idle, that must cost
    Redis one read a poll."""
    worker = replicas("idle").worker
    real_redis.config_resetstat()
    for _ in range(3):
        worker.poll()

    calls = {k: v["calls"] for k, v in real_redis.info("commandstats").items()}
    assert calls.get("cmdstat_zrange") == 3
    handshake = {"cmdstat_hello", "cmdstat_ping", "cmdstat_client|setinfo"}
    assert set(calls) - handshake <= {
        "cmdstat_zrange",
        "cmdstat_config|resetstat",
        "cmdstat_info",
    }
