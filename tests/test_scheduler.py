"""JobScheduler driven by a fake clock: fires at the right instants, never twice at once."""

from __future__ import annotations

import gc
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from stocksched.executor import JobExecutor
from stocksched.metrics import Metrics
from stocksched.model import JobStatus, RunStatus
from stocksched.registry import JobRegistry, UnknownJobError
from stocksched.scheduling.claims import JobBusyError
from stocksched.scheduling.gcsettle import EVERY_S, GcSettler
from stocksched.sources.demo import DemoFetcher
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.butler import DataIOButler
from tests.fakes import FakeClock
from tests.helpers import Rig, make_scheduler, make_spec

T0 = datetime(2026, 3, 2, 10, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "tz", "expected"),
    [
        (
            "*/5 * * * *",
            "UTC",
            [datetime(2026, 3, 2, 10, 5, tzinfo=UTC), datetime(2026, 3, 2, 10, 10, tzinfo=UTC)],
        ),
        (
            "@every 90s",
            "UTC",
            [
                datetime(2026, 3, 2, 10, 3, 0, tzinfo=UTC),
                datetime(2026, 3, 2, 10, 4, 30, tzinfo=UTC),
            ],
        ),
        (
            "10:30",
            "America/New_York",
            [datetime(2026, 3, 2, 15, 30, tzinfo=UTC), datetime(2026, 3, 3, 15, 30, tzinfo=UTC)],
        ),
    ],
)
def test_fires_exactly_at_slots(
    fake_redis: redis.Redis, schedule: str, tz: str, expected: list[datetime]
) -> None:
    r = Rig(fake_redis, FakeClock(T0))
    try:
        r.load(make_spec("a", schedule=schedule, timezone=tz))
        for slot in expected:
            assert r.at(slot - timedelta(milliseconds=1)) == slot  # not yet: wake at slot
            assert not r.scheduler.is_running("a")
            r.at(slot)
            r.settle()
        runs = r.registry.get_runs("a", 10)
        assert [run.scheduled_for for run in reversed(runs)] == expected
        assert all(run.status == RunStatus.SUCCESS for run in runs)
        job = r.registry.get_job("a")
        assert job is not None and job.last_run is not None
        assert job.next_run is not None and job.next_run > expected[-1]
        assert job.status == JobStatus.COMPLETED
    finally:
        r.scheduler.stop(1)


def test_run_ids_are_deterministic_per_slot(rig: Rig) -> None:
    rig.load(make_spec("a"))
    slot = datetime(2026, 3, 2, 10, 5, tzinfo=UTC)
    rig.at(slot)
    rig.settle()
    assert rig.registry.get_runs("a")[0].run_id == f"a:{int(slot.timestamp() * 1000)}"


def test_slot_while_running_is_skipped_and_recorded(fake_redis: redis.Redis) -> None:
    r = Rig(fake_redis, FakeClock(T0), latency=0.4)
    try:
        r.load(make_spec("a", schedule="@every 1s", tickers=["AAA"]))
        r.at(T0 + timedelta(seconds=1))
        assert r.scheduler.is_running("a")
        r.at(T0 + timedelta(seconds=2))  # previous run still going
        r.settle()
        runs = r.registry.get_runs("a")
        assert sorted(run.status for run in runs) == [RunStatus.SKIPPED, RunStatus.SUCCESS]
        assert r.metrics.job_missed_runs.labels(job="a").get() == 1
    finally:
        r.scheduler.stop(1)


def test_paused_and_disabled_jobs_do_not_fire(rig: Rig) -> None:
    rig.load(make_spec("a"), make_spec("b", enabled=False))
    rig.scheduler.set_paused("a", True)
    rig.at(T0 + timedelta(hours=1))
    rig.settle()
    assert rig.registry.get_runs("a") == [] and rig.registry.get_runs("b") == []
    assert rig.scheduler.job_states() == {"a": JobStatus.PAUSED, "b": JobStatus.PAUSED}
    rig.scheduler.set_paused("a", False)  # resume schedules from now on
    assert rig.scheduler.next_runs()["a"] == datetime(2026, 3, 2, 11, 5, tzinfo=UTC)


