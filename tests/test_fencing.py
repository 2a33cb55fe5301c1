"""Issue 9 items 3 and 4: a run's writes are fenced by its lease; claims survive retries.

A run whose lease is gone (its process was frozen past it, another replica recorded it
as interrupted) writes nothing: not its bars, not its record, not its history entry. A
claim or final write that redis-py resends after a timeout (Redis ran the first one)
is a success for its own owner, never a "slot taken" or a "lease lost".
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import redis

from stocksched.model import JobStatus, RunResult, RunStatus, Trigger
from stocksched.registry import JobRegistry
from stocksched.storage import keys, scripts
from stocksched.storage.adapter import RedisAdapter, connect
from stocksched.storage.butler import DataIOButler
from stocksched.storage.cluster import is_cluster
from stocksched.storage.fence import FenceLostError
from stocksched.storage.leases import ClaimOutcome, LeaseManager, MarkRunning
from tests.fakes import FakeClock
from tests.helpers import make_spec
from tests.servers import RedisServer

SLOT = datetime(2026, 3, 2, 17, 0, tzinfo=UTC)
RUN = "j:1772470800000"


def bars() -> pd.DataFrame:
    idx = pd.DatetimeIndex([pd.Timestamp("2026-02-27"), pd.Timestamp("2026-03-02")], name="Date")
    return pd.DataFrame(
        {"Open": [1.0, 2.0], "High": [1.5, 2.5], "Low": [0.5, 1.5], "Close": [1.2, 2.2],
         "Volume": [10, 20]},
        index=idx,
    )  # fmt: skip


def result(status: RunStatus = RunStatus.SUCCESS) -> RunResult:
    return RunResult(
        job_id="j",
        run_id=RUN,
        trigger=Trigger.SCHEDULE,
        scheduled_for=SLOT,
        started_at=SLOT,
        finished_at=SLOT + timedelta(seconds=3),
        status=status,
        fetched_stocks=["AAA"],
    )


def setup(client: redis.Redis) -> tuple[JobRegistry, LeaseManager]:
    registry = JobRegistry(RedisAdapter(client), FakeClock(SLOT))
    registry.reconcile([make_spec("j", tickers=["AAA"])])
    return registry, LeaseManager(RedisAdapter(client), "replica-a", 2000)


def take_over(client: redis.Redis) -> None:
    """What another replica does once the lease expired: its own run now holds the job."""
    client.delete(keys.running_key("j"))
    other = LeaseManager(RedisAdapter(client), "replica-b", 2000)
    assert other.try_claim("j", RUN + "-r1", scheduled_for=SLOT).outcome == ClaimOutcome.CLAIMED


def test_a_run_that_lost_its_lease_records_nothing(any_redis: redis.Redis) -> None:
    registry, leases = setup(any_redis)
    lease = leases.claim(
        "j", RUN, scheduled_for=SLOT, started_at=SLOT, mark=MarkRunning(SLOT + timedelta(days=1))
    )
    assert lease is not None
    take_over(any_redis)
    before = registry.get_job("j")
    assert before is not None and before.status == JobStatus.RUNNING

    with pytest.raises(FenceLostError):
        registry.record_own_run(result(), lease.fence())

    assert registry.get_runs("j") == []
    assert registry.get_job("j") == before
    assert any_redis.hget(keys.running_key("j"), "run_id") == RUN + "-r1"  # not released


def test_a_run_that_lost_its_lease_stores_no_bars(any_redis: redis.Redis) -> None:
    _registry, leases = setup(any_redis)
    butler = DataIOButler(RedisAdapter(any_redis))
    lease = leases.claim("j", RUN, scheduled_for=SLOT, started_at=SLOT)
    assert lease is not None
    butler.save_data(bars(), "p", "AAA", "2026-02-20", "2026-03-01", fence=lease.fence())
    take_over(any_redis)

    with pytest.raises(FenceLostError):
        butler.save_data(bars(), "p", "AAA", "2026-02-21", "2026-03-02", fence=lease.fence())

    assert any_redis.exists(keys.data_key("p", "AAA", "2026-02-21", "2026-03-02")) == 0
    assert any_redis.get(keys.latest_key("p", "AAA")) == keys.data_key(
        "p", "AAA", "2026-02-20", "2026-03-01"
    )


def test_the_fenced_final_write_ends_the_run_and_a_retry_of_it_is_a_no_op(
    any_redis: redis.Redis,
) -> None:
    registry, leases = setup(any_redis)
    lease = leases.claim("j", RUN, scheduled_for=SLOT, started_at=SLOT)
    assert lease is not None

    assert registry.record_own_run(result(), lease.fence())
    first = registry.get_job("j")
    assert registry.record_own_run(result(), lease.fence())  # resent after a timeout

    assert [r.run_id for r in registry.get_runs("j")] == [RUN]
    assert first is not None and first.last_run == result().finished_at
    assert registry.get_job("j") == first
    assert any_redis.exists(keys.running_key("j")) == 0
    assert any_redis.hgetall(keys.inflight_key("j")) == {}
    assert leases.find_interrupted() == []  # nothing left that looks like a crash
    assert "j" not in any_redis.smembers(keys.inflight_index_key())  # (a cluster's: pruned)


def test_a_claim_retried_by_its_owner_is_claimed_not_slot_taken(any_redis: redis.Redis) -> None:
    """The script run twice with one token, as redis-py resends it after a timeout."""
    setup(any_redis)
    script = any_redis.register_script(scripts.CLAIM)
    keys_ = [
        keys.slot_key(RUN),
        keys.running_key("j"),
        keys.inflight_key("j"),
        keys.job_key("j"),
        keys.job_state_key("j"),
    ]
    if not is_cluster(any_redis):  # the global keys the script keeps in step there
        keys_ += [keys.inflight_index_key(), keys.paused_index_key(), keys.job_runtime_key()]
    args = ["replica-a/x.1", RUN, 2000, 86_400_000, "{}", "j", "1", "1", "next", ""]
    assert script(keys=keys_, args=args)[0] == "claimed"
    assert script(keys=keys_, args=args)[0] == "claimed"
    other = ["replica-b/y.2", *args[1:]]
    assert script(keys=keys_, args=other)[0] == "slot_taken"


@pytest.mark.redis
@pytest.mark.single_redis("stalls the one server with DEBUG SLEEP")
def test_a_claim_through_a_redis_stall_longer_than_the_socket_timeout_holds_no_phantom(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """DEBUG SLEEP past the socket timeout: redis-py resends the claim; Redis runs both."""
    client = connect(redis_server.url + "?socket_timeout=0.3")
    registry = JobRegistry(RedisAdapter(client), FakeClock(SLOT))
    registry.reconcile([make_spec("j", tickers=["AAA"])])
    leases = LeaseManager(RedisAdapter(client), "replica-a", 2000)
    stall = threading.Thread(target=lambda: real_redis.execute_command("DEBUG", "SLEEP", "0.5"))
    stall.start()
    time.sleep(0.05)  # the claim queues behind the sleep and times out client-side

    t0 = time.monotonic()
    res = leases.try_claim("j", RUN, scheduled_for=SLOT, started_at=SLOT)
    stall.join()
    assert time.monotonic() - t0 > 0.3  # it did time out once and was resent

    assert res.outcome == ClaimOutcome.CLAIMED and res.lease is not None
    assert real_redis.hget(keys.running_key("j"), "owner") == res.lease.token
    assert registry.record_own_run(result(), res.lease.fence())
    assert real_redis.exists(keys.running_key("j")) == 0  # no lease left for nobody to renew
