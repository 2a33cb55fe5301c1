"""`stocksched run-job` next to running daemons, on a real redis-server (issue 8, items 3-4).

run-job claims the job's run lease exactly as a manual trigger does: while the job runs
anywhere it runs nothing and exits 4 naming the holder; while it runs, it keeps its lease
renewed (a daemon cannot start the job meanwhile) and obeys the job's ``timeout``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import redis

from stocksched.cli.runjob import NOT_PERSISTED
from stocksched.storage import keys
from tests.daemons import Launch, assert_no_leftovers, find, history, record, wait_for, wait_ready
from tests.helpers import DEMO_JOBS, run_cli
from tests.servers import RedisServer

TICKERS = 60  # demo source, 10-year window, one ticker at a time: a run of about 5 s
SLOW_ENV = {"STOCKSCHED_TICKER_CONCURRENCY": "1"}
DAEMON_ID = "daemon-a"


def slow_jobs(extra: str = "") -> str:
    tickers = ", ".join(f"S{i:03d}" for i in range(TICKERS))
    return f"""\
version: 1
jobs:
  - id: slow
    tickers: [{tickers}]
    schedule: "0 0 1 1 *"
    timezone: UTC
    source: demo
    window: 3650d
    ttl: 10m
{extra}"""


def start_run_job(
    tmp_path: Path, *args: str, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`stocksched run-job ARGS` in the background, with the same clean env as run_cli."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STOCKSCHED_") and k != "JOURNAL_STREAM"
    }
    env["HOME"] = str(tmp_path)
    env["STOCKSCHED_STATE_DIR"] = str(tmp_path / "state")
    env.update(env_extra or {})
    return subprocess.Popen(
        [sys.executable, "-m", "stocksched", "run-job", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lease_of(client: redis.Redis, job_id: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in client.hgetall(keys.running_key(job_id)).items()}


@pytest.mark.slow
def test_run_job_while_a_daemon_runs_the_job_runs_nothing_and_exits_4(
    tmp_path: Path, real_redis: redis.Redis, redis_server: RedisServer, launch: Launch
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(slow_jobs())
    daemon = launch("a", env={**SLOW_ENV, "STOCKSCHED_REPLICA_ID": DAEMON_ID})
    wait_ready(daemon)
    run_id = daemon.request("/scheduler/jobs/slow/trigger", method="POST")["run_id"]
    wait_for(lambda: lease_of(real_redis, "slow").get("run_id") == run_id, alive=[daemon])

    result = run_cli(
        "run-job", "slow", "--jobs", str(jobs), "--redis-url", redis_server.url, cwd=tmp_path
    )
    assert result.returncode == 4, result.stderr
    assert result.stdout == ""
    assert (
        f"stocksched: job 'slow' is already running: run {run_id} on replica {DAEMON_ID}; "
        "nothing was run\n"
    ) in result.stderr
    assert lease_of(real_redis, "slow")["run_id"] == run_id  # the daemon's run went on

    done = wait_for(lambda: find(real_redis, "slow", run_id), 60, alive=[daemon])
    assert done.status == "success"
    assert [r.run_id for r in history(real_redis, "slow")] == [run_id]  # nothing else ran
    daemon.stop()
    # run-job took nothing: no in-flight record, no lease left behind.
    assert real_redis.hgetall(keys.inflight_key("slow")) == {}
    assert real_redis.exists(keys.running_key("slow")) == 0


@pytest.mark.slow
def test_run_job_keeps_its_lease_so_the_daemon_cannot_run_the_job_meanwhile(
    tmp_path: Path, real_redis: redis.Redis, redis_server: RedisServer, launch: Launch
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(slow_jobs())
    daemon = launch("a", env={**SLOW_ENV, "STOCKSCHED_REPLICA_ID": DAEMON_ID})
    wait_ready(daemon)
    # A 1 s lease: only renewal keeps it through a run of several seconds.
    proc = start_run_job(
        tmp_path,
        "slow",
        "--jobs",
        str(jobs),
        "--redis-url",
        redis_server.url,
        "--json",
        env_extra={**SLOW_ENV, "STOCKSCHED_LEASE_TTL": "1"},
    )
    try:
        lease = wait_for(lambda: lease_of(real_redis, "slow"), 30)
        assert lease["owner"].startswith("run-job-"), lease
        assert lease["run_id"].startswith("slow:m")
        time.sleep(2.5)  # more than twice the lease's lifetime
        assert proc.poll() is None, "the run ended too soon to test renewal"
        assert lease_of(real_redis, "slow") == lease, "lease not renewed"
        assert 0 < real_redis.pttl(keys.running_key("slow")) <= 1000

        with pytest.raises(urllib.error.HTTPError) as refused:
            daemon.request("/scheduler/jobs/slow/trigger", method="POST")
        assert refused.value.code == 409
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    view = json.loads(out)
    assert view["run_id"] == lease["run_id"] and view["status"] == "success"
    assert view["trigger"] == "manual" and view["persisted"] is True
    assert len(view["fetched"]) == TICKERS and view["rows_stored"] > 0
    entry = find(real_redis, "slow", lease["run_id"])
    assert entry is not None and entry.status == "success"
    assert [r.run_id for r in history(real_redis, "slow")] == [lease["run_id"]]
    # The daemon had reconciled the job: run-job recorded on its record too.
    rec = record(real_redis, "slow")
    assert rec["last_result"]["run_id"] == lease["run_id"] and rec["status"] == "completed"
    assert_no_leftovers(real_redis, "slow")
    daemon.stop()


def test_run_job_obeys_the_jobs_timeout(
    tmp_path: Path, real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(slow_jobs("    timeout: 1s\n"))
    t0 = time.monotonic()
    result = run_cli(
        "run-job",
        "slow",
        "--jobs",
        str(jobs),
        "--redis-url",
        redis_server.url,
        "--json",
        cwd=tmp_path,
        env_extra=SLOW_ENV,
    )
    elapsed = time.monotonic() - t0
    assert result.returncode == 1, result.stderr
    view = json.loads(result.stdout)
    assert view["status"] == "failed"
    assert view["reason"] == "timeout after 0:00:01"
    assert 1.0 <= view["duration_s"] < 2.0, view["duration_s"]
    assert elapsed < 15  # the whole command, start-up included: not the full run
    assert 0 < len(view["fetched"]) < TICKERS
    assert view["errors"][view["failed"][-1]] == "run ended: timeout after 0:00:01"
    # No daemon has reconciled the job: the run is in its history all the same.
    (entry,) = history(real_redis, "slow")
    assert entry.run_id == view["run_id"] and entry.status == "failed"
    assert entry.reason == "timeout after 0:00:01"
    assert_no_leftovers(real_redis, "slow")


def test_run_job_interrupted_by_sigint_is_recorded_and_frees_the_job(
    tmp_path: Path, real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(slow_jobs())
    proc = start_run_job(
        tmp_path, "slow", "--jobs", str(jobs), "--redis-url", redis_server.url, env_extra=SLOW_ENV
    )
    try:
        lease = wait_for(lambda: lease_of(real_redis, "slow"), 30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "  reason: cancelled by SIGINT" in out
    entry = find(real_redis, "slow", lease["run_id"])
    assert entry is not None and "cancelled by SIGINT" in entry.reason
    assert_no_leftovers(real_redis, "slow")  # free at once, not after the lease expires


# -- item 4: the embedded store ---------------------------------------------------------------


def test_run_job_on_the_embedded_store_says_nothing_was_persisted(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(DEMO_JOBS)
    text = run_cli("run-job", "demo", "--jobs", str(jobs), cwd=tmp_path)  # no redis_url
    assert text.returncode == 0, text.stderr
    assert "WARNING" in text.stderr and "NOT persisted" in text.stderr
    first, last = text.stdout.splitlines()[0], text.stdout.splitlines()[-1]
    assert ": success in " in first and " rows stored" in first
    assert last == NOT_PERSISTED == "nothing was persisted: no redis_url (embedded store)"

    as_json = run_cli(
        "run-job", "demo", "--jobs", str(jobs), "--redis-url", "memory://", "--json", cwd=tmp_path
    )
    assert as_json.returncode == 0, as_json.stderr
    assert "NOT persisted" in as_json.stderr
    view = json.loads(as_json.stdout)
    assert view["persisted"] is False and view["rows_stored"] > 0


def test_run_job_on_redis_says_nothing_about_persistence(
    tmp_path: Path, real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(DEMO_JOBS)
    args = ("run-job", "demo", "--jobs", str(jobs), "--redis-url", redis_server.url)
    text = run_cli(*args, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "persisted" not in text.stdout and "NOT persisted" not in text.stderr
    as_json = run_cli(*args, "--json", cwd=tmp_path)
    assert json.loads(as_json.stdout)["persisted"] is True
    assert len(history(real_redis, "demo")) == 2
