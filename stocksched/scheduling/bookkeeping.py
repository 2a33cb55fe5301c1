"""The scheduler's Redis bookkeeping: one thread that stores, in order, what the
timetable decides (a next_run, slots not run), through the outbox while Redis is away.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import datetime

from stocksched.clock import Clock, iso_utc
from stocksched.metrics import Metrics
from stocksched.model import RunResult, RunStatus
from stocksched.outbox import Outbox, StorageHealth
from stocksched.registry import JobRegistry, UnknownJobError
from stocksched.storage.adapter import StorageError
from stocksched.storage.leases import LeaseManager

log = logging.getLogger(__name__)


class Bookkeeping:
    """Redis writes off the scheduler thread, one at a time, in order (a ``SlotSink``)."""

    def __init__(
        self,
        registry: JobRegistry,
        leases: LeaseManager,
        health: StorageHealth,
        clock: Clock,
        metrics: Metrics,
        side: Executor,
    ) -> None:
        self._registry = registry
        self._leases = leases
        self._metrics = metrics
        self.health = health
        self.outbox = Outbox(health, clock)
        self._side = side

    def next_run_changed(self, job_id: str, next_run: datetime | None) -> None:
        self._side.submit(
            self.safe,
            "store next_run",
            job_id,
            lambda: self._registry.set_next_run(job_id, next_run),
        )

    def not_run(self, job_id: str, results: list[RunResult], count: int, ttl_ms: int) -> None:
        self._side.submit(
            self.outbox.run,
            "record slots not run",
            lambda: self._write_not_run(job_id, results, count, ttl_ms),
        )

    def _write_not_run(
        self, job_id: str, results: list[RunResult], count: int, ttl_ms: int
    ) -> None:
        """With several replicas, each slot is claimed first so only one records it."""
        won = self._leases.claim_slots([r.run_id for r in results], slot_ttl_ms=ttl_ms)
        results = [r for r, w in zip(results, won, strict=True) if w]
        unlisted = count - len(won)  # slots beyond the listed ones go with the first
        counted = len(results) + (unlisted if won[0] else 0)
        if results:
            self._registry.add_history_many(results)
            if results[0].status == RunStatus.MISSED:
                log.warning(
                    "job=%s missed %d slot(s) from %s to %s: %s",
                    job_id,
                    counted,
                    iso_utc(results[0].scheduled_for),
                    iso_utc(results[-1].scheduled_for),
                    results[-1].reason,
                    extra={"job": job_id},
                )
        # Counted only once written: the outbox retries this whole write after a failure.
        if counted:
            self._metrics.job_missed_runs.labels(job=job_id).inc(counted)

    def safe(self, what: str, job_id: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except UnknownJobError:
            log.info("%s: job %s left the config meanwhile", what, job_id, extra={"job": job_id})
        except StorageError as exc:
            self.health.failed(f"{what} job={job_id}", exc)
        else:
            self.health.ok()

    def record(self, result: RunResult) -> None:
        try:
            self._registry.record_run(result)
        except UnknownJobError:  # removed from the config mid-run: history still gets it
            self._registry.add_history(result)

    def flush_outbox(self) -> None:
        """Retry what the outbox kept, on the bookkeeping thread."""
        self._side.submit(self.outbox.flush)

    def close(self, flush: bool) -> None:
        """Wait for queued writes; ``flush``: also write what the outbox kept."""
        self._side.shutdown(wait=True)
        if flush:
            self.outbox.flush()
