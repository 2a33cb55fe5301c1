"""Crashes and several replicas, end to end: daemons as subprocesses on one real redis-server.

What a user of a replicated deployment relies on (issue 5, "Crashes" and "Several replicas"):

- a daemon killed with SIGKILL mid-run leaves a valid job record, and the next start
  records that run as ``interrupted`` (found through its stopped lease heartbeat) and
  reruns the slot as the catch-up rule says (also checked in-process, without daemons,
  for crash points and restart delays a kill -9 cannot aim at);
- three daemons on one Redis run each ``@every 1s`` slot exactly once, with no gaps and
  never two runs at once, also when one of them is killed;
- three daemons reconciling the same file at once converge to one record per job
  without losing runtime state (a pause, the last run).

Timing is observed, never assumed: every wait polls with a generous deadline and fails
at once, with the daemon's log, if a daemon exits unexpectedly.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from hashlib import sha256
from itertools import pairwise
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from stocksched.executor import JobExecutor
from stocksched.metrics import Metrics
from stocksched.model import RunResult, RunStatus, Trigger
from stocksched.registry import JobRegistry
from stocksched.runids import scheduled_run_id
from stocksched.sources.demo import DemoFetcher
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.butler import DataIOButler
from stocksched.storage.leases import LeaseManager, MarkRunning
from tests.daemons import (
    Launch,
    Replica,
    assert_no_leftovers,
    find,
    history,
    record,
    wait_for,
    wait_ready,
)
from tests.fakes import FakeClock
from tests.helpers import make_scheduler, make_spec

T = TypeVar("T")

EXECUTED = {RunStatus.SUCCESS, RunStatus.PARTIAL_SUCCESS, RunStatus.FAILED}


# -- 1. kill -9 mid-run, then restart ---------------------------------------------------------

SLOW_TICKERS = 30  # demo source, 10-year window, one ticker at a time: a run of a few seconds


def slow_jobs(schedule: str) -> str:
    tickers = ", ".join(f"S{i:03d}" for i in range(SLOW_TICKERS))
    return f"""\
version: 1
jobs:
  - id: slow
    tickers: [{tickers}]
    schedule: "{schedule}"
    timezone: UTC
    source: demo
    window: 3650d
    ttl: 10m
