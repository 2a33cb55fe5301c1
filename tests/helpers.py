"""Small builders shared by tests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis

from stocksched.config import JobSpec
from stocksched.executor import JobExecutor
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
        self.executor = JobExecutor({"demo": DemoFetcher(latency_s=latency)},
                                    DataIOButler(adapter), clock, 4, self.metrics)
        self.scheduler = JobScheduler(self.registry, self.executor, clock, pool_size=2,
                                      metrics=self.metrics)

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
