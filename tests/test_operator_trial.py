"""Issue 8, in-process: slots neither dropped nor doubled across edits, pauses and replicas.

Each test drives real schedulers with a fake clock; the replica cases share one real
redis-server, since the guarantees rest on its scripts and transactions. The same
behaviour through daemon processes is in tests/test_operator_trial_e2e.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from stocksched.coordination import ReplicaHeartbeat
from stocksched.executor import JobExecutor
from stocksched.metrics import Metrics
from stocksched.model import JobStatus, RunStatus
from stocksched.outbox import StorageHealth
from stocksched.registry import JobRegistry
from stocksched.reload import JobsReloader
from stocksched.runids import scheduled_run_id
from stocksched.sources.demo import DemoFetcher
from stocksched.statesync import StateSync
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, StorageError
from stocksched.storage.butler import DataIOButler
from stocksched.storage.leases import LeaseManager
from tests.fakes import FakeClock
from tests.helpers import Rig, make_scheduler, make_spec

T0 = datetime(2026, 3, 2, 10, 0, 1, tzinfo=UTC)
EXECUTED = {RunStatus.SUCCESS, RunStatus.PARTIAL_SUCCESS, RunStatus.FAILED}


def slot(n: int) -> datetime:
    """The n-th ``@every 5s`` slot after 10:00:00 UTC."""
    return datetime(2026, 3, 2, 10, 0, tzinfo=UTC) + timedelta(seconds=5 * n)


# -- 1. removed from jobs.yaml and added back ----------------------------------------------


def test_a_job_removed_and_added_back_runs_each_slot_once(fake_redis: redis.Redis) -> None:
    r = Rig(fake_redis, FakeClock(T0))
    try:
        a, b = make_spec("a", schedule="@every 5s"), make_spec("b", schedule="@every 5s")
        r.load(a, b)
        r.at(slot(1))
        r.settle()
        r.load(b)  # saved without a ...
        r.clock.set(slot(1) + timedelta(seconds=1))
        r.load(a, b)  # ... and with a again, a second later
        for n in range(2, 7):
            r.at(slot(n))
            r.settle()

        runs = list(reversed(r.registry.get_runs("a", 50)))
        assert [(run.scheduled_for, run.status) for run in runs] == [
            (slot(n), RunStatus.SUCCESS) for n in range(1, 7)
        ]
    finally:
        r.scheduler.stop(1)


# -- 2. pause and resume through another replica -----------------------------------------------


class Replica:
    """A scheduler with its own lease manager and metrics, as a daemon wires one."""

    def __init__(self, client: redis.Redis, clock: FakeClock, name: str) -> None:
        adapter = RedisAdapter(client)
        self.metrics = Metrics("test")
        self.registry = JobRegistry(adapter, clock)
        self.health = StorageHealth(clock, self.metrics)
        executor = JobExecutor(
            {"demo": DemoFetcher()}, DataIOButler(adapter), clock, 2, self.metrics
        )
        self.scheduler = make_scheduler(
            client,
            self.registry,
            executor,
            clock,
            metrics=self.metrics,
            health=self.health,
            leases=LeaseManager(RedisAdapter(client), name),
        )
        # No jobs file: the tests reconcile directly, so the lost-state check stays idle.
        reloader = JobsReloader(Path("no-jobs-file.yaml"), self.registry, self.scheduler, clock)
        heartbeat = ReplicaHeartbeat(RedisAdapter(client), name, {}, clock=clock)
        self.sync = StateSync(
            self.registry, self.scheduler, reloader, heartbeat, self.health, adapter
        )

    def load(self, *specs: object) -> None:
        diff = self.registry.reconcile(specs)  # type: ignore[arg-type]
        self.scheduler.set_jobs(diff.records.values())

    def settle(self) -> None:
        assert self.scheduler.wait_idle(10)
        self.scheduler.flush_bookkeeping()

    def paused_gauge(self, job_id: str) -> float | None:
        return self.metrics.registry.get_sample_value("stocksched_job_paused", {"job": job_id})


@pytest.fixture
def pair(real_redis: redis.Redis) -> Iterator[tuple[Replica, Replica, FakeClock]]:
    clock = FakeClock(T0)
    a, b = Replica(real_redis, clock, "replica-a"), Replica(real_redis, clock, "replica-b")
    spec = make_spec("j", schedule="@every 5s", catchup="0s")
    a.load(spec)
    b.load(spec)
    yield a, b, clock
    a.scheduler.stop(1)
    b.scheduler.stop(1)


def executed(registry: JobRegistry) -> list[datetime | None]:
    return sorted(
        (r.scheduled_for for r in registry.get_runs("j", 100) if r.status in EXECUTED),
        key=lambda t: t or T0,
    )


def test_a_slot_never_starts_for_a_job_paused_through_another_replica(
    pair: tuple[Replica, Replica, FakeClock],
) -> None:
    a, b, clock = pair
    b.scheduler.set_paused("j", True)  # A has not heard of it: no sync ran

    clock.set(slot(1))
    a.scheduler.tick()
    b.scheduler.tick()
    a.settle()
    b.settle()

    assert executed(a.registry) == []  # the claim itself refused it
    assert a.scheduler.job_states()["j"] == JobStatus.PAUSED  # and A now knows
    assert a.paused_gauge("j") == 1


def test_pause_and_resume_reach_the_other_replica_with_one_sync(
    pair: tuple[Replica, Replica, FakeClock],
) -> None:
    a, b, clock = pair
    b.scheduler.set_paused("j", True)
    assert a.sync.tick() == ["j"]
    assert a.scheduler.job_states()["j"] == JobStatus.PAUSED
    assert a.paused_gauge("j") == 1
    assert a.scheduler.next_runs()["j"] is None

    for n in (1, 2):  # two slots pass while paused: nobody runs them
        clock.set(slot(n))
        a.scheduler.tick()
        b.scheduler.tick()
    clock.set(slot(2) + timedelta(seconds=1))
    b.scheduler.set_paused("j", False)
    assert a.sync.tick() == ["j"]
    assert a.paused_gauge("j") == 0
    for n in (3, 4):
        clock.set(slot(n))
        a.scheduler.tick()
        b.scheduler.tick()
        a.settle()
        b.settle()

    assert executed(a.registry) == [slot(3), slot(4)]
    missed = [r for r in a.registry.get_runs("j", 100) if r.status == RunStatus.MISSED]
    assert sorted(r.scheduled_for for r in missed if r.scheduled_for) == [slot(1), slot(2)]
    assert len({r.run_id for r in a.registry.get_runs("j", 100)}) == 4  # each slot once


def test_a_sync_read_older_than_a_local_pause_does_not_undo_it(
    pair: tuple[Replica, Replica, FakeClock],
) -> None:
    a, _b, _clock = pair
    epoch = a.scheduler.pause_epoch()
    stale = a.registry.paused_ids()  # read before the pause below
    a.scheduler.set_paused("j", True)

    assert a.scheduler.sync_paused(stale, epoch) == []
    assert a.scheduler.job_states()["j"] == JobStatus.PAUSED


def test_the_paused_set_follows_the_records_and_is_repaired_by_reconcile(
    real_redis: redis.Redis,
) -> None:
    registry = JobRegistry(RedisAdapter(real_redis), FakeClock(T0))
    spec = make_spec("j")
    registry.reconcile([spec])
    registry.set_paused("j", True)
    assert real_redis.smembers(keys.paused_index_key()) == {"j"}

    real_redis.delete(keys.paused_index_key())  # lost on its own
    registry.reconcile([spec])
    assert registry.paused_ids() == {"j"}

    registry.set_paused("j", False)
    assert registry.paused_ids() == set()
    registry.set_paused("j", True)
    registry.reconcile([])  # removed from the config: no stale pause left behind
    assert registry.paused_ids() == set()


def test_a_manual_trigger_still_runs_a_job_paused_elsewhere(
    pair: tuple[Replica, Replica, FakeClock],
) -> None:
    a, b, _clock = pair
    b.scheduler.set_paused("j", True)
    a.scheduler.trigger("j")
    a.settle()
    assert [r.status for r in a.registry.get_runs("j")] == [RunStatus.SUCCESS]


# -- 6. job-level gauges -------------------------------------------------------------------


def test_every_replica_reads_the_same_run_times_from_the_records(
    pair: tuple[Replica, Replica, FakeClock],
) -> None:
    a, b, clock = pair
    clock.set(slot(1))
    a.scheduler.tick()
    a.settle()  # A ran the slot; B never saw a run

    runtimes = b.registry.job_runtimes()
    record = b.registry.get_job("j")
    assert record is not None and record.last_run is not None
    assert runtimes["j"].last_run == record.last_run.timestamp()
    assert runtimes["j"].last_success == record.last_run.timestamp()
    assert runtimes["j"].status == JobStatus.COMPLETED
    assert scheduled_run_id("j", slot(1)) == b.registry.get_runs("j")[0].run_id


# -- 7. storage state -----------------------------------------------------------------------


def test_storage_state_says_down_since_when_and_why() -> None:
    clock = FakeClock(T0)
    health = StorageHealth(clock)
    assert health.state().up

    clock.set(T0 + timedelta(seconds=5))
    health.failed("claim slot job=j", StorageError("EVALSHA", "k", "Connection refused"))
    clock.set(T0 + timedelta(seconds=9))
    health.failed("again", StorageError("GET", "k", "Connection refused"))
    down = health.state()
    assert (down.up, down.since) == (False, T0 + timedelta(seconds=5))
    assert "claim slot job=j" in down.reason and "Connection refused" in down.reason

    health.ok()
    up = health.state()
    assert (up.up, up.since, up.reason) == (True, T0 + timedelta(seconds=9), "")
