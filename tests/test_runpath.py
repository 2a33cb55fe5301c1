"""A run's bookkeeping in Redis: two scripts, the job's runtime fields in their own hash.

Issue 11: a scheduled run costs two Redis round trips for the scheduler's own bookkeeping
(claim + mark running; record + history + release), each atomic and fenced by the run's
lease; the runtime fields are updated without rewriting the spec JSON; every run shares
one ticker pool. These run against a real redis-server: they are about script semantics.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar

import pandas as pd
import pytest
import redis

from stocksched.executor import JobExecutor
from stocksched.metrics import Metrics
from stocksched.model import JobStatus, RunResult, RunStatus, Trigger
from stocksched.registry import JobRegistry
from stocksched.runids import scheduled_run_id
from stocksched.sources.base import Fetcher, PermanentFetchError
from stocksched.sources.demo import DemoFetcher
from stocksched.storage import keys, scripts
from stocksched.storage.adapter import RedisAdapter, connect
from stocksched.storage.butler import DataIOButler
from stocksched.storage.cluster import is_cluster
from stocksched.storage.jobs import JobRuntime
from stocksched.storage.leases import LeaseManager, MarkRunning
from tests.fakes import FakeClock
from tests.helpers import make_scheduler, make_spec
from tests.servers import RedisServer

SLOT = datetime(2026, 3, 2, 10, 5, tzinfo=UTC)
NEXT = SLOT + timedelta(minutes=5)


class NoData:
    """A source without data: the run touches Redis only for its own bookkeeping."""

    def fetch_from_source(self, ticker: str, start: date, end: date, interval: str) -> pd.DataFrame:
        raise PermanentFetchError(ticker, "no data")


class CountingConnection(redis.Connection):
    """Counts what goes over the wire: one ``send_packed_command`` is one round trip (a
    pipeline sends all its commands at once), with the first command's name."""

    sent: ClassVar[list[str]] = []

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        chunks = command if isinstance(command, list) else [command]
        head = b"".join(bytes(c) for c in chunks[:2]).decode(errors="replace")
        self.sent.append(head.split("\r\n")[2].lower())
        super().send_packed_command(command, check_health)


@pytest.mark.single_redis("counts one connection pool's sends; a cluster run costs 4 (README)")
def test_a_scheduled_run_costs_two_redis_round_trips_for_its_bookkeeping(
    redis_server: RedisServer, real_redis: redis.Redis
) -> None:
    pool = redis.ConnectionPool.from_url(
        redis_server.url, decode_responses=True, connection_class=CountingConnection
    )
    client: redis.Redis = redis.Redis(connection_pool=pool)
    clock = FakeClock(SLOT - timedelta(minutes=3))
    adapter = RedisAdapter(client)
    registry = JobRegistry(adapter, clock)
    no_data: dict[str, Fetcher] = {"demo": NoData()}
    # The bars go through a client of their own: what is counted is the bookkeeping.
    bars = DataIOButler(RedisAdapter(real_redis))
    executor = JobExecutor(no_data, bars, clock, 4, Metrics("t"))
    sched = make_scheduler(client, registry, executor, clock, pool_size=1)
    try:
        registry.reconcile([make_spec("a", tickers=["AAA"])])
        sched.set_jobs(registry.list_jobs())
        clock.set(SLOT)
        sched.tick()  # the first run loads the scripts; count a steady-state one
        assert sched.wait_idle(5)
        sched.flush_bookkeeping(5)
        CountingConnection.sent.clear()
        clock.set(NEXT)
        sched.tick()
        assert sched.wait_idle(5)
        sched.flush_bookkeeping(5)
        assert CountingConnection.sent == ["evalsha", "evalsha"]
    finally:
        sched.stop(1)
        client.close()
    job = registry.get_job("a")
    assert job is not None and job.status == JobStatus.FAILED  # the only ticker failed
    assert job.last_run is not None and job.next_run == NEXT + timedelta(minutes=5)
    assert [r.run_id for r in registry.get_runs("a")] == [
        scheduled_run_id("a", NEXT),
        scheduled_run_id("a", SLOT),
    ]


