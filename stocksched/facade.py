"""SchedulerServingApp: the one object the HTTP API talks to (the original design's webapp layer).

The original design made it a singleton that also created, edited and deleted jobs. Here it is an
ordinary object built from its collaborators, and job definitions are read-only:
``jobs.yaml`` in git is the source of truth, so the API can read state, trigger a run,
and pause or resume a job, nothing more.

Views combine the Redis record (spec, last run, last result, the persisted pause flag)
with the scheduler's live state (running now, the next fire time it is waiting for).
Status, health and metrics are served from memory so they keep answering while Redis is
down; the calls that need Redis raise ``StorageError``, which the API turns into 503.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from stocksched.clock import Clock, iso_utc
from stocksched.metrics import JOB_STATES, Metrics
from stocksched.model import JobStatus, ScheduledJob
from stocksched.registry import JobRegistry, UnknownJobError
from stocksched.reload import JobsReloader
from stocksched.scheduling.claims import JobBusyError
from stocksched.scheduling.scheduler import JobScheduler
from stocksched.storage.adapter import AbstractDatabaseAdapter, RedisAdapter, StorageError
from stocksched.storage.series import SeriesStore
from stocksched.views import (
    ConfigView,
    JobView,
    PauseView,
    ReloadView,
    RunSummaryView,
    RunView,
    StatusView,
    StorageView,
)

log = logging.getLogger(__name__)

__all__ = ["JobBusyError", "JobNotFoundError", "SchedulerServingApp"]

# The scheduler thread wakes at least every ``max_sleep`` seconds; three missed wake-ups
# mean it is stuck, not merely idle.
STUCK_AFTER_SLEEPS = 3
MAX_RUNS_LIMIT = 1000

_T = TypeVar("_T")
ReplicasHook = Callable[[], list[dict[str, Any]] | None]


class JobNotFoundError(UnknownJobError):
    """No job with this id is in the current config (the API answers 404)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"no job {self.job_id!r} in the current config"


# -- the facade ----------------------------------------------------------------------


