"""Runtime data model: the original design's ScheduledJob record, job states and RunResult.

The jobs.yaml spec (desired state) lives in ``config.JobSpec``; this module holds
what the daemon observes and persists about each job (observed state).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from stocksched.durations import format_duration
from stocksched.jobs.spec import JobSpec


class JobStatus(StrEnum):
    """The original design's states: PENDING -> RUNNING -> COMPLETED | FAILED -> PENDING; PAUSED."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PAUSED = "paused"


class RunStatus(StrEnum):
    SUCCESS = "success"
    PARTIAL_SUCCESS = "partial_success"
    FAILED = "failed"
    # Slots that did not run; recorded in history so nothing disappears silently.
    MISSED = "missed"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"


def iso(dt: datetime | None) -> str:
    return dt.isoformat() if dt is not None else ""


def parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def run_status_for(fetched: list[str], failed: list[str]) -> RunStatus:
    """The original design's rule: no failure is success, some of each partial, else failed."""
    if not failed:
        return RunStatus.SUCCESS
    if fetched:
        return RunStatus.PARTIAL_SUCCESS
    return RunStatus.FAILED


@dataclass
class RunResult:
    job_id: str
    run_id: str
    trigger: Trigger
    scheduled_for: datetime | None
    started_at: datetime
    finished_at: datetime
    status: RunStatus
    fetched_stocks: list[str] = field(default_factory=list)
    failed_stocks: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    rows_stored: int = 0
    reason: str = ""
    #: Data-quality warning per ticker whose bars were partly dropped before storing
    #: ("dropped 3 bars: 2 with a price <= 0 (2024-01-03, 2024-01-04), ..."); see
    #: ``stocksched.sources.quality``.
    warnings: dict[str, str] = field(default_factory=dict)
    #: Fetched tickers whose series needed no request (no session closed since the last
    #: fetch): up to date, at no cost to Yahoo's rate limit.
    fresh_stocks: list[str] = field(default_factory=list)
    #: Exchange sessions missing from the stored series of the run's tickers, after it.
    missing_sessions: int = 0
    #: Tickers each replica fetched, by replica id: a fanned-out run's (``fanout: true``)
    #: share of the work; empty for a run on one replica.
    fetched_by: dict[str, int] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_fields(self) -> dict[str, str]:
        """Flat string fields for the run-history stream entry."""
        return {
            "run_id": self.run_id,
            "trigger": str(self.trigger),
            "scheduled_for": iso(self.scheduled_for),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_s": f"{self.duration_s:.3f}",
            "status": str(self.status),
            "fetched": json.dumps(self.fetched_stocks),
            "failed": json.dumps(self.failed_stocks),
            "errors": json.dumps(self.errors, sort_keys=True),
            "rows": str(self.rows_stored),
            "reason": self.reason,
            "warnings": json.dumps(self.warnings, sort_keys=True),
            "fresh": json.dumps(self.fresh_stocks),
            "missing": str(self.missing_sessions),
        } | ({"fetched_by": json.dumps(self.fetched_by, sort_keys=True)} if self.fetched_by else {})

    @classmethod
    def from_fields(cls, job_id: str, f: dict[str, str]) -> RunResult:
        started = parse_iso(f.get("started_at"))
        finished = parse_iso(f.get("finished_at")) or started
        assert started is not None and finished is not None
        return cls(
            job_id=job_id,
            run_id=f["run_id"],
            trigger=Trigger(f.get("trigger", "schedule")),
            scheduled_for=parse_iso(f.get("scheduled_for")),
            started_at=started,
            finished_at=finished,
            status=RunStatus(f["status"]),
            fetched_stocks=json.loads(f.get("fetched") or "[]"),
            failed_stocks=json.loads(f.get("failed") or "[]"),
            errors=json.loads(f.get("errors") or "{}"),
            rows_stored=int(f.get("rows") or 0),
            reason=f.get("reason", ""),
            warnings=json.loads(f.get("warnings") or "{}"),  # absent from older entries
            fresh_stocks=json.loads(f.get("fresh") or "[]"),
            missing_sessions=int(f.get("missing") or 0),
            fetched_by=json.loads(f.get("fetched_by") or "{}"),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": str(self.status),
            "trigger": str(self.trigger),
            "finished_at": iso(self.finished_at),
            "duration_s": round(self.duration_s, 3),
            "fetched": len(self.fetched_stocks),
            "failed": len(self.failed_stocks),
            "reason": self.reason,
        } | ({"fetched_by": dict(self.fetched_by)} if self.fetched_by else {})


#: The record's runtime fields: stored apart from the spec JSON (``state_fields``), so a
#: run updates them without rewriting the spec.
RUNTIME_FIELDS = ("status", "next_run", "last_run", "last_success", "last_result")


