"""Issue 9, jobs.yaml faults against real daemon processes on a private redis-server.

- the file written in place slowly (first half, itself a valid file with fewer jobs, then
  the rest 0.6 s later): one reload, of the final content; a paused job stays paused and
  keeps its created_at;
- the file replaced by a FIFO: SIGHUP gives one clear config error, the last good config
  is kept, the daemon stays healthy and SIGTERM still ends it at once.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from hashlib import sha256
from pathlib import Path

import pytest
import redis

from stocksched.storage import keys
from tests.daemons import Launch, record, wait_for, wait_ready
from tests.test_reload import jobs_yaml, write_in_two_halves

pytestmark = pytest.mark.slow

JOBS = (("a", "0 3 * * *"), ("b", "0 4 * * *"), ("c", "0 5 * * *"))


def healthz_status(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        return int(resp.status)


def test_file_written_in_two_halves_is_applied_once_keeping_the_pause(
    tmp_path: Path, real_redis: redis.Redis, launch: Launch
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(jobs_yaml(*JOBS))
    daemon = launch("d")
    wait_ready(daemon)
    assert daemon.request("/scheduler/jobs/b/stop", "POST")["paused"] is True
    created = record(real_redis, "b")["created_at"]
    assert daemon.output().count("config applied") == 1

    final = jobs_yaml(*JOBS, comment="edited in place")
    write_in_two_halves(jobs, final, 0.6)
    digest = sha256(final.encode()).hexdigest()
    wait_for(lambda: daemon.has_config(digest), 15, alive=[daemon])
    time.sleep(2)  # a second reload would have come by now

    out = daemon.output()
    applied = [line for line in out.splitlines() if "config applied" in line]
    assert len(applied) == 2, out  # startup, then the final file only
    assert "removed=0" in applied[1] and digest[:12] in applied[1], applied[1]
    assert "added=0" in applied[1], applied[1]
    rec = record(real_redis, "b")
    assert rec["paused"] is True and rec["created_at"] == created
    assert "b" in real_redis.smembers(keys.paused_index_key())
    job = daemon.request("/scheduler/jobs/b")
    assert job["paused"] is True
    daemon.stop()


def test_fifo_at_the_jobs_path_is_a_config_error_and_sigterm_still_stops(
    tmp_path: Path, real_redis: redis.Redis, launch: Launch
) -> None:
    jobs = tmp_path / "jobs.yaml"
    text = jobs_yaml(*JOBS)
    jobs.write_text(text)
    daemon = launch("d")
    wait_ready(daemon)
    good = sha256(text.encode()).hexdigest()

    jobs.unlink()
    os.mkfifo(jobs)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "not a regular file (a FIFO)" in daemon.output(), 10, alive=[daemon])
    time.sleep(1.5)  # the watcher has seen the swap too by now
    assert healthz_status(daemon.port) == 200
    status = daemon.request("/scheduler/status")
    assert daemon.has_config(good), status  # the last good config is kept
    assert real_redis.smembers(keys.job_index_key()) == {"a", "b", "c"}
    out = daemon.output()
    errors = [line for line in out.splitlines() if "not a regular file" in line]
    assert errors and all("not a regular file (a FIFO)" in line for line in errors), out

    t0 = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(timeout=15)
    assert time.monotonic() - t0 < 5, daemon.output()
    assert daemon.proc.returncode == 0, daemon.output()
    assert "Traceback" not in daemon.output()
