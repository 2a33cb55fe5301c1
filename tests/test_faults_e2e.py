"""Issue 9, faults injected for real: daemon processes on a private redis-server.

- a replica frozen (SIGSTOP) past its lease while running a slot: the other replica
  records the run as interrupted and reruns it; the frozen one, woken, stores nothing
  more and records nothing: one final entry per run id;
- Redis stalled (DEBUG SLEEP) longer than the client's socket timeout during claims:
  scheduling resumes within seconds, no phantom lease, no slot skipped as "in progress".
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path

import pytest
import redis

from stocksched.model import RunStatus
from stocksched.storage import keys
from tests.daemons import Launch, Replica, history, record, wait_for, wait_ready
from tests.servers import RedisServer
from tests.test_replicas import daily_at, slow_jobs

pytestmark = pytest.mark.slow

EXECUTED = {RunStatus.SUCCESS, RunStatus.PARTIAL_SUCCESS, RunStatus.FAILED}


def slot_soon(jobs: Path, *replicas: Replica) -> datetime:
    """Move the slow job's daily slot to two seconds from now, on every replica."""
    for _ in range(3):
        slot = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
        text = slow_jobs(daily_at(slot))
        jobs.write_text(text)
        digest = sha256(text.encode()).hexdigest()
        for r in replicas:
            r.proc.send_signal(signal.SIGHUP)
        for r in replicas:
            wait_for(lambda r=r, d=digest: r.has_config(d), alive=list(replicas))  # type: ignore[misc]
        if datetime.now(UTC) < slot:
            return slot
    raise AssertionError("could not apply a schedule before its slot")


def test_a_replica_frozen_past_its_lease_writes_nothing_after_waking(
    tmp_path: Path, real_redis: redis.Redis, launch: Launch
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(slow_jobs(daily_at(datetime.now(UTC) - timedelta(hours=1))))
    settings = tmp_path / "stocksched.yaml"
    settings.write_text("lease_ttl: 2\nreplica_ttl: 3\nticker_concurrency: 1\n")
    reps = {n: launch(n, env={"STOCKSCHED_REPLICA_ID": n}, config=settings) for n in ("a", "b")}
    wait_ready(*reps.values())
    slot = slot_soon(jobs, *reps.values())
    run_id = f"slow:{int(slot.timestamp() * 1000)}"

    owner = wait_for(lambda: real_redis.hget(keys.running_key("slow"), "owner"), 30)
    frozen = reps[str(owner).split("/")[0]]
    frozen.proc.send_signal(signal.SIGSTOP)
    other = next(r for r in reps.values() if r is not frozen)
    try:
        assert real_redis.hget(keys.running_key("slow"), "run_id") == run_id
        # The other replica finds the stopped lease, records the run and reruns the slot.
        wait_for(
            lambda: any(r.run_id == f"{run_id}-r1" for r in history(real_redis, "slow")),
            60,
            alive=[other],
        )
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: "lease lost" in frozen.output(), 30, alive=[frozen])
    time.sleep(2)  # anything the woken replica still wanted to write has been tried

    by_run: dict[str, list[RunStatus]] = {}
    for r in history(real_redis, "slow"):
        by_run.setdefault(r.run_id, []).append(r.status)
    assert by_run[run_id] == [RunStatus.INTERRUPTED], by_run
    assert by_run[f"{run_id}-r1"] == [RunStatus.SUCCESS], by_run
    assert record(real_redis, "slow")["last_result"]["run_id"] == f"{run_id}-r1"
    for rep in reps.values():
        assert "Traceback" not in rep.stop()


@pytest.mark.single_redis("stalls the one server with DEBUG SLEEP")
def test_a_redis_stall_past_the_socket_timeout_leaves_no_phantom_run(
    tmp_path: Path, real_redis: redis.Redis, redis_server: RedisServer, launch: Launch
) -> None:
    (tmp_path / "jobs.yaml").write_text(
        "version: 1\njobs:\n  - id: tick\n    tickers: [T1]\n"
        '    schedule: "@every 1s"\n    source: demo\n    window: 5d\n    ttl: 10m\n'
    )
    daemon = launch("d", redis_url=redis_server.url + "?socket_timeout=0.5")
    wait_ready(daemon)
    wait_for(lambda: len(history(real_redis, "tick")) >= 3, alive=[daemon])

    stall = threading.Thread(
        target=lambda: redis_server.client().execute_command("DEBUG", "SLEEP", "3")
    )
    stall.start()
    stall.join()
    back = time.time()
    wait_for(
        lambda: any(
            r.status in EXECUTED and r.started_at.timestamp() > back
            for r in history(real_redis, "tick")
        ),
        3,
        alive=[daemon],
    )
    time.sleep(3)

    after = [r for r in history(real_redis, "tick") if r.finished_at.timestamp() > back]
    assert [r for r in after if r.status in (RunStatus.SKIPPED, RunStatus.INTERRUPTED)] == []
    assert sum(1 for r in after if r.status in EXECUTED) >= 3
    assert "Traceback" not in daemon.stop()


