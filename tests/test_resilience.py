"""The daemon against a real redis-server that goes away and comes back."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from stocksched.model import RunResult, RunStatus
from stocksched.storage import keys
from tests.conftest import RedisServer
from tests.test_e2e import JOBS, start_daemon, wait_for

pytestmark = pytest.mark.slow


def runs(client: redis.Redis, job_id: str = "demo-fast") -> list[RunResult]:
    return [RunResult.from_fields(job_id, f) for _, f in client.xrange(keys.runs_key(job_id))]


def test_redis_outage_of_ten_seconds(
    tmp_path: Path, redis_server: RedisServer, real_redis: redis.Redis
) -> None:
    (tmp_path / "jobs.yaml").write_text(JOBS)
    (tmp_path / "home").mkdir()
    proc = start_daemon(tmp_path, redis_server.url)
    try:
        wait_for(lambda: len(runs(real_redis)) >= 2)
        redis_server.stop()
        outage_start = time.time()
        time.sleep(10)
        assert proc.poll() is None, "daemon died while Redis was down"
        redis_server.start()  # an empty server: nothing was persisted across the restart
        back = time.time()
        client = redis_server.client()
        # Runs during the outage reach the history once Redis is back, as failed with a reason.
        wait_for(lambda: any(r.status == RunStatus.FAILED for r in runs(client)), timeout=45)
        # ... and scheduling resumes by itself: fresh successful runs after the restart.
        wait_for(
            lambda: any(
                r.status == RunStatus.SUCCESS and r.started_at.timestamp() > back
                for r in runs(client)
            ),
            timeout=45,
        )
        history = runs(client)
        failed = [r for r in history if r.status == RunStatus.FAILED]
        assert all("Redis unavailable" in r.reason for r in failed), [r.reason for r in failed]
        assert all(outage_start - 1 <= r.started_at.timestamp() <= back + 2 for r in failed)
        assert len({r.run_id for r in history}) == len(history), "a run was recorded twice"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert out.count("Redis unavailable (") == 1, out  # logged once per outage
    assert "Redis reachable again" in out