"""


def daily_at(t: datetime) -> str:
    """6-field cron (leading seconds) firing daily at ``t`` (UTC): the next slot is a day off."""
    return f"{t.second} {t.minute} {t.hour} * * *"


def schedule_soon(replica: Replica, jobs: Path) -> datetime:
    """Move the slow job's daily slot to a second or two from now, on a daemon already up.

    (Daemon start-up time varies too much to write that slot before starting.) Retried
    if the reload lands only after the slot, which a very loaded machine may cause.
    """
    for _ in range(3):
        slot = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
        text = slow_jobs(daily_at(slot))
        jobs.write_text(text)
        replica.proc.send_signal(signal.SIGHUP)
        digest = sha256(text.encode()).hexdigest()
        wait_for(partial(replica.has_config, digest), alive=[replica])
        if datetime.now(UTC) < slot:
            return slot
    raise AssertionError("could not apply a schedule before its slot")


@pytest.mark.slow
@pytest.mark.parametrize("stable_id", [True, False], ids=["stable-replica-id", "random-replica-id"])
def test_kill_9_mid_run_then_restart_records_interrupted_and_reruns_the_slot(
    tmp_path: Path, real_redis: redis.Redis, launch: Launch, stable_id: bool
) -> None:
    # A stable id is recognised at restart, so its lease may be long (the default 30 s):
    # the record must not wait for it. A random id is only found once its lease expires.
    env = {"STOCKSCHED_TICKER_CONCURRENCY": "1"}
    env.update(
        {"STOCKSCHED_REPLICA_ID": "replica-a"} if stable_id else {"STOCKSCHED_LEASE_TTL": "3"}
    )
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(slow_jobs(daily_at(datetime.now(UTC) - timedelta(hours=1))))
    first = launch("first", env=env)
    wait_ready(first)

    slot = schedule_soon(first, jobs)
    run_id = f"slow:{int(slot.timestamp() * 1000)}"
    inflight = keys.inflight_key("slow")
    # Mid-run: claimed (in-flight record, lease) and marked running in the job record.
    wait_for(
        lambda: (
            real_redis.hexists(inflight, run_id)
            and record(real_redis, "slow")["status"] == "running"
        ),
        30,
        alive=[first],
    )

    first.proc.kill()
    first.proc.wait(timeout=10)
    killed_at = time.time()
    lease_expiry = time.time() + real_redis.pttl(keys.running_key("slow")) / 1000
    # Caught mid-run: the run's in-flight record and live lease outlive the process.
    assert real_redis.hexists(inflight, run_id), "the run finished before the kill"
    assert lease_expiry > killed_at
    assert find(real_redis, "slow", run_id) is None
    assert record(real_redis, "slow")["status"] == "running"  # valid JSON, last state kept

    second = launch("second", env=env)
    interrupted = wait_for(lambda: find(real_redis, "slow", run_id), 45, alive=[second])
    rerun = wait_for(lambda: find(real_redis, "slow", f"{run_id}-r1"), 60, alive=[second])
    out = second.stop()

    assert interrupted.status == RunStatus.INTERRUPTED
    assert "lease" in interrupted.reason
    assert interrupted.scheduled_for == slot and interrupted.trigger == Trigger.SCHEDULE
    assert interrupted.started_at.timestamp() < killed_at
    if stable_id:
        assert "replica-a" in interrupted.reason
        assert interrupted.finished_at.timestamp() < lease_expiry, "waited for the lease"
    else:
        assert interrupted.finished_at.timestamp() >= lease_expiry - 0.01, (
            "recorded interrupted while the dead replica's lease was still live"
        )
    # Catch-up rule: the slot is a few seconds old and the next one is a day away, so it
    # reruns once, at once, under a derived run id; nothing else is recorded.
    assert rerun.status == RunStatus.SUCCESS, rerun
    assert rerun.scheduled_for == slot and rerun.trigger == Trigger.SCHEDULE
    assert len(rerun.fetched_stocks) == SLOW_TICKERS
    assert [(r.run_id, r.status) for r in history(real_redis, "slow")] == [
        (run_id, RunStatus.INTERRUPTED),
        (f"{run_id}-r1", RunStatus.SUCCESS),
    ]
    rec = record(real_redis, "slow")
    assert rec["status"] == "completed"
    assert rec["last_result"]["run_id"] == f"{run_id}-r1"
    assert rec["next_run"] == (slot + timedelta(days=1)).isoformat()
    assert_no_leftovers(real_redis, "slow")
    assert "run interrupted job=slow" in out and "rerunning interrupted slot job=slow" in out


# The same decision in-process, for crash points and ages a kill -9 cannot aim at (the
# claim and the record update are milliseconds apart): (schedule, catchup, whether the
# record was marked running before the crash, restart delay) -> the job's whole history.
SLOT = datetime(2026, 3, 2, 17, 0, tzinfo=UTC)
ORIG = scheduled_run_id("slow", SLOT)
RERUN_CASES = {
    "rerun": (
        "0 17 * * *",
        "1h",
        True,
        timedelta(seconds=5),
        [(ORIG, RunStatus.INTERRUPTED), (f"{ORIG}-r1", RunStatus.SUCCESS)],
    ),
    # next_run still on the slot: it is also "missed while down", but runs only once
    "rerun, crash before marked running": (
        "0 17 * * *",
        "1h",
        False,
        timedelta(seconds=5),
        [(ORIG, RunStatus.INTERRUPTED), (f"{ORIG}-r1", RunStatus.SUCCESS)],
    ),
    "catchup 0: no rerun": (
        "0 17 * * *",
        "0s",
        True,
        timedelta(seconds=5),
        [(ORIG, RunStatus.INTERRUPTED)],
    ),
    "catchup 0, crash before marked running": (
        "0 17 * * *",
        "0s",
        False,
        timedelta(seconds=5),
        [(ORIG, RunStatus.INTERRUPTED)],
    ),
    "older than catchup": (
        "0 17 * * *",
        "1h",
        False,
        timedelta(hours=2),
        [(ORIG, RunStatus.INTERRUPTED)],
    ),
    # the next slot (17:05) is already due: it runs as the catch-up, the crashed one does not
    "next slot due": (
        "*/5 * * * *",
        "1h",
        False,
        timedelta(minutes=7),
        [
            (ORIG, RunStatus.INTERRUPTED),
            (scheduled_run_id("slow", SLOT + timedelta(minutes=5)), RunStatus.SUCCESS),
        ],
    ),
}


@pytest.mark.parametrize("case", list(RERUN_CASES))
def test_restart_with_the_same_replica_id_after_a_crash_follows_the_catchup_rule(
    fake_redis: redis.Redis, case: str
) -> None:
    schedule, catchup, marked_running, down_for, expected = RERUN_CASES[case]
    spec = make_spec("slow", schedule=schedule, catchup=catchup)
    clock = FakeClock(SLOT - timedelta(minutes=1))
    adapter = RedisAdapter(fake_redis)
    registry = JobRegistry(adapter, clock)
    registry.reconcile([spec])
    clock.set(SLOT)
    mark = MarkRunning(spec.next_fire(SLOT)) if marked_running else None
    crashed = LeaseManager(RedisAdapter(fake_redis), "replica-a").try_claim(
        "slow", ORIG, scheduled_for=SLOT, started_at=SLOT, mark=mark
    )
    assert crashed.lease is not None
    # ... the process dies here; it comes back ``down_for`` later with the same replica id.
    clock.set(SLOT + down_for)
    restarted = make_scheduler(
        fake_redis,
        registry,
        JobExecutor({"demo": DemoFetcher()}, DataIOButler(adapter), clock, 4, Metrics("test")),
        clock,
        leases=LeaseManager(RedisAdapter(fake_redis), "replica-a"),
    )
    restarted.set_jobs(registry.list_jobs())
    assert restarted.recover_interrupted(dead_replica="replica-a") == 1
    restarted.tick()
    assert restarted.wait_idle(10)
    restarted.flush_bookkeeping()

    assert sorted((r.run_id, r.status) for r in registry.get_runs("slow")) == expected
    assert_no_leftovers(fake_redis, "slow")


# -- 2. three replicas, one @every 1s job, one killed midway --------------------------------------

TICK_JOBS = """\
version: 1
jobs:
  - id: tick
    tickers: [T1, T2, T3, T4]
    schedule: "@every 1s"
    source: demo
    window: 3650d
    ttl: 10m
