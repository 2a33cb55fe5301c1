"""Shared by the jobs-file tests: a good file, and loading text with errors collected."""

from __future__ import annotations

import textwrap
from datetime import date
from pathlib import Path

import pytest

from stocksched.jobs import JobsFileError, LoadedJobs, load_jobs_file

TODAY = date(2026, 1, 15)

GOOD = """\
version: 1
defaults:
  timezone: America/New_York
  window: 30d
  ttl: 400d
jobs:
  - id: daily-tech
    name: Daily Tech Stocks
    tickers: [AAPL, msft, BRK-B, ON]
    schedule: "0 17 * * 1-5"
  - id: fixed-range
    tickers: [^GSPC, EURUSD=X, 7203.T]
    schedule: 17:30
    start: 2025-01-01
    end: 2025-06-30
    timezone: UTC
    ttl: null
    retries: 3
    retry_backoff: 2s
    timeout: 5m
    jitter: 30s
    catchup: 0
    overlap: queue
    calendar: XNYS
  - id: demo-every
    tickers: [DEMO]
    schedule: "@every 90s"
    source: demo
    enabled: no
    prefix: "demo:bars"
    window: 2w
"""


def load_jobs_text(
    text: str, filename: str = "<jobs.yaml>", *, today: date | None = None
) -> LoadedJobs:
    """Like ``load_jobs_file`` for text already in memory, named ``filename``."""
    return load_jobs_file(Path(filename), today=today, data=text.encode("utf-8"))


def load(text: str, today: date = TODAY) -> LoadedJobs:
    return load_jobs_text(textwrap.dedent(text), "jobs.yaml", today=today)


def errors_of(text: str, today: date = TODAY) -> list[str]:
    with pytest.raises(JobsFileError) as info:
        load(text, today)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors
