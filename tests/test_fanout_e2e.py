"""A fanned-out run survives a replica killed with SIGKILL mid-run (issue 14), end to end.

Three daemons on one real redis-server share the run of a 300-ticker demo job with
``fanout: true`` (each demo fetch delayed, so the run lasts seconds); one of them is
killed while it holds tickers it has taken and not acknowledged. Its tickers are
reclaimed by the others after ``fanout_reclaim_idle`` and the run succeeds with every
ticker stored.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from stocksched.model import RunStatus
from stocksched.storage import keys
from tests.daemons import Launch, find, wait_for, wait_ready

TICKERS = [f"T{i:03d}" for i in range(1, 301)]
JOBS = f"""\
version: 1
jobs:
  - id: wide
    tickers: [{", ".join(TICKERS)}]
    schedule: "@every 1h"
    source: demo
    window: 10d
    windows: false
    fanout: true
    timeout: 90s
"""


def _env(replica: str) -> dict[str, str]:
    return {
        "STOCKSCHED_REPLICA_ID": replica,
        "STOCKSCHED_TEST_DEMO_LATENCY_S": "0.15",
        "STOCKSCHED_FANOUT_RECLAIM_IDLE": "2",
    }


@pytest.mark.slow
def test_a_replica_killed_mid_run_loses_no_ticker(
    launch: Launch, real_redis: redis.Redis, tmp_path: Path
) -> None:
    (tmp_path / "jobs.yaml").write_text(JOBS)
    a, b, c = (launch(name, env=_env(name)) for name in ("a", "b", "c"))
    wait_ready(a, b, c)

    run_id = a.request("/scheduler/jobs/wide/trigger", "POST")["run_id"]
    stream = keys.fanout_key("wide", run_id, "tickers")

    def c_holds_tickers() -> bool:
        if not real_redis.exists(stream):
            return False
        pending = real_redis.xpending(stream, "replicas")
        return any(p["name"] == "c" and int(p["pending"]) > 0 for p in pending["consumers"])

    wait_for(c_holds_tickers, 60, alive=[a, b, c])
    c.proc.kill()  # SIGKILL: what it took is never acknowledged
    c.proc.wait(10)

    result = wait_for(lambda: find(real_redis, "wide", run_id), 90, alive=[a, b])

    assert result.status == RunStatus.SUCCESS, result.errors
    assert sorted(result.fetched_stocks) == TICKERS
    assert sum(result.fetched_by.values()) == len(TICKERS)
    assert result.fetched_by.get("a", 0) > 0 and result.fetched_by.get("b", 0) > 0
    stored = {
        m.split(" ")[1]
        for m in real_redis.smembers(keys.series_index_key())
        if m.startswith("scheduled_stock_data ")
    }
    assert stored == set(TICKERS)
    assert real_redis.keys("scheduler:fanout*") == []
    shown = a.request("/scheduler/jobs/wide/runs?limit=1")[0]
    assert shown["run_id"] == run_id and shown["fetched_by"] == result.fetched_by
    a.stop()
    b.stop()
