"""Issue 8 through daemon processes: two replicas on one real redis-server.

- a job removed from jobs.yaml and added back runs each later slot exactly once;
- a pause or resume made through one replica reaches the other within 2 s, and no slot
  starts anywhere while the job is paused in Redis;
- job-level gauges describe the job, whichever replica is scraped.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter
from datetime import datetime
from hashlib import sha256
from itertools import pairwise
from pathlib import Path

import pytest
import redis

from stocksched.model import RunResult, RunStatus
from tests.daemons import Launch, Replica, history, record, wait_for, wait_ready

pytestmark = pytest.mark.slow

EXECUTED = {RunStatus.SUCCESS, RunStatus.PARTIAL_SUCCESS, RunStatus.FAILED}
SETTINGS = "lease_ttl: 3\nreplica_ttl: 3\n"


def job(job_id: str, schedule: str) -> str:
    return f"""\
  - id: {job_id}
    tickers: [T1]
    schedule: "{schedule}"
    source: demo
    window: 5d
    ttl: 10m
    catchup: 0s
"""


def jobs_file(*blocks: str) -> str:
    return "version: 1\njobs:\n" + "".join(blocks)


def apply(text: str, path: Path, *replicas: Replica) -> None:
    """Save ``text`` and wait until every replica runs it (the watcher picks it up)."""
    path.write_text(text)
    digest = sha256(text.encode()).hexdigest()
    for r in replicas:
        wait_for(lambda r=r: r.has_config(digest), alive=list(replicas))  # type: ignore[misc]


def two_replicas(tmp_path: Path, launch: Launch, text: str) -> tuple[Replica, Replica]:
    (tmp_path / "jobs.yaml").write_text(text)
    settings = tmp_path / "stocksched.yaml"
    settings.write_text(SETTINGS)
    a = launch("a", env={"STOCKSCHED_REPLICA_ID": "a"}, config=settings)
    b = launch("b", env={"STOCKSCHED_REPLICA_ID": "b"}, config=settings)
    wait_ready(a, b)
    return a, b


def metric(replica: Replica, name: str, job_id: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{replica.port}/metrics", timeout=15) as r:
        text = r.read().decode()
    m = re.search(rf'^{name}{{job="{re.escape(job_id)}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def per_slot(runs: list[RunResult]) -> Counter[datetime]:
    return Counter(r.scheduled_for for r in runs if r.scheduled_for is not None)


def test_a_job_removed_and_added_back_runs_each_later_slot_once(
    tmp_path: Path, real_redis: redis.Redis, launch: Launch
) -> None:
    both = jobs_file(job("a", "@every 5s"), job("b", "@every 5s"))
    a, b = two_replicas(tmp_path, launch, both)
    path = tmp_path / "jobs.yaml"
    # Just after a slot, so the heap entry of a's next slot is still waiting when a is
    # added back (the reproduction: removed, then back a second later).
    wait_for(lambda: time.time() % 5 < 0.3, 10)
    apply(jobs_file(job("b", "@every 5s")), path, a, b)
    time.sleep(1)
    apply(both, path, a, b)
    back = time.time()
    wait_for(
        lambda: sum(1 for r in history(real_redis, "a") if r.started_at.timestamp() > back + 5),
        40,
        alive=[a, b],
    )
    time.sleep(5.5)  # one more slot

    later = [
        r
        for r in history(real_redis, "a")
        if r.scheduled_for and r.scheduled_for.timestamp() > back
    ]
    assert [r for r in later if r.status not in EXECUTED] == []  # nothing skipped or missed
    slots = sorted(per_slot(later))
    assert len(slots) >= 2
    assert all(n == 1 for n in per_slot(later).values()), per_slot(later)
    gaps = {(y - x).total_seconds() for x, y in pairwise(slots)}
    assert gaps == {5.0}, slots  # and no slot dropped
    a.stop()
    b.stop()


def test_a_pause_through_one_replica_holds_on_every_replica(
    tmp_path: Path, real_redis: redis.Redis, launch: Launch
) -> None:
    a, b = two_replicas(tmp_path, launch, jobs_file(job("j", "@every 1s")))
    wait_for(lambda: len(history(real_redis, "j")) >= 3, alive=[a, b])

    assert b.request("/scheduler/jobs/j/stop", "POST")["paused"] is True
    paused_at = time.time()
    wait_for(lambda: a.request("/scheduler/jobs/j")["paused"], 2, alive=[a])
    wait_for(lambda: metric(a, "stocksched_job_paused", "j") == 1.0, 2, alive=[a])
    assert a.request("/scheduler/jobs/j")["status"] == "paused"
    time.sleep(3)
    started = [
        r
        for r in history(real_redis, "j")
        if r.status in EXECUTED and r.started_at.timestamp() > paused_at + 0.05
    ]
    assert started == [], "a slot started on a replica while the job was paused in Redis"

    assert a.request("/scheduler/jobs/j/start", "POST")["paused"] is False  # through A now
    resumed_at = time.time()
    wait_for(lambda: b.request("/scheduler/jobs/j")["paused"] is False, 2, alive=[b])
    wait_for(
        lambda: any(
            r.status in EXECUTED and r.started_at.timestamp() > resumed_at + 2
            for r in history(real_redis, "j")
        ),
        alive=[a, b],
    )
    runs = history(real_redis, "j")
    assert all(n == 1 for n in per_slot(runs).values()), per_slot(runs)  # once each
    missed = {
        r.scheduled_for.timestamp()
        for r in runs
        if r.status == RunStatus.MISSED and r.scheduled_for
    }
    paused_slots = set(range(int(paused_at) + 2, int(resumed_at)))  # @every 1s slots
    assert paused_slots and paused_slots <= missed, "slots passed while paused are missed"
    for replica in (a, b):
        out = replica.stop()
        assert "Traceback" not in out


def test_job_gauges_are_the_same_on_the_replica_that_did_not_run_it(
    tmp_path: Path, real_redis: redis.Redis, launch: Launch
) -> None:
    a, b = two_replicas(tmp_path, launch, jobs_file(job("j", "@every 1h")))
    run_id = a.request("/scheduler/jobs/j/trigger", "POST")["run_id"]
    wait_for(lambda: record(real_redis, "j")["last_result"], alive=[a, b])
    rec = record(real_redis, "j")
    assert rec["last_result"]["run_id"] == run_id
    last = datetime.fromisoformat(rec["last_run"]).timestamp()

    for replica in (a, b):
        assert metric(replica, "stocksched_job_last_run_timestamp_seconds", "j") == last
        assert metric(replica, "stocksched_job_last_success_timestamp_seconds", "j") == last
        assert metric(replica, "stocksched_job_running", "j") == 0.0
    assert metric(a, "stocksched_job_next_run_timestamp_seconds", "j") == metric(
        b, "stocksched_job_next_run_timestamp_seconds", "j"
    )
    a.stop()
    b.stop()
