"""Small builders shared by tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from stocksched.clock import Clock
from stocksched.executor import JobExecutor
from stocksched.jobs.spec import JobSpec
from stocksched.metrics import Metrics
from stocksched.outbox import StorageHealth
from stocksched.registry import JobRegistry
from stocksched.scheduling.scheduler import JobScheduler
from stocksched.sources.demo import DemoFetcher
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.butler import DataIOButler
from stocksched.storage.leases import LeaseManager
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


class RigScheduler(JobScheduler):
    """The production scheduler, plus the waits tests need (they only observe it)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._book_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bookkeeping")
        super().__init__(*args, bookkeeping=self._book_pool, **kw)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no run is in progress."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def flush_bookkeeping(self, timeout: float = 10) -> None:
        """Wait for queued history writes."""
        self._book_pool.submit(lambda: None).result(timeout)


def make_scheduler(
    client: redis.Redis,
    registry: JobRegistry,
    executor: JobExecutor,
    clock: Clock,
    *,
    owner: str = "replica-test",
    metrics: Metrics | None = None,
    health: StorageHealth | None = None,
    leases: LeaseManager | None = None,
    **kw: Any,
) -> RigScheduler:
    """A scheduler wired as Components wires it: real leases, metrics and health."""
    metrics = metrics or Metrics("test")
    return RigScheduler(
        registry,
        executor,
        clock,
        metrics=metrics,
        health=health or StorageHealth(clock, metrics),
        leases=leases or LeaseManager(RedisAdapter(client), owner, clock=clock),
        **kw,
    )


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
        self.scheduler = make_scheduler(
            client, self.registry, self.executor, clock, pool_size=2, metrics=self.metrics
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