def with_state(record: dict[str, Any], state: dict[str, str]) -> dict[str, Any]:
    """``record`` (a stored record dict) with the runtime fields of ``state`` laid over it.

    ``state`` is what ``state_fields`` (or a run's scripts) wrote; a field it lacks is
    taken from the JSON (a record written by an older version still holds them there).
    """
    if not state:
        return record
    merged = dict(record)
    for name in RUNTIME_FIELDS:
        if name in state:
            merged[name] = state[name] or None
    if isinstance(merged.get("last_result"), str):
        merged["last_result"] = json.loads(merged["last_result"])
    return merged


@dataclass(slots=True)
class ScheduledJob:
    """One job's Redis record: its spec from jobs.yaml plus runtime state.

    ``to_dict`` keeps the original design's field names (stock_ids, schedule_time, is_active,
    start_date, end_date) so readers of the original design recognise the record. Stored,
    the record is two keys: ``record_json`` (everything but the runtime fields) and
    ``state_fields`` (the runtime fields, a hash a run updates in place).
    """

    spec: JobSpec
    spec_hash: str
    created_at: datetime
    updated_at: datetime
    status: JobStatus = JobStatus.PENDING
    paused: bool = False
    last_run: datetime | None = None
    next_run: datetime | None = None
    last_success: datetime | None = None
    last_result: dict[str, Any] | None = None

    @property
    def job_id(self) -> str:
        return self.spec.id

    @property
    def is_active(self) -> bool:
        return self.spec.enabled and not self.paused

    def with_spec(self, spec: JobSpec, spec_hash: str, now: datetime) -> ScheduledJob:
        return replace(self, spec=spec, spec_hash=spec_hash, updated_at=now)

    def effective_status(self) -> JobStatus:
        if not self.is_active and self.status != JobStatus.RUNNING:
            return JobStatus.PAUSED
        if self.status == JobStatus.PAUSED:
            return JobStatus.PENDING
        return self.status

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._plain_fields(),
            "last_run": iso(self.last_run) or None,
            "next_run": iso(self.next_run) or None,
            "last_success": iso(self.last_success) or None,
            "status": str(self.status),
            "spec": self.spec.to_json(),
            "last_result": self.last_result,
        }

    def _plain_fields(self) -> dict[str, Any]:
        """``to_dict`` but the spec and the runtime fields; the window fields as the
        spec's JSON writes them."""
        spec = self.spec
        return {
            "job_id": self.job_id,
            "name": spec.display_name,
            "stock_ids": list(spec.tickers),
            "schedule_time": spec.schedule,
            "timezone": spec.timezone,
            "is_active": self.is_active,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "paused": self.paused,
            "start_date": spec.start.isoformat() if spec.start is not None else None,
            "end_date": spec.end.isoformat() if spec.end is not None else None,
            "window": format_duration(spec.window) if spec.window is not None else None,
            "prefix": spec.prefix,
            "spec_hash": self.spec_hash,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def record_json(self) -> str:
        """The stored record: ``to_dict`` without the runtime fields (``state_fields``),
        as ``json.dumps(..., sort_keys=True)``.

        The spec's part is its ``canonical_json``, spliced in where the sorted keys put
        it instead of being dumped again (it is most of the record, and 10,000 records
        are written at a first load).
        """
        fields = self._plain_fields()
        before = json.dumps({k: v for k, v in fields.items() if k < "spec"}, sort_keys=True)
        after = json.dumps({k: v for k, v in fields.items() if k > "spec"}, sort_keys=True)
        return f'{before[:-1]}, "spec": {self.spec.canonical_json}, {after[1:]}'

    def state_fields(self) -> dict[str, str]:
        """The runtime fields as stored in the job's state hash ("" for none)."""
        return {
            "status": str(self.status),
            "next_run": iso(self.next_run),
            "last_run": iso(self.last_run),
            "last_success": iso(self.last_success),
            "last_result": json.dumps(self.last_result) if self.last_result is not None else "",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScheduledJob:
        created = parse_iso(d.get("created_at"))
        assert created is not None
        return cls(
            spec=JobSpec.model_validate(d["spec"]),
            spec_hash=d["spec_hash"],
            created_at=created,
            updated_at=parse_iso(d.get("updated_at")) or created,
            status=JobStatus(d.get("status", "pending")),
            paused=bool(d.get("paused", False)),
            last_run=parse_iso(d.get("last_run")),
            next_run=parse_iso(d.get("next_run")),
            last_success=parse_iso(d.get("last_success")),
            last_result=d.get("last_result"),
        )

    @classmethod
    def from_json(cls, text: str) -> ScheduledJob:
        return cls.from_dict(json.loads(text))
