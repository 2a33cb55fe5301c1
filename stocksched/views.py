"""The HTTP API's response models: what the server answers and the CLI prints.

Built by the facade (``SchedulerServingApp``) from the job records and the scheduler's
live state, served by ``stocksched.http``, and used by ``run-job`` for its result, so the
command line and the API show a run the same way.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, PlainSerializer, WithJsonSchema

from stocksched.clock import iso_utc, to_utc

if TYPE_CHECKING:  # only for the annotations of ``of``: the views import nothing heavy
    from stocksched.model import RunResult
    from stocksched.reload import ReloadStatus


class ErrorBody(BaseModel):
    """Every error the API answers: ``{"error": "..."}``."""

    error: str


class Probe(BaseModel):
    status: str
    error: str | None = None


# Every time in a view is UTC with an explicit offset ("2026-03-02T10:05:00+00:00"), whatever
# zone it came in (the scheduler's next fire time is in the job's zone): normalised when the
# view is built, written with "+00:00" (pydantic would write "Z") when it is serialised.
UtcDatetime = Annotated[
    datetime,
    AfterValidator(to_utc),
    PlainSerializer(iso_utc, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class RunSummaryView(BaseModel):
    """The last run of a job, as stored on its record."""

    run_id: str
    status: str = Field(description="success, partial_success or failed")
    trigger: str = Field(description="schedule or manual")
    finished_at: UtcDatetime | None = None
    duration_s: float = 0.0
    fetched: int = Field(0, description="tickers fetched and stored")
    failed: int = Field(0, description="tickers that failed")
    reason: str = ""


class ProgressView(BaseModel):
    """A run in progress on this daemon: how many of its tickers are done."""

    done: int
    total: int


class JobView(BaseModel):
    """A job's spec from jobs.yaml and its runtime state."""

    job_id: str
    name: str
    status: str = Field(description="pending, running, completed, failed or paused")
    running: bool = Field(description="a run of this job is in progress in this daemon")
    enabled: bool = Field(description="enabled in jobs.yaml (false: never scheduled)")
    paused: bool = Field(description="paused through the API (persisted in Redis)")
    active: bool = Field(description="enabled and not paused: scheduled runs happen")
    schedule: str
    timezone: str
    source: str
    interval: str
    tickers: list[str]
    last_run: UtcDatetime | None = None
    next_run: UtcDatetime | None = Field(None, description="next scheduled slot; null if inactive")
    last_result: RunSummaryView | None = None
    last_success: UtcDatetime | None = Field(None, description="last run that fully succeeded")
    success_due_by: UtcDatetime | None = Field(
        None,
        description="the job's second slot after its last success (or its creation): a job "
        "without a success by then has missed twice its period; null while inactive",
    )
    progress: ProgressView | None = Field(
        None, description="while a run is in progress on this daemon: tickers done of all"
    )
    spec: dict[str, Any] = Field(description="the job as written in jobs.yaml, defaults merged")
    spec_hash: str
    created_at: UtcDatetime
    updated_at: UtcDatetime


class RunView(BaseModel):
    """One entry of a job's run history."""

    run_id: str
    job_id: str
    trigger: str
    status: str = Field(
        description="success, partial_success, failed, or missed/skipped/interrupted for "
        "slots that did not run"
    )
    scheduled_for: UtcDatetime | None = None
    started_at: UtcDatetime
    finished_at: UtcDatetime
    duration_s: float
    fetched: list[str]
    failed: list[str]
    errors: dict[str, str] = Field(description="error message per failed ticker")
    rows_stored: int
    reason: str = ""
    warnings: dict[str, str] = Field(
        default_factory=dict,
        description="data-quality warning per ticker whose bars were partly dropped "
        "before storing (bad prices, inconsistent ranges, bars outside the window)",
    )
    fresh: list[str] = Field(
        default_factory=list,
        description="fetched tickers that needed no request: no session of their exchange "
        "had closed since their last fetch",
    )
    missing_sessions: int = Field(
        default=0, description="exchange sessions missing from the tickers' stored series"
    )
    fetched_by: dict[str, int] = Field(
        default_factory=dict,
        description="tickers fetched per replica id, for a fanned-out run (`fanout: true`)",
    )

    @classmethod
    def of(cls, r: RunResult) -> RunView:
        return cls(
            run_id=r.run_id,
            job_id=r.job_id,
            trigger=str(r.trigger),
            status=str(r.status),
            scheduled_for=r.scheduled_for,
            started_at=r.started_at,
            finished_at=r.finished_at,
            duration_s=round(r.duration_s, 3),
            fetched=list(r.fetched_stocks),
            failed=list(r.failed_stocks),
            errors=dict(r.errors),
            rows_stored=r.rows_stored,
            reason=r.reason,
            warnings=dict(r.warnings),
            fresh=list(r.fresh_stocks),
            missing_sessions=r.missing_sessions,
            fetched_by=dict(r.fetched_by),
        )