def test_manual_trigger_does_not_move_next_run(fake_redis: redis.Redis) -> None:
    r = Rig(fake_redis, FakeClock(T0), latency=0.3)
    try:
        r.load(make_spec("a", tickers=["AAA"]))
        before = r.scheduler.next_runs()["a"]
        run_id = r.scheduler.trigger("a")
        with pytest.raises(JobBusyError):
            r.scheduler.trigger("a")
        r.settle()
        runs = r.registry.get_runs("a")
        assert [x.run_id for x in runs] == [run_id]
        assert runs[0].trigger == "manual" and runs[0].scheduled_for is None
        assert r.scheduler.next_runs()["a"] == before
        job = r.registry.get_job("a")
        assert job is not None and job.next_run == before
        with pytest.raises(UnknownJobError):
            r.scheduler.trigger("nope")
    finally:
        r.scheduler.stop(1)


def test_set_jobs_keeps_unchanged_next_run_and_drops_removed(rig: Rig) -> None:
    rig.load(make_spec("a"), make_spec("b", schedule="0 * * * *"))
    nxt = rig.scheduler.next_runs()
    rig.clock.advance(60)
    rig.load(make_spec("a"), make_spec("c"))
    after = rig.scheduler.next_runs()
    assert after["a"] == nxt["a"]
    assert "b" not in after and "c" in after


def test_loop_thread_wakes_at_due_time_with_real_clock(fake_redis: redis.Redis) -> None:
    from stocksched.clock import SystemClock

    adapter = RedisAdapter(fake_redis)
    clock = SystemClock()
    registry = JobRegistry(adapter, clock)
    executor = JobExecutor(
        {"demo": DemoFetcher()}, DataIOButler(adapter), clock, 4, Metrics("test")
    )
    sched = make_scheduler(fake_redis, registry, executor, clock, pool_size=2)
    registry.reconcile([make_spec("a", schedule="@every 1s", tickers=["AAA"])])
    sched.set_jobs(registry.list_jobs())
    sched.start()
    try:
        time.sleep(2.6)
    finally:
        left = sched.stop(5)
    assert left == []
    runs = registry.get_runs("a")
    assert 2 <= len(runs) <= 3
    for run in runs:
        assert run.scheduled_for is not None
        lateness = (run.started_at - run.scheduled_for).total_seconds()
        assert 0 <= lateness < 0.9, lateness


def test_a_slot_won_by_another_replica_leaves_the_job_state_alone(
    fake_redis: redis.Redis,
) -> None:
    from stocksched.runids import scheduled_run_id
    from stocksched.storage.leases import LeaseManager

    clock = FakeClock(T0)
    adapter = RedisAdapter(fake_redis)
    registry = JobRegistry(adapter, clock)
    executor = JobExecutor(
        {"demo": DemoFetcher()}, DataIOButler(adapter), clock, 4, Metrics("test")
    )
    sched = make_scheduler(fake_redis, registry, executor, clock, pool_size=1, owner="replica-b")
    try:
        registry.reconcile([make_spec("a", tickers=["AAA"])])
        sched.set_jobs(registry.list_jobs())
        slot = datetime(2026, 3, 2, 10, 5, tzinfo=UTC)
        other = LeaseManager(RedisAdapter(fake_redis), "replica-a", clock=clock)
        assert other.claim_slots([scheduled_run_id("a", slot)]) == [True]
        clock.set(slot)
        sched.tick()
        assert sched.wait_idle(5)
        assert sched.job_states() == {"a": JobStatus.PENDING}  # nothing ran here
        assert registry.get_runs("a") == []  # and nothing was recorded twice
    finally:
        sched.stop(1)


def test_full_gc_passes_are_moved_to_idle_moments_not_bursts() -> None:
    """Frozen objects are not walked by the collector's full passes (a 10,000-job heap
    took 40-100 ms a pass, under the GIL): the settler freezes once jobs are loaded and
    collects + freezes again only while idle, at most every ``EVERY_S``."""
    clock = FakeClock(T0)
    settler = GcSettler(clock)
    try:
        gc.unfreeze()
        settler.freeze()
        assert gc.get_freeze_count() > 0
        gc.unfreeze()

        clock.advance(EVERY_S)
        settler.idle(clock.now() + timedelta(milliseconds=200), busy=False)  # due soon
        settler.idle(None, busy=True)  # a run in progress
        assert gc.get_freeze_count() == 0

        settler.idle(None, busy=False)
        assert gc.get_freeze_count() > 0
        gc.unfreeze()
        clock.advance(EVERY_S / 2)
        settler.idle(None, busy=False)  # settled lately
        assert gc.get_freeze_count() == 0
        clock.advance(EVERY_S / 2)
        settler.idle(clock.now() + timedelta(seconds=5), busy=False)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
