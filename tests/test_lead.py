"""Claim ahead of the slot (``stocksched.scheduling.lead``): the slot's claim is made
``CLAIM_LEAD`` before its fire time, and the run's body starts at the fire time, not
before. A run claimed early and waiting for its slot ends cleanly on shutdown; a pause
that lands between the claim and the slot lets it run; a job still running at claim
time is judged (overlap) at its slot time, not early.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import redis

from stocksched.clock import Clock
from stocksched.executor import JobExecutor
from stocksched.metrics import Metrics
from stocksched.model import JobStatus, RunStatus
from stocksched.registry import JobRegistry
from stocksched.runids import scheduled_run_id
from stocksched.scheduling.lead import CLAIM_LEAD, ClaimLead
from stocksched.scheduling.slots import Entry
from stocksched.sources.demo import DemoFetcher
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.butler import DataIOButler
from stocksched.storage.leases import ClaimRequest, ClaimResult, LeaseManager
from tests.fakes import FakeClock
from tests.helpers import RigScheduler, make_scheduler, make_spec

SLOT = datetime(2026, 3, 2, 10, 5, tzinfo=UTC)
EARLY = SLOT - CLAIM_LEAD * 0.8  # inside the lead: claimed now, started at SLOT


class RunningClock:
    """Real time, shifted to start at ``start``: a worker waiting for a slot gets there.

    It stands at ``start`` until ``go``: setting the rig up (slower on a cluster) must not
    carry the clock past the slot before the test's tick.
    """

    def __init__(self, start: datetime) -> None:
        self._start = start
        self._mono: float | None = None

    def go(self) -> None:
        self._mono = time.monotonic()

    def now(self) -> datetime:
        if self._mono is None:
            return self._start
        return self._start + timedelta(seconds=time.monotonic() - self._mono)

    def monotonic(self) -> float:
        return time.monotonic()


class GatedLeases(LeaseManager):
    """The real claim scripts, held at a gate the test opens; ``after`` hooks run on the
    claimer thread once the claim is made, before the run goes to a worker."""

    def __init__(self, adapter: RedisAdapter, clock: Clock) -> None:
        super().__init__(adapter, "replica-test", clock=clock)
        self.now = clock.now
        self.gate = threading.Event()
        self.gate.set()
        self.claimed_at: list[datetime] = []
        self.after: list[Callable[[], object]] = []

    def try_claim_many(self, requests: Sequence[ClaimRequest]) -> list[ClaimResult]:
        assert self.gate.wait(10)
        answers = super().try_claim_many(requests)
        self.claimed_at.append(self.now())
        for hook in self.after:
            hook()
        return answers


def _rig(
    client: redis.Redis, clock: Clock, metrics: Metrics | None = None
) -> tuple[JobRegistry, RigScheduler, GatedLeases]:
    adapter = RedisAdapter(client)
    registry = JobRegistry(adapter, clock)
    metrics = metrics or Metrics("test")
    executor = JobExecutor({"demo": DemoFetcher()}, DataIOButler(adapter), clock, 4, metrics)
    leases = GatedLeases(adapter, clock)
    sched = make_scheduler(
        client, registry, executor, clock, metrics=metrics, leases=leases, pool_size=2
    )
    registry.reconcile([make_spec("a", tickers=["AAA"])])
    sched.set_jobs(registry.list_jobs())
    return registry, sched, leases


def test_a_slot_claimed_early_starts_its_body_at_the_slot_not_before(
    real_redis: redis.Redis,
) -> None:
    clock = RunningClock(EARLY)
    metrics = Metrics("test")
    registry, sched, leases = _rig(real_redis, clock, metrics)
    try:
        clock.go()
        sched.tick(clock.now(), lead=CLAIM_LEAD)
        assert sched.is_running("a")  # handed to the claimer before its slot
        assert sched.wait_idle(10)
        sched.flush_bookkeeping()
    finally:
        sched.stop(1)
    [run] = registry.get_runs("a")
    assert run.run_id == scheduled_run_id("a", SLOT) and run.scheduled_for == SLOT
    assert run.status != RunStatus.FAILED
    assert leases.claimed_at[0] <= run.started_at  # claimed first, then started ...
    assert run.started_at >= SLOT  # ... at the slot, not before: started_at is the body's
    # the lateness metric measures slot -> body start (not the early hand-over, always 0)
    sample = metrics.registry.get_sample_value
    assert sample("stocksched_schedule_lateness_seconds_count") == 1
    late = sample("stocksched_schedule_lateness_seconds_sum")
    assert late is not None and 0 < late <= (run.started_at - SLOT).total_seconds() + 0.5


def test_without_a_lead_nothing_is_dispatched_before_its_slot(real_redis: redis.Redis) -> None:
    clock = FakeClock(EARLY)
    _, sched, _ = _rig(real_redis, clock)
    try:
        assert sched.tick() == SLOT
        assert not sched.is_running("a")
    finally:
        sched.stop(1)


def test_a_run_waiting_for_its_slot_at_shutdown_is_recorded_not_started_and_releases_all(
    real_redis: redis.Redis,
) -> None:
    clock = FakeClock(EARLY)  # never reaches the slot: the run is still waiting for it
    registry, sched, leases = _rig(real_redis, clock)
    leases.gate.clear()
    sched.tick(lead=CLAIM_LEAD)
    [handle] = sched.running().values()
    left: list[list[str]] = []
    stopper = threading.Thread(target=lambda: left.append(sched.stop(0)))
    stopper.start()
    assert handle.cancel.wait(10)  # grace over while the claim is in flight
    leases.gate.set()
    stopper.join(10)
    assert left == [[]]  # nothing abandoned
    [run] = registry.get_runs("a")
    assert run.status == RunStatus.FAILED and run.scheduled_for == SLOT
    assert run.reason == "not started: daemon stopping: shutdown grace period over"
    assert leases.holder("a") is None  # the fenced record ended the lease
    job = registry.get_job("a")
    assert job is not None and job.status != JobStatus.RUNNING


def test_a_run_waiting_for_its_slot_during_a_drain_runs_at_its_slot(
    real_redis: redis.Redis,
) -> None:
    clock = RunningClock(EARLY)
    registry, sched, leases = _rig(real_redis, clock)
    leases.gate.clear()
    clock.go()
    sched.tick(clock.now(), lead=CLAIM_LEAD)
    left: list[list[str]] = []
    stopper = threading.Thread(target=lambda: left.append(sched.stop(10)))
    stopper.start()
    leases.gate.set()
    stopper.join(15)
    assert left == [[]]
    [run] = registry.get_runs("a")
    assert run.status != RunStatus.FAILED and run.started_at >= SLOT
    assert leases.holder("a") is None


def test_a_pause_between_the_claim_and_the_slot_lets_the_run_happen(
    real_redis: redis.Redis,
) -> None:
    clock = RunningClock(EARLY)
    registry, sched, leases = _rig(real_redis, clock)
    leases.after.append(lambda: sched.set_paused("a", True))
    try:
        clock.go()
        sched.tick(clock.now(), lead=CLAIM_LEAD)
        assert sched.wait_idle(10)
        sched.flush_bookkeeping()
    finally:
        sched.stop(1)
    [run] = registry.get_runs("a")  # ran, as if paused just after it started
    assert run.status != RunStatus.FAILED and run.started_at >= SLOT
    job = registry.get_job("a")
    assert job is not None and job.paused
    assert sched.next_runs() == {"a": None}  # and nothing more is armed


def test_a_job_still_running_at_claim_time_is_judged_at_its_slot(
    real_redis: redis.Redis,
) -> None:
    clock = FakeClock(SLOT - timedelta(minutes=6))
    registry, sched, leases = _rig(real_redis, clock)
    leases.gate.clear()  # the previous run holds the job while its claim is held
    try:
        clock.set(SLOT - timedelta(minutes=5))
        sched.tick()
        assert sched.is_running("a")
        clock.set(EARLY)
        assert sched.tick(lead=CLAIM_LEAD) == SLOT  # held back, not skipped early
        leases.gate.set()
        assert sched.wait_idle(10)
        sched.flush_bookkeeping()
        assert [r.scheduled_for for r in registry.get_runs("a")] == [SLOT - timedelta(minutes=5)]
        clock.set(EARLY + CLAIM_LEAD / 2)
        sched.tick(lead=CLAIM_LEAD)  # the run ended: now claimed early
        assert sched.wait_idle(10)
        sched.flush_bookkeeping()
    finally:
        sched.stop(1)
    assert [r.scheduled_for for r in registry.get_runs("a")] == [SLOT, SLOT - timedelta(minutes=5)]


def test_the_loop_sleeps_to_the_lead_or_to_a_held_slot_itself() -> None:
    running: dict[str, object] = {"busy": object()}
    lead = ClaimLead(running)
    horizon = lead.begin(EARLY, CLAIM_LEAD)
    assert horizon == EARLY + CLAIM_LEAD
    assert (
        lead.sleep_s(SLOT + timedelta(seconds=1), EARLY)
        == (SLOT + timedelta(seconds=1) - CLAIM_LEAD - EARLY).total_seconds()
    )
    free = Entry(SLOT, 0, "free", 1, SLOT, False)
    busy = Entry(SLOT, 1, "busy", 1, SLOT, False)
    assert not lead.hold(free)
    assert lead.hold(busy)
    assert lead.sleep_s(SLOT, EARLY) == (SLOT - EARLY).total_seconds()
    lead.begin(SLOT, CLAIM_LEAD)
    assert not lead.hold(busy)  # at its fire time it is decided (skip or queue)
