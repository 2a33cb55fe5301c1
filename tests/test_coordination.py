"""Coordination between replicas: what the scheduler relies on to run each slot exactly once.

Races run against the real redis-server (threads and separate processes); the
contract tests also run on fakeredis, which the embedded mode uses.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stocksched.coordination import LeaseKeeper, ReplicaHeartbeat
from stocksched.model import Trigger
from stocksched.runids import rerun_run_id
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, StorageError, connect
from stocksched.storage.cluster import is_cluster
from stocksched.storage.inflight import InflightRun
from stocksched.storage.leases import ClaimOutcome, Lease
from stocksched.storage.replicas import list_replicas
from tests.conftest import RedisServer, free_port
from tests.leases import LeaseManagerForTests

SLOT = datetime(2025, 3, 10, 14, 30, tzinfo=UTC)
T0 = datetime(2025, 3, 10, 14, 30, 1, tzinfo=UTC)


def run_id(job: str, n: int = 0) -> str:
    return f"{job}:{1741617000000 + n * 1000}"


def wait_until(pred: Callable[[], object], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# -- claims -------------------------------------------------------------------------


def test_claim_gives_lease_and_a_finished_slot_never_runs_again(any_redis: redis.Redis) -> None:
    a = LeaseManagerForTests(any_redis, "replica-a")
    b = LeaseManagerForTests(any_redis, "replica-b")
    lease = a.claim("job", run_id("job"), scheduled_for=SLOT, started_at=T0)
    assert lease is not None and lease.replica_id == "replica-a"
    assert b.try_claim("job", run_id("job")).outcome == ClaimOutcome.SLOT_TAKEN
    assert a.finish_inflight("job", lease.run_id)
    assert a.release(lease)
    # finished and released: a replica that is late for this slot still must not run it
    assert b.try_claim("job", run_id("job")).outcome == ClaimOutcome.SLOT_TAKEN
    assert a.claim("job", run_id("job")) is None
    assert 0 < any_redis.pttl(keys.slot_key(run_id("job"))) <= a.slot_ttl_ms


def test_job_busy_gives_the_slot_to_one_replica_which_can_queue_it(any_redis: redis.Redis) -> None:
    a = LeaseManagerForTests(any_redis, "replica-a")
    b = LeaseManagerForTests(any_redis, "replica-b")
    first = a.claim("job", run_id("job", 0))
    assert first is not None
    busy = b.try_claim("job", run_id("job", 1))
    assert busy.outcome == ClaimOutcome.JOB_BUSY and busy.lease is None
    assert busy.busy_with == run_id("job", 0)
    # b owns the slot now: nobody else records or runs it
    assert a.try_claim("job", run_id("job", 1)).outcome == ClaimOutcome.SLOT_TAKEN
    assert b.wait_lease_job("job", run_id("job", 1), stop=threading.Event(), timeout_s=0) is None
    assert a.running_run_id("job") == run_id("job", 0)
    a.finish_inflight("job", first.run_id)
    a.release(first)
    queued = b.wait_lease_job("job", run_id("job", 1), stop=threading.Event(), timeout_s=0)
    assert queued is not None and a.running_run_id("job") == run_id("job", 1)


def test_manual_trigger_and_scheduled_run_never_overlap(any_redis: redis.Redis) -> None:
    a = LeaseManagerForTests(any_redis, "replica-a")
    b = LeaseManagerForTests(any_redis, "replica-b")
    manual = a.claim("job", "job:m1741617000000-ab12", trigger=Trigger.MANUAL)
    assert manual is not None
    assert b.try_claim("job", run_id("job")).outcome == ClaimOutcome.JOB_BUSY


def test_claim_is_exclusive_across_threads(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    threads, slots = 8, 50
    barrier = threading.Barrier(threads)
    won: list[list[int]] = [[] for _ in range(threads)]

    def race(t: int) -> None:
        mgr = LeaseManagerForTests(redis_server.client(), f"thread-{t}")
        barrier.wait()
        won[t] = [i for i in range(slots) if mgr.claim(f"job{i}", run_id(f"job{i}", i))]

    workers = [threading.Thread(target=race, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)
    counts = Counter(i for w in won for i in w)
    assert counts == Counter(range(slots))  # every slot exactly once


def _race_process(url: str, go: Any, out: Any, slots: int) -> None:
    mgr = LeaseManagerForTests(
        connect(url),
        f"proc-{multiprocessing.current_process().pid}",
    )
    go.wait(10)
    out.put([i for i in range(slots) if mgr.claim(f"job{i}", run_id(f"job{i}", i))])


def test_claim_is_exclusive_across_three_processes(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    ctx = multiprocessing.get_context("fork")
    go, out, slots = ctx.Event(), ctx.Queue(), 50
    procs = [
        ctx.Process(target=_race_process, args=(redis_server.url, go, out, slots)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    go.set()
    results = [out.get(timeout=10) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    counts = Counter(i for r in results for i in r)
    assert counts == Counter(range(slots))


def test_slots_that_will_not_run_are_recorded_by_one_replica(any_redis: redis.Redis) -> None:
    a = LeaseManagerForTests(any_redis, "replica-a")
    b = LeaseManagerForTests(any_redis, "replica-b")
    ids = [run_id("job", n) for n in range(5)]
    assert a.claim_slots(ids[:3]) == [True, True, True]
    assert b.claim_slots(ids) == [False, False, False, True, True]
    assert a.claim_slots(ids[:3]) == [True, True, True]  # a retried write keeps its slots
    assert a.claim_slots([]) == []
    assert b.try_claim("job", ids[0]).outcome == ClaimOutcome.SLOT_TAKEN  # and none runs


def test_queued_slot_waits_for_the_other_replicas_run(any_redis: redis.Redis) -> None:
    a = LeaseManagerForTests(any_redis, "replica-a")
    b = LeaseManagerForTests(any_redis, "replica-b")
    first = a.claim("job", run_id("job", 0))
    assert first is not None
    assert b.try_claim("job", run_id("job", 1)).outcome == ClaimOutcome.JOB_BUSY
    stop = threading.Event()
    assert b.wait_lease_job("job", run_id("job", 1), stop=stop, timeout_s=0.1, poll_s=0.02) is None
    threading.Timer(0.1, lambda: a.release(first)).start()
    queued = b.wait_lease_job("job", run_id("job", 1), stop=stop, timeout_s=3, poll_s=0.02)
    assert queued is not None and b.running_run_id("job") == run_id("job", 1)
    stop.set()
    assert b.wait_lease_job("job", run_id("job", 2), stop=stop, timeout_s=3) is None


# -- extend and release ----------------------------------------------------------------


def test_only_the_owner_can_extend_or_release(any_redis: redis.Redis) -> None:
    a = LeaseManagerForTests(any_redis, "replica-a", lease_ms=5000)
    b = LeaseManagerForTests(any_redis, "replica-b", lease_ms=5000)
    lease = a.claim("job", run_id("job"))
    assert lease is not None
    forged = Lease("job", lease.run_id, "replica-b/0000", lease.lease_ms)
    assert not b.extend(forged)
    assert not b.release(forged)
    assert a.running_run_id("job") == lease.run_id
    any_redis.pexpire(keys.running_key("job"), 1000)
    assert a.extend(lease)
    assert any_redis.pttl(keys.running_key("job")) > 4000
    assert a.release(lease)
    assert a.running_run_id("job") is None
    assert not a.release(lease)
    assert not a.extend(lease)


def test_finish_drops_record_and_lease_together(any_redis: redis.Redis) -> None:
    a = LeaseManagerForTests(any_redis, "replica-a", lease_ms=100)
    lease = a.claim("job", run_id("job", 0))
    assert lease is not None
    assert a.finish(lease)
    assert any_redis.exists(keys.running_key("job"), keys.inflight_key("job")) == 0
    if is_cluster(any_redis):  # the index is in another slot: the crash scan drops the id
        assert a.find_interrupted() == []
    assert not any_redis.exists(keys.inflight_index_key())
    late = a.claim("job", run_id("job", 1))
    assert late is not None
    time.sleep(0.15)  # lease lost mid-run; another replica records it interrupted
    assert [r.run_id for r in a.find_interrupted()] == [late.run_id]
    assert not a.finish(late)  # the caller learns its run was recorded elsewhere


def test_a_stale_lease_cannot_release_the_next_run_of_the_same_job(any_redis: redis.Redis) -> None:
    """Same replica, same job: the lease token, not the replica id, decides ownership."""
    a = LeaseManagerForTests(any_redis, "replica-a")
    old = a.claim("job", run_id("job", 0))
    assert old is not None
    any_redis.delete(keys.running_key("job"))  # the old lease expired mid-run
    new = a.claim("job", run_id("job", 1))
    assert new is not None
    assert not a.release(old)
    assert a.running_run_id("job") == new.run_id


# -- crash detection --------------------------------------------------------------------


def test_a_run_whose_lease_expired_is_found_interrupted_once(any_redis: redis.Redis) -> None:
    a = LeaseManagerForTests(any_redis, "replica-a", lease_ms=300)
    b = LeaseManagerForTests(any_redis, "replica-b")
    lease = a.claim("job", run_id("job"), scheduled_for=SLOT, started_at=T0)
    assert lease is not None
    assert b.find_interrupted() == []  # heartbeat still going: not a crash
    time.sleep(0.4)  # replica-a died: nobody extends the lease
    found = b.find_interrupted()
    assert found == [InflightRun("job", run_id("job"), Trigger.SCHEDULE, SLOT, T0, lease.token)]
    assert b.find_interrupted() == []
    assert any_redis.exists(keys.inflight_key("job"), keys.inflight_index_key()) == 0
    # the slot stays claimed: a rerun goes under its own deterministic id
    assert b.claim("job", run_id("job")) is None
    assert b.claim("job", rerun_run_id(run_id("job"))) is not None


def test_two_replicas_scanning_together_record_each_crash_once(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    dead = LeaseManagerForTests(real_redis, "dead", lease_ms=100)
    for i in range(20):
        assert dead.claim(f"job{i}", run_id(f"job{i}"))
    time.sleep(0.2)
    barrier = threading.Barrier(2)
    found: list[list[InflightRun]] = [[], []]

    def scan(n: int) -> None:
        mgr = LeaseManagerForTests(redis_server.client(), f"scanner-{n}")
        barrier.wait()
        found[n] = mgr.find_interrupted()

    threads = [threading.Thread(target=scan, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    ids = Counter(r.run_id for f in found for r in f)
    assert ids == Counter(run_id(f"job{i}") for i in range(20))


def test_finished_runs_and_live_runs_are_not_interrupted(any_redis: redis.Redis) -> None:
    a = LeaseManagerForTests(any_redis, "replica-a", lease_ms=200)
    done = a.claim("done", run_id("done"))
    live = a.claim("live", run_id("live"))
    assert done is not None and live is not None
    assert a.finish_inflight("done", done.run_id)
    a.release(done)
    keeper = LeaseKeeper(a, lambda lease, reason: None, interval_s=0.05)
    keeper.add(live)
    keeper.start()
    try:
        time.sleep(0.35)
        assert LeaseManagerForTests(any_redis, "replica-b").find_interrupted() == []
    finally:
        keeper.stop()
    assert a.finish_inflight("live", live.run_id)


def test_crashed_run_is_found_while_the_next_run_of_the_job_is_going(
    any_redis: redis.Redis,
) -> None:
    a = LeaseManagerForTests(any_redis, "replica-a", lease_ms=100)
    crashed = a.claim("job", run_id("job", 0))
    assert crashed is not None
    time.sleep(0.15)
    b = LeaseManagerForTests(any_redis, "replica-b")
    nxt = b.claim("job", run_id("job", 1))  # the job is free again: the next slot runs
    assert nxt is not None
    assert [r.run_id for r in b.find_interrupted()] == [crashed.run_id]
    assert b.finish_inflight("job", nxt.run_id)  # the live run's record survived the scan


def test_restart_with_a_stable_replica_id_finds_its_own_crash_at_once(
    any_redis: redis.Redis,
) -> None:
    before = LeaseManagerForTests(any_redis, "replica-a")  # 30 s lease: would take long to expire
    other = LeaseManagerForTests(any_redis, "replica-b")
    crashed = before.claim("job", run_id("job", 0))
    alive = other.claim("other", run_id("other", 0))
    assert crashed is not None and alive is not None
    after = LeaseManagerForTests(any_redis, "replica-a")  # same id, new process
    found = after.find_interrupted(dead_replica="replica-a")
    assert [r.run_id for r in found] == [crashed.run_id]
    assert after.running_run_id("job") is None  # the dead run's lease is gone too
    assert after.running_run_id("other") == alive.run_id  # another replica's run is untouched
    assert after.claim("job", run_id("job", 1)) is not None


def test_damaged_inflight_record_still_reports_the_run(fake_redis: redis.Redis) -> None:
    fake_redis.hset(keys.inflight_key("job"), run_id("job"), "{not json")
    fake_redis.sadd(keys.inflight_index_key(), "job")
    found = LeaseManagerForTests(fake_redis, "replica-a").find_interrupted()
    assert [r.run_id for r in found] == [run_id("job")]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("job:1741617000000", "job:1741617000000-r1"),
        ("job:1741617000000-r1", "job:1741617000000-r2"),
        ("daily-r2:1741617000000", "daily-r2:1741617000000-r1"),
        ("job:m1741617000000-ab12", "job:m1741617000000-ab12-r1"),
    ],
)
def test_rerun_ids_are_deterministic(given: str, expected: str) -> None:
    assert rerun_run_id(given) == expected


# -- lease keeper -------------------------------------------------------------------------


def test_keeper_holds_a_lease_past_its_ttl_and_reports_theft(real_redis: redis.Redis) -> None:
    mgr = LeaseManagerForTests(real_redis, "replica-a", lease_ms=400)
    lost: list[tuple[Lease, str]] = []
    keeper = LeaseKeeper(mgr, lambda lease, why: lost.append((lease, why)))
    lease = mgr.claim("job", run_id("job"))
    assert lease is not None
    keeper.add(lease)
    keeper.start()
    try:
        time.sleep(1.0)  # 2.5 lease lengths
        assert mgr.running_run_id("job") == lease.run_id and lost == []
        real_redis.hset(keys.running_key("job"), "owner", "thief/1")
        wait_until(lambda: lost)
        assert lost[0][0] == lease and "another replica" in lost[0][1]
        assert keeper.held() == []
    finally:
        keeper.stop()


def test_keeper_reports_loss_only_once_redis_was_down_for_the_whole_lease() -> None:
    dead = redis.Redis(
        port=free_port(),
        socket_connect_timeout=0.5,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )
    now = [100.0]
    mgr = LeaseManagerForTests(dead, "replica-a", lease_ms=1000)
    lost: list[Lease] = []
    keeper = LeaseKeeper(mgr, lambda lease, why: lost.append(lease), monotonic=lambda: now[0])
    lease = Lease("job", run_id("job"), "replica-a/1", 1000)
    keeper.add(lease)
    now[0] += 0.5
    assert keeper.tick() == [] and keeper.held() == [lease]
    now[0] += 0.6
    assert keeper.tick() == [lease] and lost == [lease]


def test_released_lease_is_not_reported_lost(fake_redis: redis.Redis) -> None:
    mgr = LeaseManagerForTests(fake_redis, "replica-a")
    lost: list[Lease] = []
    keeper = LeaseKeeper(mgr, lambda lease, why: lost.append(lease))
    lease = mgr.claim("job", run_id("job"))
    assert lease is not None
    keeper.add(lease)
    keeper.discard(lease)
    mgr.release(lease)
    assert keeper.tick() == [] and lost == []


# -- replica heartbeats --------------------------------------------------------------------


def test_live_replicas_are_listed_and_a_dead_one_drops_out(any_redis: redis.Redis) -> None:
    live = ReplicaHeartbeat(RedisAdapter(any_redis), "replica-a", {"version": "1"}, ttl_s=0.5)
    dying = ReplicaHeartbeat(RedisAdapter(any_redis), "replica-b", {"version": "1"}, ttl_s=0.5)
    live.start()
    dying.beat()  # then the process dies without stop()
    try:
        listed = list_replicas(RedisAdapter(any_redis))
        assert [r["replica_id"] for r in listed] == ["replica-a", "replica-b"]
        assert listed[0]["version"] == "1" and listed[0]["last_beat"]
        time.sleep(0.65)
        assert [r["replica_id"] for r in list_replicas(RedisAdapter(any_redis))] == ["replica-a"]
        assert any_redis.zcard(keys.replica_index_key()) == 1  # the dead one was pruned
    finally:
        live.stop()
    assert list_replicas(RedisAdapter(any_redis)) == []
    assert not any_redis.exists(keys.replica_key("replica-a"))


# -- Redis outages -------------------------------------------------------------------------


def test_redis_down_raises_storage_error_quickly_and_recovers(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    client = connect(redis_server.url)
    mgr = LeaseManagerForTests(client, "replica-a")
    beat = ReplicaHeartbeat(RedisAdapter(client), "replica-a", {}, ttl_s=0.3)
    beat.start()
    redis_server.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(StorageError):
            mgr.claim("job", run_id("job"))
        with pytest.raises(StorageError):
            mgr.find_interrupted()
        assert time.monotonic() - t0 < 5
        assert beat.alive  # the heartbeat thread rides out the outage
    finally:
        redis_server.start()
    try:
        assert mgr.claim("job", run_id("job")) is not None  # scripts reload after a restart
        wait_until(
            lambda: [r["replica_id"] for r in list_replicas(RedisAdapter(client))] == ["replica-a"]
        )
    finally:
        beat.stop()