def _claim(leases: LeaseManager, mark: MarkRunning | None = None) -> object:
    return leases.try_claim(
        "a", scheduled_run_id("a", SLOT), scheduled_for=SLOT, started_at=SLOT, mark=mark
    )


def _result(status: RunStatus, finished: datetime) -> RunResult:
    return RunResult(
        "a", scheduled_run_id("a", SLOT), Trigger.SCHEDULE, SLOT, SLOT, finished, status
    )


def _setup(client: redis.Redis) -> tuple[JobRegistry, LeaseManager]:
    clock = FakeClock(SLOT - timedelta(minutes=1))
    registry = JobRegistry(RedisAdapter(client), clock)
    registry.reconcile([make_spec("a", tickers=["AAA"])])
    return registry, LeaseManager(RedisAdapter(client), "replica-a", 2000, clock=clock)


def test_the_claim_marks_the_job_running_with_its_next_slot_and_leaves_the_spec_alone(
    real_redis: redis.Redis,
) -> None:
    registry, leases = _setup(real_redis)
    spec_json = real_redis.get(keys.job_key("a"))

    res = _claim(leases, MarkRunning(NEXT))

    assert getattr(res, "lease", None) is not None
    job = registry.get_job("a")
    assert job is not None and job.status == JobStatus.RUNNING and job.next_run == NEXT
    assert real_redis.get(keys.job_key("a")) == spec_json  # not rewritten
    runtime = JobRuntime.from_json(str(real_redis.hget(keys.job_runtime_key(), "a")))
    assert runtime.status == JobStatus.RUNNING  # the gauges' projection follows


def test_a_claim_of_a_paused_job_marks_nothing(real_redis: redis.Redis) -> None:
    registry, leases = _setup(real_redis)
    registry.set_paused("a", True)
    before = real_redis.hgetall(keys.job_state_key("a"))

    res = _claim(leases, MarkRunning(NEXT))

    assert getattr(res, "lease", None) is None
    assert real_redis.hgetall(keys.job_state_key("a")) == before
    assert real_redis.exists(keys.running_key("a")) == 0


def test_a_failed_run_keeps_the_last_success_in_the_record_and_in_the_gauges(
    real_redis: redis.Redis,
) -> None:
    registry, leases = _setup(real_redis)
    first = _claim(leases, MarkRunning(NEXT))
    ok_at = SLOT + timedelta(seconds=2)
    assert registry.record_own_run(_result(RunStatus.SUCCESS, ok_at), first.lease.fence())  # type: ignore[attr-defined]
    second = leases.try_claim(
        "a", scheduled_run_id("a", NEXT), scheduled_for=NEXT, mark=MarkRunning(None)
    )
    failed_at = NEXT + timedelta(seconds=3)
    failed = RunResult(
        "a",
        scheduled_run_id("a", NEXT),
        Trigger.SCHEDULE,
        NEXT,
        NEXT,
        failed_at,
        RunStatus.FAILED,
    )

    assert second.lease is not None
    assert registry.record_own_run(failed, second.lease.fence())

    job = registry.get_job("a")
    assert job is not None and job.status == JobStatus.FAILED
    assert job.last_run == failed_at and job.last_success == ok_at
    assert job.last_result is not None and job.last_result["status"] == "failed"
    runtime = JobRuntime.from_json(str(real_redis.hget(keys.job_runtime_key(), "a")))
    assert runtime == JobRuntime(JobStatus.FAILED, failed_at.timestamp(), ok_at.timestamp())
    assert [r.status for r in registry.get_runs("a")] == [RunStatus.FAILED, RunStatus.SUCCESS]
    assert real_redis.exists(keys.running_key("a")) == 0
    assert leases.find_interrupted() == []


