"""The fan-out stream's Redis semantics, against a real redis-server: each entry is handed
to one replica, an entry a dead replica left pending is reclaimed after the idle time,
one handed out more than N times is dead-lettered, and a finished run takes nothing."""

from __future__ import annotations

import time

import redis

from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.fanout import FanoutRun, FanoutStore

IDLE_MS = 100


def _run(n: int = 3, run_id: str = "job-a:1000") -> FanoutRun:
    return FanoutRun(
        job_id="job-a",
        run_id=run_id,
        spec_json="{}",
        start="2024-01-01",
        end="2024-01-31",
        deadline=time.time() + 60,
        owner="r1",
        token="",
        total=n,
    )


def _store(client: redis.Redis, max_deliveries: int = 3) -> FanoutStore:
    return FanoutStore(RedisAdapter(client), reclaim_idle_ms=IDLE_MS, max_deliveries=max_deliveries)


def test_every_entry_goes_to_one_replica_and_is_listed_once_done(
    real_redis: redis.Redis,
) -> None:
    store, run = _store(real_redis), _run(3)
    store.publish(run, ["AAA", "BBB", "CCC"])

    assert store.active() == [run]
    first = store.take(run, "r1")
    second = store.take(run, "r2", count=5)
    assert first is not None and second is not None
    assert sorted(e.ticker for e in first + second) == ["AAA", "BBB", "CCC"]
    assert store.take(run, "r3") == []  # nothing left to hand out

    for entry in first + second:
        assert store.complete(run, entry, f'{{"ticker": "{entry.ticker}"}}')
    done, dead = store.results(run)
    assert sorted(done) == ["AAA", "BBB", "CCC"] and dead == {}
    assert store.counts(run) == 3
    assert real_redis.xpending(run.key("tickers"), "replicas")["pending"] == 0
    # Every key of the run is under the job's hash tag (one Cluster slot).
    assert all(k.startswith("scheduler:fanout:{job-a}:") for k in real_redis.keys("*fanout:*"))


def test_an_entry_left_pending_is_reclaimed_only_after_the_idle_time(
    real_redis: redis.Redis,
) -> None:
    store, run = _store(real_redis), _run(1)
    store.publish(run, ["AAA"])
    taken = store.take(run, "dead-replica")
    assert taken is not None and len(taken) == 1

    assert store.reclaim(run, "r2") == []  # not idle long enough: its replica may be alive
    time.sleep(IDLE_MS / 1000 + 0.05)
    reclaimed = store.reclaim(run, "r2")

    assert [e.ticker for e in reclaimed] == ["AAA"]
    pending = real_redis.xpending_range(run.key("tickers"), "replicas", "-", "+", 10)
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [("r2", 2)]


def test_an_entry_handed_out_more_than_n_times_is_dead_lettered(
    real_redis: redis.Redis,
) -> None:
    store, run = _store(real_redis, max_deliveries=2), _run(2)
    store.publish(run, ["AAA", "BBB"])
    taken = store.take(run, "r1", count=2)  # delivery 1 of both
    assert taken is not None
    assert store.complete(run, taken[1], '{"ticker": "BBB"}')
    time.sleep(IDLE_MS / 1000 + 0.05)
    assert [e.ticker for e in store.reclaim(run, "r2")] == ["AAA"]  # delivery 2
    time.sleep(IDLE_MS / 1000 + 0.05)

    assert store.reclaim(run, "r3") == []  # a third would be one too many

    done, dead = store.results(run)
    assert sorted(done) == ["BBB"]
    assert list(dead) == ["AAA"] and "handed out 2 times" in dead["AAA"]
    assert store.counts(run) == 2  # both accounted for: the run can end
    assert real_redis.xpending(run.key("tickers"), "replicas")["pending"] == 0


def test_a_finished_run_hands_out_nothing_and_a_late_outcome_leaves_no_key(
    real_redis: redis.Redis,
) -> None:
    store, run = _store(real_redis), _run(1)
    store.publish(run, ["AAA"])
    taken = store.take(run, "r1")
    assert taken

    store.finish(run)

    assert store.active() == []
    assert store.take(run, "r2") is None
    assert store.reclaim(run, "r2") == []
    assert not store.complete(run, taken[0], '{"ticker": "AAA"}')
    assert real_redis.keys("scheduler:fanout*") == []


def test_run_keys_expire_after_the_deadline_and_a_stale_member_is_dropped(
    real_redis: redis.Redis,
) -> None:
    store, run = _store(real_redis), _run(1)
    store.publish(run, ["AAA"])
    ttl_ms = real_redis.pttl(run.key("tickers"))
    assert 55_000 < ttl_ms <= 121_000  # deadline (60 s) plus the margin (60 s)

    real_redis.delete(run.key("meta"))  # as if it expired: the owner died long ago

    assert store.active() == []
    assert real_redis.zcard(keys.fanout_index_key()) == 0


def test_an_index_member_past_its_expiry_is_dropped(real_redis: redis.Redis) -> None:
    store = _store(real_redis)
    late = _run(1, run_id="job-a:1")
    late = FanoutRun(**{**late.__dict__, "deadline": time.time() - 120})
    store.publish(late, ["AAA"])  # its deadline passed long ago: as if its owner died
    live = _run(1, run_id="job-a:2")
    store.publish(live, ["BBB"])

    assert store.active() == [live]
    assert real_redis.zrange(keys.fanout_index_key(), 0, -1) == [live.member]