"""
# Runs of about a third of a second, so a replica can be caught holding one.
REPLICA_SETTINGS = "lease_ttl: 2\nreplica_ttl: 3\nticker_concurrency: 1\n"


def kill_lease_holder(
    client: redis.Redis, replicas: Sequence[Replica], job_id: str
) -> tuple[Replica, str, float]:
    """SIGKILL whichever replica holds the job's lease, while it does (stopped, checked, killed).

    Returns (victim, its run id, when the lease expires); SIGSTOP first, so the run cannot
    finish between the check and the kill.
    """
    by_id = {r.name: r for r in replicas}
    running = keys.running_key(job_id)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        owner = client.hget(running, "owner")
        victim = by_id.get(str(owner).split("/")[0]) if owner else None
        if victim is None:
            time.sleep(0.005)
            continue
        victim.proc.send_signal(signal.SIGSTOP)
        run_id = client.hget(running, "run_id")
        if (
            client.hget(running, "owner") == owner
            and run_id
            and client.hexists(keys.inflight_key(job_id), str(run_id))
        ):
            victim.proc.kill()
            victim.proc.wait(timeout=10)
            expiry = time.time() + client.pttl(running) / 1000
            return victim, str(run_id), expiry
        victim.proc.send_signal(signal.SIGCONT)  # the run ended meanwhile: try the next one
    raise AssertionError("no replica was seen holding the lease")


def started_after(runs: list[RunResult], t: float) -> int:
    return sum(1 for r in runs if r.status in EXECUTED and r.started_at.timestamp() > t)


@pytest.mark.slow
def test_three_replicas_run_every_slot_exactly_once_also_when_one_is_killed(
    tmp_path: Path, real_redis: redis.Redis, launch: Launch
) -> None:
    (tmp_path / "jobs.yaml").write_text(TICK_JOBS)
    settings = tmp_path / "stocksched.yaml"
    settings.write_text(REPLICA_SETTINGS)
    names = ["r1", "r2", "r3"]
    reps = [launch(n, env={"STOCKSCHED_REPLICA_ID": n}, config=settings) for n in names]
    wait_ready(*reps)
    pids = {
        r["replica_id"]: r["pid"]
        for r in wait_for(
            lambda: (
                reps[0].request("/scheduler/status")["replicas"]
                if reps[0].replica_ids() == set(names)
                else None
            ),
            alive=reps,
        )
    }
    assert pids == {r.name: r.proc.pid for r in reps}
    all_up = time.time()
    wait_for(lambda: started_after(history(real_redis, "tick"), all_up) >= 8, 45, alive=reps)

    victim, lost_run, lease_expiry = kill_lease_holder(real_redis, reps, "tick")
    killed_at = time.time()
    record(real_redis, "tick")  # whole, never half-written, whatever the kill interrupted
    live = [r for r in reps if r is not victim]
    wait_for(lambda: find(real_redis, "tick", lost_run), 30, alive=live)
    wait_for(lambda: started_after(history(real_redis, "tick"), lease_expiry) >= 8, 45, alive=live)
    # The dead replica's heartbeat expires (replica_ttl 3 s); the live ones stay listed.
    live_ids = {r.name for r in live}
    wait_for(lambda: all(r.replica_ids() == live_ids for r in live), 20, alive=live)
    stopping_at = time.time()
    for r in live:
        r.stop()

    runs = history(real_redis, "tick")
    assert len({r.run_id for r in runs}) == len(runs), "a run id was recorded twice"
    # @every 1s: by the time an interrupted run is found its next slot is due, so the
    # catch-up rule does not rerun it; every entry is its slot's only one.
    assert not [r.run_id for r in runs if "-r" in r.run_id]
    per_slot = Counter(r.scheduled_for for r in runs)
    assert [s for s, n in per_slot.items() if n > 1] == [], "a slot was recorded twice"
    statuses = Counter(r.status for r in runs)
    assert set(statuses) <= {
        RunStatus.SUCCESS,
        RunStatus.SKIPPED,
        RunStatus.MISSED,
        RunStatus.INTERRUPTED,
    }, statuses
    assert statuses[RunStatus.SUCCESS] >= 16, statuses

    lost = [r for r in runs if r.status == RunStatus.INTERRUPTED]
    assert [r.run_id for r in lost] == [lost_run]
    assert f"replica {victim.name} " in lost[0].reason and "lease" in lost[0].reason
    assert lost[0].started_at.timestamp() < killed_at

    # Never two runs at once: executed runs do not overlap, and none started while the
    # killed replica's lease still covered its run.
    executed = sorted((r for r in runs if r.status in EXECUTED), key=lambda r: r.started_at)
    for a, b in pairwise(executed):
        assert a.finished_at <= b.started_at, f"{a.run_id} and {b.run_id} overlapped"
    assert not [
        r.run_id
        for r in executed
        if lost[0].started_at < r.started_at and r.started_at.timestamp() < lease_expiry - 0.01
    ]
    skipped_for_lease = [r for r in runs if r.status == RunStatus.SKIPPED and lost_run in r.reason]
    assert skipped_for_lease, "slots due while the dead lease held should be skipped"

    # No gaps: every second from the first slot to shortly before the shutdown has its
    # entry, except around the kill (a slot the killed replica had claimed for a "skipped"
    # record it had no time to write: forced by the test, not a scheduling gap).
    slots = sorted(s for s in per_slot if s is not None)
    last = max(s for s in slots if s.timestamp() < stopping_at - 2)
    expected = [
        slots[0] + timedelta(seconds=i) for i in range(int((last - slots[0]).total_seconds()) + 1)
    ]
    missing = [s for s in expected if s not in per_slot]
    assert all(killed_at - 3 <= s.timestamp() <= killed_at + 1 for s in missing), missing
    assert len(missing) <= 2, missing
    assert len(expected) >= 14, expected
    rec = record(real_redis, "tick")
    assert rec["status"] == "completed" and rec["last_result"]["run_id"] == executed[-1].run_id
    assert_no_leftovers(real_redis, "tick")
    assert real_redis.zrange(keys.replica_index_key(), 0, -1) == []  # clean stops withdraw


# -- 3. concurrent reconcile -------------------------------------------------------------------

RECONCILE_V1 = """\
version: 1
defaults:
  source: demo
  window: 10d
  ttl: 10m
  schedule: "0 0 1 1 *"
  timezone: UTC
