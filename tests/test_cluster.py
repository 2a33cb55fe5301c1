"""``redis+cluster://``: the URL, and the client it gives against a real 3-master cluster."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from redis.exceptions import RedisClusterException

from stocksched.model import RunStatus
from stocksched.registry import JobRegistry
from stocksched.runids import scheduled_run_id
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, StorageError, connect
from stocksched.storage.cluster import is_cluster, parse_cluster_url
from stocksched.storage.leases import ClaimOutcome, LeaseManager
from stocksched.storage.series import SeriesStore
from tests.cluster_servers import RedisClusterServers
from tests.daemons import Launch, assert_no_leftovers, history, record, wait_for, wait_ready
from tests.fakes import FakeClock
from tests.helpers import make_spec
from tests.servers import free_port

SLOT = datetime(2026, 3, 2, 17, 0, tzinfo=UTC)


def test_cluster_url_lists_every_startup_node_with_credentials_and_options() -> None:
    nodes, options = parse_cluster_url(
        "redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/0?socket_timeout=9"
    )
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    assert options == {"username": "app", "password": "s@cret", "socket_timeout": 9.0}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://", "at least one host:port"),
        ("redis+cluster://10.0.0.1", "host:port"),
        ("redis+cluster://10.0.0.1:x", "host:port"),
        ("redis+cluster://10.0.0.1:7000/2", "only database 0"),
    ],
)
def test_a_malformed_cluster_url_is_refused_saying_why(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        connect(url)


def test_a_password_both_in_the_url_and_in_a_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("other\n")
    with pytest.raises(ValueError, match="not both"):
        connect("redis+cluster://:pw@127.0.0.1:7000", password_file=secret)


def test_connect_reaches_every_master_of_a_real_cluster(
    redis_cluster: RedisClusterServers,
) -> None:
    client = connect(redis_cluster.url)
    redis_cluster.flush()
    assert is_cluster(client) and not is_cluster(redis.Redis())
    for i in range(30):  # 30 keys land on all three masters
        client.set(f"k{i}", str(i))
    per_node = [redis.Redis(port=p).dbsize() for p in redis_cluster.ports]
    assert sum(per_node) == 30 and all(n > 0 for n in per_node)
    # keys of one hash tag run in one script; keys of several are refused by the client
    script = client.register_script("return redis.call('MGET', KEYS[1], KEYS[2])")
    client.set("a{job}", "1")
    client.set("b{job}", "2")
    assert script(keys=["a{job}", "b{job}"]) == ["1", "2"]
    with pytest.raises(RedisClusterException, match="same key slot"):
        script(keys=["k1", "k2"])


def test_a_jobs_keys_live_on_one_master_and_a_claim_reads_the_pause_from_its_record(
    redis_cluster: RedisClusterServers,
) -> None:
    """The paused set is a global key in another slot: on a cluster the claim script takes
    the pause from the job's own record, so a paused job never runs even when the set's
    write was lost (the process died between the record's write and the set's)."""
    redis_cluster.flush()
    client = connect(redis_cluster.url)
    clock = FakeClock(SLOT)
    registry = JobRegistry(RedisAdapter(client), clock)
    registry.reconcile([make_spec("daily-tech", tickers=["AAA"])])
    registry.set_paused("daily-tech", True)
    client.delete(keys.paused_index_key())  # the global write lost
    leases = LeaseManager(RedisAdapter(client), "replica-a", 2000)
    run_id = scheduled_run_id("daily-tech", SLOT)
    assert leases.try_claim("daily-tech", run_id).outcome == ClaimOutcome.PAUSED

    registry.set_paused("daily-tech", False)
    assert leases.try_claim("daily-tech", run_id).outcome == ClaimOutcome.CLAIMED
    job_keys = [
        keys.job_key("daily-tech"),
        keys.job_state_key("daily-tech"),
        keys.running_key("daily-tech"),
        keys.inflight_key("daily-tech"),
        keys.slot_key(run_id),
    ]
    assert all(client.exists(k) for k in job_keys)
    assert len({client.keyslot(k) for k in job_keys}) == 1  # type: ignore[attr-defined]
    assert client.smembers(keys.inflight_index_key()) == {"daily-tech"}


CLUSTER_JOBS = """\
version: 1
jobs:
  - id: tick
    tickers: [T1, T2, T3, T4, T5, T6]
    schedule: "@every 1s"
    source: demo
    window: 30d
    ttl: 10m
"""


@pytest.mark.cluster_e2e
@pytest.mark.slow
@pytest.mark.parametrize("redis_kind", ["cluster"], indirect=True)
def test_two_daemons_on_a_cluster_run_every_slot_once_and_spread_the_data(
    tmp_path: Path, real_redis: redis.Redis, redis_cluster: RedisClusterServers, launch: Launch
) -> None:
    """The daemon end to end on a real 3-master cluster (``redis+cluster://``): two
    replicas share the slots of an ``@every 1s`` job, each slot runs once, the tickers'
    series land on several masters, and every run's bookkeeping is cleaned up."""
    (tmp_path / "jobs.yaml").write_text(CLUSTER_JOBS)
    settings = tmp_path / "stocksched.yaml"
    settings.write_text("lease_ttl: 2\nreplica_ttl: 3\n")
    names = ["c1", "c2"]
    reps = [launch(n, env={"STOCKSCHED_REPLICA_ID": n}, config=settings) for n in names]
    wait_ready(*reps)
    wait_for(lambda: reps[0].replica_ids() == set(names), 20, alive=reps)
    done = {RunStatus.SUCCESS, RunStatus.PARTIAL_SUCCESS}
    wait_for(
        lambda: sum(r.status in done for r in history(real_redis, "tick")) >= 6, 45, alive=reps
    )
    for r in reps:
        r.stop()

    runs = history(real_redis, "tick")
    assert len({r.run_id for r in runs}) == len(runs), "a run id was recorded twice"
    per_slot = Counter(r.scheduled_for for r in runs)
    assert [s for s, n in per_slot.items() if n > 1] == [], "a slot was recorded twice"
    assert record(real_redis, "tick")["status"] == "completed"
    stored = SeriesStore(RedisAdapter(real_redis)).listed()
    assert sorted(s.ticker for s in stored) == [f"T{i}" for i in range(1, 7)]
    masters = {real_redis.get_node_from_key(s.key("bars")).name for s in stored}  # type: ignore[attr-defined]
    assert len(masters) >= 2, masters
    assert_no_leftovers(real_redis, "tick")
    assert real_redis.zrange(keys.replica_index_key(), 0, -1) == []  # clean stops withdraw


def test_a_daemon_can_start_before_its_cluster_answers() -> None:
    """Like ``redis://``, ``redis+cluster://`` contacts nothing until the first command,
    which then fails as a StorageError: the daemon waits for Redis instead of crashing."""
    client = connect(f"redis+cluster://127.0.0.1:{free_port()}")
    assert is_cluster(client)
    script = client.register_script("return 1")  # registering contacts nothing either
    assert len(getattr(script, "sha")) == 40  # noqa: B009 (the stubs lack it)
    adapter = RedisAdapter(client)
    assert adapter.ping() is False
    with pytest.raises(StorageError):
        adapter.save_data("k", "v")