def test_a_run_of_a_job_removed_mid_run_keeps_its_history_and_ends_its_lease(
    real_redis: redis.Redis,
) -> None:
    registry, leases = _setup(real_redis)
    claimed = _claim(leases, MarkRunning(NEXT))
    registry.reconcile([])  # the job left jobs.yaml while it ran

    recorded = registry.record_own_run(
        _result(RunStatus.SUCCESS, SLOT + timedelta(seconds=1)),
        claimed.lease.fence(),  # type: ignore[attr-defined]
    )

    assert recorded is False
    assert [r.run_id for r in registry.get_runs("a")] == [scheduled_run_id("a", SLOT)]
    assert real_redis.exists(keys.job_state_key("a")) == 0  # no orphan state written
    assert real_redis.exists(keys.running_key("a")) == 0
    assert leases.find_interrupted() == []


def test_a_removed_and_re_added_job_gets_its_runtime_state_back(real_redis: redis.Redis) -> None:
    registry, leases = _setup(real_redis)
    claimed = _claim(leases, MarkRunning(NEXT))
    done_at = SLOT + timedelta(seconds=1)
    assert registry.record_own_run(_result(RunStatus.SUCCESS, done_at), claimed.lease.fence())  # type: ignore[attr-defined]

    registry.reconcile([])
    registry.reconcile([make_spec("a", tickers=["AAA"])])

    job = registry.get_job("a")
    assert job is not None and job.last_run == done_at and job.last_success == done_at
    assert job.status == JobStatus.COMPLETED


def test_a_record_written_by_an_older_version_reads_whole_and_is_migrated_on_write(
    real_redis: redis.Redis,
) -> None:
    """Before issue 11 the runtime fields were in the JSON and there was no state hash."""
    registry, _ = _setup(real_redis)
    job = registry.get_job("a")
    assert job is not None
    old = json.loads(job.to_json())
    old.update(status="completed", last_run=SLOT.isoformat(), last_success=SLOT.isoformat())
    real_redis.set(keys.job_key("a"), json.dumps(old))
    real_redis.delete(keys.job_state_key("a"))

    read = registry.get_job("a")
    assert read is not None and read.status == JobStatus.COMPLETED and read.last_run == SLOT

    registry.set_next_run("a", NEXT)

    stored = json.loads(str(real_redis.get(keys.job_key("a"))))
    assert "last_run" not in stored and "status" not in stored  # now in the state hash
    state = real_redis.hgetall(keys.job_state_key("a"))
    assert state["last_run"] == SLOT.isoformat() and state["next_run"] == NEXT.isoformat()
    again = registry.get_job("a")
    assert again is not None and again.last_success == SLOT and again.next_run == NEXT


