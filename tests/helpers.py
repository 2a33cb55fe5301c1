"""Small builders shared by tests."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from stocksched.executor import JobExecutor
from stocksched.jobs.spec import JobSpec
from stocksched.metrics import Metrics
from stocksched.registry import JobRegistry
from stocksched.scheduler import JobScheduler
from stocksched.sources.demo import DemoFetcher
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.butler import DataIOButler
from tests.fakes import FakeClock


def make_spec(job_id: str = "job-a", **kw: Any) -> JobSpec:
    data: dict[str, Any] = {
        "id": job_id,
        "tickers": ["AAA", "BBB"],
        "schedule": "*/5 * * * *",
        "timezone": "UTC",
        "source": "demo",
        "window": "10d",
    }
    if "start" in kw or "end" in kw:
        del data["window"]
    data.update(kw)
    return JobSpec.model_validate(data)


class Rig:
    def __init__(self, client: redis.Redis, clock: FakeClock, latency: float = 0.0) -> None:
        adapter = RedisAdapter(client)
        self.clock = clock
        self.client = client
        self.metrics = Metrics("test")
        self.registry = JobRegistry(adapter, clock)
        self.executor = JobExecutor(
            {"demo": DemoFetcher(latency_s=latency)}, DataIOButler(adapter), clock, 4, self.metrics
        )
        self.scheduler = JobScheduler(
            self.registry, self.executor, clock, pool_size=2, metrics=self.metrics
        )

    def load(self, *specs: object) -> None:
        self.registry.reconcile(specs)  # type: ignore[arg-type]
        self.scheduler.set_jobs(self.registry.list_jobs())

    def at(self, t: datetime) -> datetime | None:
        self.clock.set(t)
        nxt = self.scheduler.tick()
        return nxt

    def settle(self) -> None:
        assert self.scheduler.wait_idle(10)
        self.scheduler.flush_bookkeeping()


DEMO_JOBS = """\
version: 1
jobs:
  - id: demo
    tickers: [AAA, BBB]
    schedule: "@every 1h"
    source: demo
    window: 10d
  # Saturday and Sunday: the demo source has no bars, so every ticker fails.
  - id: demo-weekend
    tickers: [AAA, BBB]
    schedule: "@every 1h"
    source: demo
    start: 2024-01-06
    end: 2024-01-07
"""


def run_cli(
    *args: str, cwd: Path, env_extra: dict[str, str] | None = None, stderr: Any = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    """`python -m stocksched ARGS` with no STOCKSCHED_* settings leaking in from this shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STOCKSCHED_") and k != "JOURNAL_STREAM"
    }
    env["HOME"] = str(cwd)  # nothing may be written to the user's home
    env["STOCKSCHED_STATE_DIR"] = str(cwd / "state")
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "stocksched", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=60,
        check=False,
    )
