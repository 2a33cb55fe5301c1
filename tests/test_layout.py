"""The key layout rename on start: a Redis of the untagged layout keeps its jobs' state."""

from __future__ import annotations

import pytest
import redis

from stocksched.storage import keys, layout
from stocksched.storage.adapter import RedisAdapter


@pytest.mark.single_redis("a cluster is new to stocksched: no old layout, it is only marked")
def test_keys_of_the_untagged_layout_are_renamed_once_keeping_values_and_expiry(
    any_redis: redis.Redis,
) -> None:
    r = any_redis
    r.set("scheduler:job:daily-tech", '{"job_id": "daily-tech"}')
    r.hset("scheduler:job_state:daily-tech", "status", "idle")
    r.xadd("scheduler:runs:daily-tech", {"run_id": "daily-tech:1"})
    r.set("scheduler:slot:daily-tech:1700000000000", "done:x", px=600_000)
    r.set("scheduler:removed:gone", "{}", ex=3600)
    r.sadd(keys.job_index_key(), "daily-tech")
    r.set("scheduled_stock_data:AAPL:latest", "scheduled_stock_data:AAPL:2025-01-01:2025-02-01")

    assert layout.migrate(RedisAdapter(r)) == 5

    assert r.get(keys.job_key("daily-tech")) == '{"job_id": "daily-tech"}'
    assert r.hget(keys.job_state_key("daily-tech"), "status") == "idle"
    assert r.xlen(keys.runs_key("daily-tech")) == 1
    slot = keys.slot_key("daily-tech:1700000000000")
    assert r.get(slot) == "done:x" and 0 < r.pttl(slot) <= 600_000
    assert r.ttl(keys.removed_job_key("gone")) > 0
    assert not r.exists("scheduler:job:daily-tech", "scheduler:slot:daily-tech:1700000000000")
    # global keys and the consumers' window keys keep their names
    assert r.smembers(keys.job_index_key()) == {"daily-tech"}
    assert r.exists("scheduled_stock_data:AAPL:latest")
    assert not r.exists(keys.layout_lock_key())
    # marked: a second start renames nothing, even a key an old replica wrote since
    r.set("scheduler:job:late", "{}")
    assert layout.migrate(RedisAdapter(r)) == 0
    assert r.exists("scheduler:job:late")


def test_a_replica_starting_while_another_renames_waits_for_the_mark(
    fake_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_redis.set(keys.layout_lock_key(), "other", px=60_000)
    polls: list[int] = []

    def sleep(_s: float) -> None:  # the other replica finishes on the second poll
        polls.append(1)
        if len(polls) == 2:
            fake_redis.set(keys.layout_key(), layout.LAYOUT_VERSION)

    monkeypatch.setattr("stocksched.storage.layout.time.sleep", sleep)
    fake_redis.set("scheduler:job:j", "{}")
    assert layout.migrate(RedisAdapter(fake_redis)) == 0
    assert len(polls) == 2
    assert fake_redis.exists("scheduler:job:j")  # the lock holder's to rename, not ours