def test_runs_share_one_ticker_pool_and_keep_their_own_concurrency(
    fake_redis: redis.Redis,
) -> None:
    """Two runs of 6 tickers at concurrency 2: never more than 2 of one run at once, and
    the threads are the shared pool's, not new ones per run."""
    active: dict[str, int] = {}
    peak: dict[str, int] = {}
    lock = threading.Lock()

    class Counting(DemoFetcher):
        def fetch_from_source(
            self, ticker: str, start: date, end: date, interval: str
        ) -> pd.DataFrame:
            job = ticker[0]
            with lock:
                active[job] = active.get(job, 0) + 1
                peak[job] = max(peak.get(job, 0), active[job])
            time.sleep(0.02)
            with lock:
                active[job] -= 1
            return super().fetch_from_source(ticker, start, end, interval)

    adapter = RedisAdapter(fake_redis)
    clock = FakeClock(SLOT)
    executor = JobExecutor(
        {"demo": Counting()}, DataIOButler(adapter), clock, 2, Metrics("t"), parallel_runs=2
    )
    specs = [make_spec(j, tickers=[f"{j.upper()}{i}" for i in range(6)]) for j in ("x", "y")]
    threads = [threading.Thread(target=executor.execute_job, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    results = [executor.execute_job(s) for s in specs]  # and again, one after the other

    assert all(r.status == RunStatus.SUCCESS for r in results)
    assert peak == {"X": 2, "Y": 2}
    names = {t.name for t in threading.enumerate() if t.name.startswith("ticker")}
    assert 1 <= len(names) <= 4, names
    assert not [t for t in threading.enumerate() if t.name.startswith("run-")]


@pytest.mark.parametrize("mark", [MarkRunning(NEXT), MarkRunning.keeping_next_run()])
def test_a_scheduled_claim_moves_next_run_and_a_manual_one_keeps_it(
    real_redis: redis.Redis, mark: MarkRunning
) -> None:
    registry, leases = _setup(real_redis)
    before = registry.get_job("a")
    assert before is not None
    first = _claim(leases, mark)
    assert getattr(first, "lease", None) is not None
    job = registry.get_job("a")
    assert job is not None and job.status == JobStatus.RUNNING
    assert job.next_run == (NEXT if mark.moves_next_run else before.next_run)


def test_a_manual_claim_given_back_leaves_the_job_pending_not_running(
    real_redis: redis.Redis,
) -> None:
    """``trigger`` claims (and marks running) before it re-checks the job; when the job
    left the config or the daemon began to stop meanwhile, the claim is given back."""
    registry, leases = _setup(real_redis)
    lease = leases.claim(
        "a", "a:manual:1", trigger=Trigger.MANUAL, mark=MarkRunning.keeping_next_run()
    )
    assert lease is not None
    job = registry.get_job("a")
    assert job is not None and job.status == JobStatus.RUNNING

    leases.finish(lease)
    registry.clear_running("a")

    job = registry.get_job("a")
    assert job is not None and job.status == JobStatus.PENDING
    assert real_redis.exists(keys.running_key("a")) == 0


class HeldRecorder(ThreadPoolExecutor):
    """The scheduler's recorder thread, kept busy until ``go`` is set: runs that end
    meanwhile wait for it together, as a burst's results do behind a round trip."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="recorder")
        self.go = threading.Event()
        self.submit(self.go.wait, 30)


class Burst:
    """Jobs a, b, c due at SLOT on one worker, their results held back from the recorder
    until ``release``; job d is due a minute later."""

    def __init__(self, redis_server: RedisServer) -> None:
        self.client: redis.Redis = connect(redis_server.url)  # a cluster's: uncounted
        if not is_cluster(self.client):
            pool = redis.ConnectionPool.from_url(
                redis_server.url, decode_responses=True, connection_class=CountingConnection
            )
            self.client = redis.Redis(connection_pool=pool)
        self.clock = FakeClock(SLOT - timedelta(minutes=3))
        adapter = RedisAdapter(self.client)
        self.registry = JobRegistry(adapter, self.clock)
        self.fetched = threading.Semaphore(0)

        class Counting(NoData):
            def fetch_from_source(
                _self, ticker: str, start: date, end: date, interval: str
            ) -> pd.DataFrame:
                self.fetched.release()
                return super().fetch_from_source(ticker, start, end, interval)

        no_data: dict[str, Fetcher] = {"demo": Counting()}
        executor = JobExecutor(no_data, DataIOButler(adapter), self.clock, 4, Metrics("t"))
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")
        self.recorder = HeldRecorder()
        self.leases = LeaseManager(adapter, "replica-test", clock=self.clock)
        self.sched = make_scheduler(
            self.client,
            self.registry,
            executor,
            self.clock,
            leases=self.leases,
            pool=self.pool,
            recorder=self.recorder,
        )
        specs = [make_spec(j, tickers=["AAA"]) for j in "abc"]
        self.registry.reconcile([*specs, make_spec("d", tickers=["AAA"], schedule="6 * * * *")])
        self.sched.set_jobs(self.registry.list_jobs())
        for script in (scripts.CLAIM, scripts.RECORD):
            self.client.script_load(script)

    def run_held(self) -> None:
        """Run a, b and c; return once all three bodies are over, results not recorded."""
        self.clock.set(SLOT)
        self.sched.tick()
        for _ in "abc":
            assert self.fetched.acquire(timeout=10)
        self.pool.submit(lambda: None).result(10)  # the one worker is past all three

    def release(self) -> None:
        CountingConnection.sent.clear()
        self.recorder.go.set()
        assert self.sched.wait_idle(10)
        self.sched.flush_bookkeeping(10)

    def close(self) -> None:
        self.recorder.go.set()
        self.sched.stop(1)
        self.pool.shutdown()
        self.client.close()


def _recorded(registry: JobRegistry, job_id: str) -> bool:
    job = registry.get_job(job_id)
    runs = registry.get_runs(job_id)
    return job is not None and job.status == JobStatus.FAILED and len(runs) == 1


@pytest.mark.single_redis("counts one connection pool's sends")
def test_results_that_end_together_are_recorded_in_one_round_trip(
    redis_server: RedisServer, real_redis: redis.Redis
) -> None:
    burst = Burst(redis_server)
    try:
        burst.run_held()
        burst.release()

        assert CountingConnection.sent == ["evalsha"]  # three RECORD scripts, one pipeline
        assert all(_recorded(burst.registry, j) for j in "abc")
        assert real_redis.exists(*(keys.running_key(j) for j in "abc")) == 0
        assert burst.leases.find_interrupted() == []
    finally:
        burst.close()


def test_a_lost_lease_in_a_batch_loses_that_run_alone(
    redis_server: RedisServer, real_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    burst = Burst(redis_server)
    try:
        burst.run_held()
        # b stalled past its lease: another replica took the job over meanwhile
        real_redis.hset(keys.running_key("b"), "owner", "replica-other/1.x")
        burst.release()

        assert _recorded(burst.registry, "a") and _recorded(burst.registry, "c")
        assert burst.registry.get_runs("b") == []  # nothing of b's run written
        assert real_redis.hget(keys.running_key("b"), "owner") == "replica-other/1.x"
        assert "lease lost job=b" in caplog.text
        assert not burst.sched.is_running("b")  # forgotten here all the same
    finally:
        burst.close()


@pytest.mark.parametrize("failure", ["out of memory", "unreachable"])
@pytest.mark.single_redis("sets maxmemory and requirepass with CONFIG SET on the one server")
def test_a_storage_failure_keeps_every_result_of_the_batch_for_later(
    redis_server: RedisServer, real_redis: redis.Redis, failure: str
) -> None:
    """Redis refuses each script (maxmemory) or the round trip fails (the connection is
    gone and cannot authenticate): all three results are kept, and written once Redis
    takes writes again, with the next result."""
    burst = Burst(redis_server)
    try:
        burst.run_held()
        if failure == "out of memory":
            real_redis.config_set("maxmemory", 1)
        else:
            real_redis.config_set("requirepass", "sesame")
            real_redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        burst.release()
        assert real_redis.exists(*(keys.runs_key(j) for j in "abc")) == 0  # none written

        real_redis.config_set("maxmemory", 0)
        real_redis.config_set("requirepass", "")
        burst.clock.set(SLOT + timedelta(minutes=1))  # d is due, past the retry backoff
        burst.sched.tick()
        assert burst.sched.wait_idle(10)
        burst.sched.flush_bookkeeping(10)

        assert all(_recorded(burst.registry, j) for j in "abcd")
        assert real_redis.exists(*(keys.running_key(j) for j in "abcd")) == 0
        assert burst.leases.find_interrupted() == []
    finally:
        real_redis.config_set("maxmemory", 0)
        real_redis.config_set("requirepass", "")
        burst.close()