WIPE_JOBS = """\
version: 1
jobs:
  - id: held
    tickers: [T1]
    schedule: "@every 1s"
    source: demo
    window: 5d
    ttl: 10m
  - id: keep
    tickers: [T1]
    schedule: "@every 1h"
    source: demo
    window: 5d
    ttl: 10m
"""


def test_redis_wiped_without_a_disconnect_is_restored_keeping_pauses(
    tmp_path: Path, real_redis: redis.Redis, launch: Launch
) -> None:
    (tmp_path / "jobs.yaml").write_text(WIPE_JOBS)
    daemon = launch("d")
    wait_ready(daemon)
    assert daemon.request("/scheduler/jobs/held/stop", "POST")["paused"] is True
    created = record(real_redis, "keep")["created_at"]

    real_redis.flushall()
    wiped = time.time()
    jobs = wait_for(
        lambda: {j["job_id"]: j for j in daemon.request("/scheduler/jobs")} or None,
        10,
        alive=[daemon],
    )
    assert time.time() - wiped < 10
    assert set(jobs) == {"held", "keep"}
    assert jobs["held"]["paused"] is True and jobs["held"]["status"] == "paused"
    assert record(real_redis, "held")["paused"] is True
    assert real_redis.smembers(keys.paused_index_key()) == {"held"}
    assert record(real_redis, "keep")["created_at"] >= created  # a new record, same job
    time.sleep(2)
    assert [r for r in history(real_redis, "held") if r.status in EXECUTED] == []
    assert daemon.request("/scheduler/jobs/held/start", "POST")["paused"] is False  # 200
    out = daemon.stop()
    assert out.count("Redis lost stocksched's state") == 1, out


@pytest.fixture
def redis_config(real_redis: redis.Redis) -> Iterator[redis.Redis]:
    """The shared server's memory settings, put back after the test."""
    yield real_redis
    real_redis.config_set("maxmemory-policy", "noeviction")
    real_redis.config_set("maxmemory", 0)


def ready(replica: Replica) -> tuple[int, str]:
    try:
        return 200, str(replica.request("/readyz"))
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_redis_that_may_evict_is_refused_at_startup_unless_allowed(
    tmp_path: Path, redis_config: redis.Redis, launch: Launch
) -> None:
    (tmp_path / "jobs.yaml").write_text(WIPE_JOBS)
    redis_config.config_set("maxmemory-policy", "allkeys-lru")

    refused = launch("refused")
    assert refused.proc.wait(timeout=30) == 2
    out = refused.output()
    assert out.count("maxmemory-policy is allkeys-lru") == 1, out
    assert "noeviction" in out and "allow_evicting_redis" in out and "Traceback" not in out
    assert redis_config.exists(keys.job_index_key()) == 0  # nothing was written

    allowed = launch("allowed", env={"STOCKSCHED_ALLOW_EVICTING_REDIS": "true"})
    wait_ready(allowed)
    assert "allow_evicting_redis is set, running anyway" in allowed.stop()


def test_redis_out_of_memory_turns_readyz_503_and_is_logged_once(
    tmp_path: Path, redis_config: redis.Redis, launch: Launch
) -> None:
    (tmp_path / "jobs.yaml").write_text(WIPE_JOBS)
    daemon = launch("d")
    wait_ready(daemon)

    redis_config.config_set("maxmemory", 1)  # noeviction: every write is refused

    def refused() -> str | None:
        code, body = ready(daemon)
        return body if code == 503 else None

    assert "out of memory" in wait_for(refused, 10, alive=[daemon])
    time.sleep(4)  # runs of `held` keep failing to write meanwhile
    redis_config.config_set("maxmemory", 0)
    wait_for(lambda: ready(daemon)[0] == 200, 10, alive=[daemon])

    out = daemon.stop()
    assert out.count("Redis not usable") == 1, out
    assert out.count("Redis usable again") == 1, out
