"""Small builders shared by tests."""

from __future__ import annotations

from typing import Any

from stocksched.config import JobSpec


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