jobs:
  - id: keep
    tickers: [AAA, BBB]
  - id: held
    tickers: [CCC]
  - id: old
    tickers: [DDD]
"""

RECONCILE_V2 = """\
version: 1
defaults:
  source: demo
  window: 10d
  ttl: 10m
  schedule: "0 0 1 1 *"
  timezone: UTC
jobs:
  - id: keep
    tickers: [AAA, BBB, EEE]
  - id: held
    name: Held, renamed
    tickers: [CCC, FFF]
  - id: fresh
    tickers: [GGG]
"""


@pytest.mark.slow
def test_replicas_reconciling_at_once_converge_and_keep_runtime_state(
    tmp_path: Path, real_redis: redis.Redis, launch: Launch
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(RECONCILE_V1)
    first = launch("first")
    wait_ready(first)
    assert first.request("/scheduler/jobs/held/stop", "POST")["paused"] is True
    manual = first.request("/scheduler/jobs/keep/trigger", "POST")["run_id"]
    wait_for(lambda: find(real_redis, "keep", manual), alive=[first])
    first.stop()
    keep_before, held_before = record(real_redis, "keep"), record(real_redis, "held")
    assert keep_before["last_run"] and held_before["paused"] is True

    jobs.write_text(RECONCILE_V2)
    reps = [launch(n, env={"STOCKSCHED_REPLICA_ID": n}) for n in ("r1", "r2", "r3")]
    wait_ready(*reps)
    digest = sha256(RECONCILE_V2.encode()).hexdigest()
    for r in reps:
        status = r.request("/scheduler/status")
        assert status["config"]["sha256"] == digest and status["last_reload"]["ok"], status

    assert real_redis.smembers(keys.job_index_key()) == {"keep", "held", "fresh"}
    assert real_redis.exists(keys.job_key("old")) == 0
    keep, held, fresh = (record(real_redis, j) for j in ("keep", "held", "fresh"))
    assert keep["spec"]["tickers"] == ["AAA", "BBB", "EEE"]
    assert held["spec"]["tickers"] == ["CCC", "FFF"] and held["spec"]["name"] == "Held, renamed"
    assert fresh["spec"]["tickers"] == ["GGG"] and fresh["paused"] is False
    # Runtime state survives the spec changes written by three replicas at once.
    assert held["paused"] is True and held["created_at"] == held_before["created_at"]
    for field in ("created_at", "last_run", "last_success", "last_result", "status"):
        assert keep[field] == keep_before[field], field

    # Every replica follows the same records: the job is paused on all of them.
    views = [{j["job_id"]: j for j in r.request("/scheduler/jobs")} for r in reps]
    for view in views:
        assert set(view) == {"keep", "held", "fresh"}
        assert view["held"]["paused"] and view["held"]["status"] == "paused"
        assert not view["held"]["active"] and view["held"]["next_run"] is None
        assert view["keep"]["tickers"] == ["AAA", "BBB", "EEE"]
    assert len({v["fresh"]["created_at"] for v in views}) == 1
    for r in reps:
        r.stop()
    assert history(real_redis, "held") == []
    assert [r.run_id for r in history(real_redis, "keep")] == [manual]