class ReloadView(BaseModel):
    """The last load or reload of jobs.yaml."""

    at: UtcDatetime | None = None
    ok: bool
    errors: list[str] = Field(description="FILE:LINE:COL: path: message, when invalid")
    sha256: str = ""
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0

    @classmethod
    def of(cls, s: ReloadStatus) -> ReloadView:
        d = s.diff
        return cls(
            at=s.at,
            ok=s.ok,
            errors=list(s.errors),
            sha256=s.sha256,
            added=len(d.added) if d else 0,
            changed=len(d.changed) if d else 0,
            removed=len(d.removed) if d else 0,
            unchanged=len(d.unchanged) if d else 0,
        )


class ConfigView(BaseModel):
    path: str
    sha256: str | None = Field(None, description="hash of the config in effect")
    jobs: int = Field(description="jobs in the config in effect")


class StorageView(BaseModel):
    """Redis as the daemon last saw it."""

    up: bool = Field(description="the last Redis operation succeeded")
    since: UtcDatetime = Field(description="when Redis last went up or down (or daemon start)")
    reason: str = Field("", description="while down: the operation that failed, and why")


class StatusView(BaseModel):
    """The daemon at a glance."""

    running: bool = Field(description="the scheduler thread is alive")
    version: str
    started_at: UtcDatetime
    uptime_s: float
    jobs_total: int
    jobs_by_state: dict[str, int] = Field(
        description="the original design's states: pending, running, completed, failed, paused"
    )
    config: ConfigView
    last_reload: ReloadView
    storage: StorageView
    replicas: list[dict[str, Any]] | None = Field(
        None, description="live replicas sharing this Redis; null while Redis is unavailable"
    )


class TriggerView(BaseModel):
    job_id: str
    run_id: str
    message: str


class PauseView(BaseModel):
    job_id: str
    paused: bool
    enabled: bool
    active: bool
    message: str
    job: JobView


class SeriesView(BaseModel):
    """One stored bar series (``GET /data``; ``stocksched tickers --json`` prints the same)."""

    prefix: str
    ticker: str
    interval: str
    tz: str | None = Field(description="the exchange's time zone, e.g. America/New_York")
    first: str | None = Field(
        description="first bar: exchange-local date (daily and longer bars) or ISO 8601 "
        "timestamp with offset (intraday)"
    )
    last: str | None = Field(description="last bar, like first")
    bars: int = Field(description="bars stored")
    missing: int = Field(description="exchange sessions missing from the series")
    missing_dates: list[str] = Field(description="the missing sessions (ISO dates)")
    fetched: str | None = Field(description="last fetch, ISO 8601 UTC")
    exchange: str | None = Field(description="exchange calendar code, e.g. XNYS")
    last_action: dict[str, Any] | None = Field(
        description='newest corporate action: {"date", "dividend", "split"}'
    )


class BarsView(BaseModel):
    """``GET /data/{ticker}``: the bars as yfinance's frame would list them; NaN is null."""

    ticker: str
    interval: str
    prefix: str
    tz: str
    bars: list[dict[str, Any]] = Field(
        description='one object per bar: "Date" (ISO 8601 with the exchange\'s offset), '
        '"Open", "High", "Low", "Close", "Adj Close", "Volume", "Dividends", "Stock Splits"'
    )
