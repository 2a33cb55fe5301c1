"""Every Redis key stocksched reads or writes is built here, and only here."""

from __future__ import annotations

JOB_PREFIX = "scheduler:job:"
JOB_INDEX = "scheduler:job_index"
RUNS_PREFIX = "scheduler:runs:"


def job_key(job_id: str) -> str:
    """JSON record of one ScheduledJob (seed: ``scheduler:job:{id}``)."""
    return f"{JOB_PREFIX}{job_id}"


def job_index_key() -> str:
    """Set of job ids in the current config (seed: ``scheduler:job_index``)."""
    return JOB_INDEX


def runs_key(job_id: str) -> str:
    """Capped stream of run-history entries for one job."""
    return f"{RUNS_PREFIX}{job_id}"


def data_key(prefix: str, ticker: str, start: str, end: str) -> str:
    """Stored bars of one fetch window (seed: ``{prefix}:{TICKER}:{start}:{end}``)."""
    return f"{prefix}:{ticker}:{start}:{end}"


def latest_key(prefix: str, ticker: str) -> str:
    """Name of the newest window key for a ticker, so consumers need not know dates."""
    return f"{prefix}:{ticker}:latest"
