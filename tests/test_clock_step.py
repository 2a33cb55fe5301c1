"""The wall clock stepped backward (issue 9, item 5), with a fake clock and slot claims.

A step back (an NTP step, ``date -s``, a VM restored from a snapshot) leaves every job's
next slot in the future by the size of the step. What must hold:

- the step is seen (wall against monotonic time, or at startup a record whose last run
  finished after "now") and logged once, with its size;
- a job whose period is shorter than the step keeps running, each run recorded, under a
  run id that cannot collide with the id its slot time had before the step;
- a fixed-time slot that already ran does not run again;
- two replicas with the same clock run each repeated slot once;
- a forward step is caught up as before (newest slot run, the others recorded missed).

The slot claims are real (``LeaseManager`` on fakeredis): a repeat that reused an old id
would be dropped as "slot taken", which is how the fault lost runs.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from stocksched.executor import JobExecutor
from stocksched.metrics import Metrics
from stocksched.model import RunResult, RunStatus
from stocksched.registry import JobRegistry
from stocksched.runids import scheduled_run_id
from stocksched.sources.demo import DemoFetcher
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.butler import DataIOButler
from tests.fakes import FakeClock
from tests.helpers import make_scheduler, make_spec

T0 = datetime(2026, 3, 2, 10, 29, tzinfo=UTC)
EXECUTED = {RunStatus.SUCCESS, RunStatus.PARTIAL_SUCCESS, RunStatus.FAILED}
STEP_MSG = "keep running with run ids marked as repeats"


class Node:
    """One replica in-process: registry, executor and a scheduler that claims slots."""

    def __init__(self, client: redis.Redis, clock: FakeClock, owner: str) -> None:
        adapter = RedisAdapter(client)
        self.registry = JobRegistry(adapter, clock)
        self.scheduler = make_scheduler(
            client,
            self.registry,
            JobExecutor({"demo": DemoFetcher()}, DataIOButler(adapter), clock, 4, Metrics("test")),
            clock,
            pool_size=2,
            owner=owner,
        )

    def load(self, *specs: Any) -> None:
        self.registry.reconcile(specs)
        self.scheduler.set_jobs(self.registry.list_jobs())

    def settle(self) -> None:
        assert self.scheduler.wait_idle(10)
        self.scheduler.flush_bookkeeping()


def drive(clock: FakeClock, until: datetime, *nodes: Node) -> None:
    """Move the clock (wall and monotonic) from fire time to fire time, as the loop would."""
    while True:
        due = [n.scheduler.tick() for n in nodes]
        for n in nodes:
            n.settle()
        nxt = min((d for d in due if d is not None), default=None)
        if nxt is None or nxt > until:
            return
        clock.set(nxt)


def repeat_run_id(job_id: str, slot: datetime | None, mark: datetime) -> str:
    """The documented id of a repeat: ``job:<slot ms>-b<mark ms>`` (spelled out here, so
    a change of format is a visible change of the API's run ids)."""
    assert slot is not None
    return f"{job_id}:{int(slot.timestamp() * 1000)}-b{int(mark.timestamp() * 1000)}"


def test_repeat_run_id_format() -> None:
    from stocksched import runids

    slot, mark = T0, T0 + timedelta(hours=1)
    assert runids.repeat_run_id("j", slot, mark) == repeat_run_id("j", slot, mark)
    assert runids.repeat_run_id("j", slot, mark) != scheduled_run_id("j", slot)


def runs(node: Node, job_id: str) -> list[RunResult]:
    """History in the order it was written (wall times are no order after a step)."""
    return node.registry.get_runs(job_id, 10_000)[::-1]


def step_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if STEP_MSG in r.getMessage() and r.levelno == logging.WARNING
    ]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def node(fake_redis: redis.Redis, clock: FakeClock) -> Iterator[Node]:
    n = Node(fake_redis, clock, "replica-a")
    yield n
    n.scheduler.stop(1)


def test_short_period_job_keeps_running_after_a_one_hour_step_back(
    node: Node, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="stocksched")
    node.load(make_spec("fast", schedule="@every 10s", tickers=["AAA"]))
    drive(clock, T0 + timedelta(minutes=2), node)
    before = runs(node, "fast")
    assert len(before) == 12 and {r.status for r in before} <= EXECUTED
    mark = before[-1].scheduled_for
    assert mark == T0 + timedelta(minutes=2)

    stepped = clock.step_wall(timedelta(hours=-1))  # 09:31:00, monotonic unchanged
    drive(clock, stepped + timedelta(minutes=2), node)

    after = runs(node, "fast")[len(before) :]
    assert len(after) == 12  # 09:31:10 ... 09:33:00: the job did not stop for an hour
    assert {r.status for r in after} <= EXECUTED
    assert [r.scheduled_for for r in after] == [
        stepped + timedelta(seconds=10 * i) for i in range(1, 13)
    ]
    ids = [r.run_id for r in before + after]
    assert len(set(ids)) == len(ids)
    assert all(r.run_id == repeat_run_id("fast", r.scheduled_for, mark) for r in after)
    warnings = step_warnings(caplog)
    assert len(warnings) == 1
    assert "stepped back by 1:00:00" in warnings[0] and "10:31:00" in warnings[0]


def test_plain_ids_resume_once_the_clock_passes_the_mark(
    node: Node, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stocksched")
    node.load(make_spec("fast", schedule="@every 10s", tickers=["AAA"]))
    drive(clock, T0 + timedelta(minutes=1), node)
    mark = T0 + timedelta(minutes=1)
    clock.step_wall(timedelta(seconds=-45))  # 10:29:15
    drive(clock, T0 + timedelta(minutes=2), node)
    got = runs(node, "fast")
    assert {r.status for r in got} <= EXECUTED
    slots = [r.scheduled_for for r in got]
    assert slots == [
        *(T0 + timedelta(seconds=10 * i) for i in range(1, 7)),  # 10:29:10 ... 10:30:00
        *(T0 + timedelta(seconds=10 * i) for i in range(2, 13)),  # 10:29:20 ... 10:31:00
    ]
    for r in got[6:]:
        assert r.scheduled_for is not None
        plain = scheduled_run_id("fast", r.scheduled_for)
        want = repeat_run_id("fast", r.scheduled_for, mark) if r.scheduled_for <= mark else plain
        assert r.run_id == want
    assert len({r.run_id for r in got}) == len(got)
    assert len(step_warnings(caplog)) == 1


def test_fixed_time_slot_that_ran_is_not_run_again(
    node: Node, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="stocksched")
    node.load(make_spec("daily", schedule="30 10 * * *", tickers=["AAA"], catchup="0"))
    drive(clock, T0 + timedelta(minutes=2), node)  # runs 10:30
    assert [r.scheduled_for for r in runs(node, "daily")] == [T0 + timedelta(minutes=1)]

    clock.step_wall(timedelta(hours=-1))  # 09:31: 10:30 comes round again
    drive(clock, T0 + timedelta(minutes=5), node)
    got = runs(node, "daily")
    assert [r.scheduled_for for r in got] == [T0 + timedelta(minutes=1)]  # not run again
    assert len(step_warnings(caplog)) == 1
    assert any("not re-run" in r.getMessage() for r in caplog.records if r.levelno == 10)
    # The next day's slot runs as usual, under its plain id.
    drive(clock, T0 + timedelta(days=1, minutes=2), node)
    got = runs(node, "daily")
    tomorrow = T0 + timedelta(days=1, minutes=1)
    assert [(r.scheduled_for, r.run_id) for r in got[1:]] == [
        (tomorrow, scheduled_run_id("daily", tomorrow))
    ]


def test_two_replicas_on_one_clock_run_each_repeat_once(
    fake_redis: redis.Redis, clock: FakeClock
) -> None:
    a, b = Node(fake_redis, clock, "replica-a"), Node(fake_redis, clock, "replica-b")
    try:
        spec = make_spec("fast", schedule="@every 10s", tickers=["AAA"])
        a.load(spec)
        b.load(spec)
        drive(clock, T0 + timedelta(minutes=1), a, b)
        stepped = clock.step_wall(timedelta(minutes=-30))
        drive(clock, stepped + timedelta(minutes=1), a, b)
        got = runs(a, "fast")
        assert {r.status for r in got} <= EXECUTED
        slots = Counter(r.scheduled_for for r in got)
        assert len(got) == 12 and all(n == 1 for n in slots.values())
        assert len({r.run_id for r in got}) == 12
    finally:
        a.scheduler.stop(1)
        b.scheduler.stop(1)


def test_restart_with_the_clock_behind_runs_and_records_repeats(
    fake_redis: redis.Redis, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stocksched")
    spec = make_spec("fast", schedule="@every 10s", tickers=["AAA"])
    daily = make_spec("daily", schedule="30 30 10 * * *", tickers=["AAA"], catchup="0")
    first = Node(fake_redis, clock, "replica-a")
    clock.set(T0 - timedelta(seconds=5))
    first.load(spec, daily)
    drive(clock, T0 + timedelta(minutes=2), first)
    first.scheduler.stop(1)
    before = runs(first, "fast")
    assert len(before) == 13 and len(runs(first, "daily")) == 1  # 10:29:00 ... 10:31:00

    behind = FakeClock(T0 + timedelta(minutes=2, seconds=5) - timedelta(minutes=1))
    restarted = Node(fake_redis, behind, "replica-a")
    try:
        restarted.load(spec, daily)
        drive(behind, T0 + timedelta(minutes=3), restarted)
        after = runs(restarted, "fast")[len(before) :]
        # 10:30:10 ... 10:31:00 again (repeats), then 10:31:10 ... 10:32:00 (plain).
        assert len(after) == 6 + 6
        assert {r.status for r in after} <= EXECUTED
        ids = [r.run_id for r in before + after]
        assert len(set(ids)) == len(ids)
        mark = T0 + timedelta(minutes=2)
        assert [r.run_id for r in after[:6]] == [
            repeat_run_id("fast", r.scheduled_for, mark) for r in after[:6]
        ]
        assert len(runs(restarted, "daily")) == 1  # 10:30:30 ran before the restart
        warnings = step_warnings(caplog)
        assert len(warnings) == 1 and "at startup is behind the last recorded run" in warnings[0]
    finally:
        restarted.scheduler.stop(1)


def test_forward_step_still_catches_up(
    node: Node, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stocksched")
    node.load(make_spec("fast", schedule="@every 10s", tickers=["AAA"]))
    drive(clock, T0 + timedelta(seconds=30), node)
    clock.step_wall(timedelta(minutes=5))  # 10:34:00, monotonic unchanged
    node.scheduler.tick()
    node.settle()
    got = runs(node, "fast")
    statuses = Counter(r.status for r in got)
    assert statuses[RunStatus.MISSED] == 29  # 10:29:40 ... 10:34:20
    # The missed slots (bookkeeping thread) and the run (worker) are written concurrently.
    last = max((r for r in got if r.status != RunStatus.MISSED), key=lambda r: r.finished_at)
    assert last.scheduled_for == T0 + timedelta(minutes=5, seconds=30)
    assert last.status in EXECUTED
    assert step_warnings(caplog) == []
