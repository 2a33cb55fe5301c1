"""Issue-5 slot policies on a fake clock: catch-up, overlap, timeout, calendar, DST, jitter."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis

from stocksched.model import RunStatus
from stocksched.scheduling.slots import jitter_offset
from stocksched.storage import keys
from tests.fakes import FakeClock
from tests.helpers import Rig, make_spec

T0 = datetime(2026, 3, 2, 10, 2, tzinfo=UTC)
NY = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")


def statuses(rig: Rig, job_id: str = "a") -> list[tuple[datetime | None, RunStatus]]:
    runs = rig.registry.get_runs(job_id, 1000)
    return sorted(((r.scheduled_for, r.status) for r in runs), key=lambda x: x[0] or T0)


def drive(rig: Rig, until: datetime) -> None:
    """Advance the fake clock from fire time to fire time, as the loop thread would."""
    nxt = rig.scheduler.tick()
    while nxt is not None and nxt <= until:
        rig.clock.set(nxt)
        nxt = rig.scheduler.tick()
        rig.settle()


@pytest.mark.parametrize(("catchup", "ran"), [("1h", True), ("0", False), ("3m", False)])
def test_catch_up_after_three_hour_downtime(
    fake_redis: redis.Redis, catchup: str, ran: bool
) -> None:
    spec = make_spec("a", schedule="*/10 * * * *", catchup=catchup, tickers=["AAA"])
    first = Rig(fake_redis, FakeClock(T0))
    first.load(spec)  # persisted next_run = 10:10
    first.scheduler.stop(1)  # the daemon goes down at 10:02 ...
    restarted = Rig(fake_redis, FakeClock(T0 + timedelta(hours=3, minutes=3)))  # ... up 13:05
    try:
        restarted.load(spec)
        restarted.scheduler.tick()
        restarted.settle()
        got = statuses(restarted)
        slots = [T0.replace(minute=10) + timedelta(minutes=10 * i) for i in range(18)]
        assert [s for s, _ in got] == slots  # 10:10 ... 13:00, each exactly once
        runs = [s for s, st in got if st == RunStatus.SUCCESS]
        missed = [s for s, st in got if st == RunStatus.MISSED]
        assert runs == ([slots[-1]] if ran else [])
        assert len(missed) == (17 if ran else 18)
        assert restarted.metrics.job_missed_runs.labels(job="a").get() == len(missed)
        assert restarted.scheduler.next_runs()["a"] == T0.replace(hour=13, minute=10)
        job = restarted.registry.get_job("a")
        assert job is not None and job.next_run == T0.replace(hour=13, minute=10)
    finally:
        restarted.scheduler.stop(1)


def test_resume_catches_up_like_a_restart(rig: Rig) -> None:
    rig.load(make_spec("a", schedule="*/10 * * * *", tickers=["AAA"]))
    rig.scheduler.set_paused("a", True)
    drive(rig, T0 + timedelta(minutes=45))
    assert statuses(rig) == []
    rig.clock.set(T0 + timedelta(minutes=45))
    rig.scheduler.set_paused("a", False)
    rig.scheduler.tick()
    rig.settle()
    got = statuses(rig)
    assert [st for _, st in got] == [RunStatus.MISSED] * 3 + [RunStatus.SUCCESS]
    assert got[-1][0] == T0.replace(minute=40)


def test_overlap_queue_runs_once_after_the_current_run(fake_redis: redis.Redis) -> None:
    r = Rig(fake_redis, FakeClock(T0), latency=0.5)
    try:
        r.load(make_spec("a", schedule="@every 1s", tickers=["AAA"], overlap="queue"))
        base = T0 + timedelta(seconds=1)
        r.clock.set(base)
        r.scheduler.tick()
        r.at(base + timedelta(seconds=1))  # queued
        r.at(base + timedelta(seconds=2))  # replaces the queued one
        r.settle()
        r.settle()  # the queued run starts when the first finishes
        got = statuses(r)
        assert got == [
            (base, RunStatus.SUCCESS),
            (base + timedelta(seconds=1), RunStatus.SKIPPED),
            (base + timedelta(seconds=2), RunStatus.SUCCESS),
        ]
    finally:
        r.scheduler.stop(1)


def test_timeout_fails_the_run_and_frees_the_job(fake_redis: redis.Redis) -> None:
    r = Rig(fake_redis, FakeClock(T0), latency=1.5)
    try:
        r.load(make_spec("a", tickers=["AAA", "BBB"], timeout="200ms"))
        t = time.monotonic()
        r.at(T0.replace(minute=5))
        assert r.scheduler.wait_idle(1.2), "the job was not freed at its timeout"
        assert time.monotonic() - t < 1.4
        r.settle()
        run = r.registry.get_runs("a")[0]
        assert run.status == RunStatus.FAILED
        assert run.reason.startswith("timeout")
        assert run.failed_stocks == ["AAA", "BBB"]
        assert set(run.errors) == {"AAA", "BBB"}
        time.sleep(1.5)  # the abandoned fetches finish and must not store anything
        assert not fake_redis.exists(keys.latest_key("scheduled_stock_data", "AAA"))
        r.at(T0.replace(minute=10))  # and the next slot runs normally
        assert r.scheduler.is_running("a")
    finally:
        r.scheduler.stop(3)


def test_calendar_skips_an_exchange_holiday(rig: Rig) -> None:
    # 2026-12-25 (Friday) is a NYSE holiday; Monday 2026-12-28 is a session.
    rig.clock.set(datetime(2026, 12, 24, 18, 0, tzinfo=NY))
    rig.load(
        make_spec(
            "a",
            schedule="0 17 * * 1-5",
            timezone="America/New_York",
            calendar="XNYS",
            tickers=["AAA"],
        )
    )
    drive(rig, datetime(2026, 12, 28, 17, 0, tzinfo=NY))
    got = statuses(rig)
    assert got == [
        (datetime(2026, 12, 25, 17, 0, tzinfo=NY), RunStatus.SKIPPED),
        (datetime(2026, 12, 28, 17, 0, tzinfo=NY), RunStatus.SUCCESS),
    ]
    assert "market closed" in rig.registry.get_runs("a")[-1].reason


DST_CASES = [
    # (timezone, schedule, drive from, drive to, expected fire instants in UTC)
    (
        "America/New_York",
        "30 2 * * *",
        datetime(2026, 3, 7, 12, tzinfo=UTC),
        datetime(2026, 3, 9, 12, tzinfo=UTC),
        ["2026-03-08T07:00:00+00:00", "2026-03-09T06:30:00+00:00"],
    ),  # gap: 03:00 EDT, once
    (
        "America/New_York",
        "30 1 * * *",
        datetime(2026, 10, 31, 12, tzinfo=UTC),
        datetime(2026, 11, 2, 12, tzinfo=UTC),
        ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"],
    ),  # overlap: first only
    (
        "Europe/London",
        "30 1 * * *",
        datetime(2026, 3, 28, 12, tzinfo=UTC),
        datetime(2026, 3, 30, 12, tzinfo=UTC),
        ["2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00"],
    ),  # gap: 02:00 BST
    (
        "Europe/London",
        "30 1 * * *",
        datetime(2026, 10, 24, 12, tzinfo=UTC),
        datetime(2026, 10, 26, 12, tzinfo=UTC),
        ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"],
    ),  # overlap: BST one
    (
        "UTC",
        "30 1 * * *",
        datetime(2026, 3, 7, 12, tzinfo=UTC),
        datetime(2026, 3, 9, 12, tzinfo=UTC),
        ["2026-03-08T01:30:00+00:00", "2026-03-09T01:30:00+00:00"],
    ),  # UTC unaffected
]


@pytest.mark.parametrize(("tz", "schedule", "start", "end", "expected"), DST_CASES)
def test_dst_transitions_fire_exactly_once(
    fake_redis: redis.Redis,
    tz: str,
    schedule: str,
    start: datetime,
    end: datetime,
    expected: list[str],
) -> None:
    r = Rig(fake_redis, FakeClock(start))
    try:
        r.load(make_spec("a", schedule=schedule, timezone=tz, tickers=["AAA"]))
        drive(r, end)
        fired = [
            s.astimezone(UTC).isoformat()
            for s, st in statuses(r)
            if st == RunStatus.SUCCESS and s is not None
        ]
        assert fired == expected
        assert all(st == RunStatus.SUCCESS for _, st in statuses(r))
    finally:
        r.scheduler.stop(1)


def test_jitter_is_bounded_and_the_same_on_every_replica(rig: Rig) -> None:
    slot = T0.replace(minute=5)
    offsets = {jitter_offset(f"job-{i}", slot, timedelta(seconds=30)) for i in range(50)}
    assert all(timedelta(0) <= o < timedelta(seconds=30) for o in offsets)
    assert len(offsets) > 40  # spread out, not all the same
    assert jitter_offset("x", slot, timedelta(seconds=30)) == jitter_offset(
        "x", slot, timedelta(seconds=30)
    )
    rig.load(make_spec("a", jitter="30s", tickers=["AAA"]))
    fire_at = slot + jitter_offset("a", slot, timedelta(seconds=30))
    assert rig.at(slot) == fire_at  # not dispatched at the slot itself ...
    assert not rig.scheduler.is_running("a")
    rig.at(fire_at)  # ... but at its jittered instant, recorded against the slot
    rig.settle()
    run = rig.registry.get_runs("a")[0]
    assert run.scheduled_for == slot and run.status == RunStatus.SUCCESS


def test_a_running_scheduler_that_fell_behind_runs_only_the_newest_slot(rig: Rig) -> None:
    rig.load(make_spec("a", tickers=["AAA"]))  # */5, first slot 10:05
    rig.at(T0.replace(minute=5))
    rig.settle()
    rig.at(T0.replace(minute=31))  # the host was suspended from 10:06 to 10:31
    rig.settle()
    got = statuses(rig)
    assert got == [
        (T0.replace(minute=5), RunStatus.SUCCESS),
        *[(T0.replace(minute=m), RunStatus.MISSED) for m in (10, 15, 20, 25)],
        (T0.replace(minute=30), RunStatus.SUCCESS),
    ]
    assert rig.scheduler.next_runs()["a"] == T0.replace(minute=35)
