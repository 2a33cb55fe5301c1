"""Crash recovery: runs whose lease heartbeat stopped are recorded as interrupted, and
their slot is run again per ``catchup``.

A run whose replica died (or stalled past its lease) leaves its in-flight record behind
(``stocksched.storage.inflight``); the periodic scan, and the startup scan for this
replica's own id, take each such record exactly once across replicas.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from stocksched.clock import Clock, iso_utc
from stocksched.model import RunResult, RunStatus, Trigger
from stocksched.runids import rerun_run_id
from stocksched.scheduling.bookkeeping import Bookkeeping
from stocksched.scheduling.claims import RunHandle
from stocksched.scheduling.timetable import Timetable
from stocksched.storage.adapter import StorageError
from stocksched.storage.inflight import InflightRun
from stocksched.storage.leases import LeaseManager

log = logging.getLogger("stocksched.scheduling.runs")  # the lines keep their logger name


class CrashRecovery:
    """Finds interrupted runs, records them, reruns their slot; shares the scheduler's lock."""

    def __init__(
        self,
        leases: LeaseManager,
        book: Bookkeeping,
        table: Timetable,
        cond: threading.Condition,
        clock: Clock,
        running: dict[str, RunHandle],
    ) -> None:
        self._leases = leases
        self._book = book
        self._table = table
        self._cond = cond
        self._clock = clock
        self._running = running  # the runs in progress here (``Runs.running``), read only

    def recover_interrupted(self, dead_replica: str | None = None) -> int:
        """Record runs whose lease heartbeat stopped as interrupted; rerun per catch-up."""
        try:
            found = self._leases.find_interrupted(dead_replica=dead_replica)
        except StorageError as exc:
            self._book.health.failed("scan for interrupted runs", exc)
            return 0
        now = self._clock.now()
        for run in found:
            self._interrupted(run, now)
        return len(found)

    def _interrupted(self, run: InflightRun, now: datetime) -> None:
        owner = run.owner.rsplit("/", 1)[0] or "unknown"
        log.warning(
            "run interrupted job=%s run_id=%s (replica %s stopped renewing its lease)",
            run.job_id,
            run.run_id,
            owner,
            extra={"job": run.job_id, "run_id": run.run_id},
        )
        result = RunResult(
            job_id=run.job_id,
            run_id=run.run_id,
            trigger=run.trigger,
            scheduled_for=run.scheduled_for,
            started_at=run.started_at,
            finished_at=now,
            status=RunStatus.INTERRUPTED,
            reason=f"replica {owner} stopped renewing its lease mid-run",
        )
        self._book.outbox.run("record interrupted run", lambda: self._book.record(result))
        with self._cond:
            self._rerun(run, now)

    def _rerun(self, run: InflightRun, now: datetime) -> None:
        state = self._table.jobs.get(run.job_id)
        slot = run.scheduled_for
        if state is None or not state.active or slot is None or run.trigger != Trigger.SCHEDULE:
            return
        if run.job_id in self._running:
            log.info(
                "not rerunning interrupted slot job=%s slot=%s: the job is running",
                run.job_id,
                iso_utc(slot),
                extra={"job": run.job_id},
            )
            return
        spec = state.spec
        if (
            spec.catchup > timedelta(0)
            and now - slot <= spec.catchup
            and spec.next_fire(slot) > now
        ):
            log.info(
                "rerunning interrupted slot job=%s slot=%s",
                spec.id,
                iso_utc(slot),
                extra={"job": spec.id},
            )
            self._table.rerun(state, slot, now, rerun_run_id(run.run_id))
            self._cond.notify_all()