class SchedulerServingApp:
    """Reads and steers the running daemon; holds no state of its own besides its start time."""

    def __init__(
        self,
        *,
        registry: JobRegistry,
        scheduler: JobScheduler,
        reloader: JobsReloader,
        adapter: AbstractDatabaseAdapter,
        metrics: Metrics,
        clock: Clock,
        version: str,
        started_at: datetime,
        replicas: ReplicasHook | None = None,
        stuck_after_s: float | None = None,
    ) -> None:
        self._registry = registry
        self._scheduler = scheduler
        self._reloader = reloader
        self._adapter = adapter
        self._metrics = metrics
        self._clock = clock
        self._version = version
        self._started_at = started_at
        self._replicas = replicas
        self._stuck_after_s = (
            stuck_after_s
            if stuck_after_s is not None
            else STUCK_AFTER_SLEEPS * scheduler.longest_sleep()
        )

    @property
    def version(self) -> str:
        return self._version

    @contextmanager
    def _storage(self) -> Iterator[None]:
        """Count Redis failures of API calls like the scheduler counts its own."""
        try:
            yield
        except StorageError:
            self._metrics.redis_errors.inc()
            raise

    # -- reads -----------------------------------------------------------------------

    def status(self) -> StatusView:
        states = self._scheduler.job_states()
        counts = Counter(str(s) for s in states.values())
        current = self._reloader.current
        storage = self._scheduler.health.state()
        return StatusView(
            running=self._scheduler.alive,
            version=self._version,
            started_at=self._started_at,
            uptime_s=round(max(0.0, (self._clock.now() - self._started_at).total_seconds()), 3),
            jobs_total=len(states),
            jobs_by_state={s: counts.get(s, 0) for s in JOB_STATES},
            config=ConfigView(
                path=str(self._reloader.path),
                sha256=current.sha256 if current else None,
                jobs=len(current.jobs) if current else 0,
            ),
            last_reload=ReloadView.of(self._reloader.last),
            storage=StorageView(up=storage.up, since=storage.since, reason=storage.reason),
            replicas=self._replicas() if self._replicas is not None else None,
        )

    def list_jobs(self) -> list[JobView]:
        with self._storage():
            records = self._registry.list_jobs()
        running = self._scheduler.running()
        next_runs = self._scheduler.next_runs()
        return [self._view(r, r.job_id in running, next_runs) for r in records]

    def get_job(self, job_id: str) -> JobView:
        rec = self._record(job_id)
        return self._view(
            rec, self._scheduler.is_running(job_id), self._scheduler.next_runs([job_id])
        )

    def get_runs(self, job_id: str, limit: int = 20) -> list[RunView]:
        """Newest first; only for jobs in the current config."""
        self._record(job_id)
        with self._storage():
            runs = self._registry.get_runs(job_id, max(1, min(limit, MAX_RUNS_LIMIT)))
        return [RunView.of(r) for r in runs]

    def _record(self, job_id: str) -> ScheduledJob:
        with self._storage():
            rec = self._registry.get_job(job_id)
        if rec is None:
            raise JobNotFoundError(job_id)
        return rec

    def _view(
        self, rec: ScheduledJob, running: bool, next_runs: dict[str, datetime | None]
    ) -> JobView:
        spec = rec.spec
        # The scheduler's next fire time is live (e.g. just after a resume); the record's
        # is what was last written.
        next_run = next_runs.get(rec.job_id, rec.next_run)
        status = JobStatus.RUNNING if running else rec.effective_status()
        return JobView(
            job_id=rec.job_id,
            name=spec.display_name,
            status=str(status),
            running=status == JobStatus.RUNNING,
            enabled=spec.enabled,
            paused=rec.paused,
            active=rec.is_active,
            schedule=spec.schedule,
            timezone=spec.timezone,
            source=spec.source,
            interval=spec.interval,
            tickers=list(spec.tickers),
            last_run=rec.last_run,
            next_run=next_run if rec.is_active else None,
            last_result=_summary(rec.last_result),
            spec=spec.to_json(),
            spec_hash=rec.spec_hash,
            created_at=rec.created_at,
            updated_at=rec.updated_at,
        )

    def read_series(self, read: Callable[[SeriesStore], _T]) -> _T:
        """``read`` on the bar series of the daemon's Redis (``GET /data``), failures counted."""
        if not isinstance(self._adapter, RedisAdapter):
            raise StorageError("read series", "-", "this store holds no bar series")
        with self._storage():
            return read(SeriesStore(self._adapter))

    # -- actions ----------------------------------------------------------------------

    def trigger(self, job_id: str) -> str:
        """Start a manual run now; next_run does not move. Raises JobBusyError if running."""
        try:
            run_id = self._scheduler.trigger(job_id)
        except UnknownJobError:
            raise JobNotFoundError(job_id) from None
        log.info(
            "manual run requested job=%s run_id=%s",
            job_id,
            run_id,
            extra={"job": job_id, "run_id": run_id},
        )
        return run_id

    def pause(self, job_id: str) -> PauseView:
        return self._set_paused(job_id, True)

    def resume(self, job_id: str) -> PauseView:
        return self._set_paused(job_id, False)

    def _set_paused(self, job_id: str, paused: bool) -> PauseView:
        before = self._record(job_id)
        try:
            with self._storage():
                rec = self._scheduler.set_paused(job_id, paused)
        except UnknownJobError:
            raise JobNotFoundError(job_id) from None
        if before.paused != paused:
            log.info(
                "job %s %s through the API",
                job_id,
                "paused" if paused else "resumed",
                extra={"job": job_id},
            )
        view = self._view(
            rec, self._scheduler.is_running(job_id), self._scheduler.next_runs([job_id])
        )
        return PauseView(
            job_id=job_id,
            paused=rec.paused,
            enabled=rec.spec.enabled,
            active=rec.is_active,
            message=_pause_message(before, view),
            job=view,
        )

    # -- probes and metrics ---------------------------------------------------------------

    def healthz(self) -> tuple[bool, str]:
        """Alive: the scheduler thread runs and its loop came round recently.

        Before the first config load (the daemon waiting for Redis) the process is alive
        but schedules nothing yet: 200 with status "waiting for Redis", so a liveness probe
        does not restart a daemon that is only waiting; /readyz says why it waits.
        """
        if not self._scheduler.started:
            return True, "waiting for Redis"
        if not self._scheduler.alive:
            return False, "scheduler thread is not running"
        age = self._scheduler.loop_age()
        if age > self._stuck_after_s:
            return False, (
                f"scheduler loop last ran {age:.0f}s ago (stuck after {self._stuck_after_s:.0f}s)"
            )
        return True, "ok"

    def readyz(self) -> tuple[bool, str]:
        """Ready: a valid config is in effect and Redis answers."""
        if self._reloader.current is None:
            last = self._reloader.last
            if not self._scheduler.started and (last.retryable or not last.errors):
                # the first load is being retried until Redis answers
                reason = last.errors[0] if last.errors else "not connected yet"
                return False, f"waiting for Redis: {reason}"
            detail = f": {last.errors[0]}" if last.errors else ""
            return False, f"no valid config loaded from {self._reloader.path}{detail}"
        if not self._adapter.ping():
            return False, "redis is not answering"
        problem = self._scheduler.health.problem()
        if problem is not None:
            return False, problem
        return True, "ok"

    def render_metrics(self) -> bytes:
        """Prometheus text, with the gauges derived from state refreshed first.

        Job-level gauges (last run, last success, running) come from the job records'
        runtime projection in one HGETALL, so every replica tells the same about a job,
        whichever replica ran it. While Redis is away they keep their last values.
        """
        states = self._scheduler.job_states()
        counts = Counter(str(s) for s in states.values())
        for state in JOB_STATES:
            self._metrics.jobs.labels(state=state).set(counts.get(state, 0))
        try:
            with self._storage():
                runtimes = self._registry.job_runtimes()
        except StorageError:
            return self._metrics.render()
        for job_id, state in states.items():
            rt = runtimes.get(job_id)
            self._metrics.set_job_runtime(
                job_id,
                rt.last_run if rt else None,
                rt.last_success if rt else None,
                running=state == JobStatus.RUNNING
                or (rt is not None and rt.status == JobStatus.RUNNING),
            )
        return self._metrics.render()


def _summary(d: dict[str, Any] | None) -> RunSummaryView | None:
    if not d:
        return None
    try:
        return RunSummaryView.model_validate(
            {k: (v or None) if k == "finished_at" else v for k, v in d.items()}
        )
    except ValidationError:  # a record written by an older version: show no summary
        log.debug("unreadable last_result %r", d)
        return None


def _pause_message(before: ScheduledJob, after: JobView) -> str:
    if after.paused:
        if before.paused:
            return "already paused"
        return (
            "paused: no scheduled runs until resumed; the override is kept in Redis "
            "and survives reloads and restarts (a run in progress finishes)"
        )
    if not after.enabled:
        return (
            "pause override cleared, but the job is disabled in jobs.yaml "
            "(enabled: false) and stays disabled until jobs.yaml enables it"
        )
    prefix = "was not paused" if not before.paused else "resumed"
    when = iso_utc(after.next_run) if after.next_run else "unknown"
    return f"{prefix}; next run at {when}"
